"""Developer tooling that the library never imports: tiny random-weight components for tests and
benchmarks (:mod:`.components`), the paper's per-view loop as a peer (:mod:`.reference`), and the demo
model's training and evaluation code (:mod:`.demo`). Not installed with the package."""
