"""Speed and memory benchmarks: ``python -m benchmarks`` (see ``python -m benchmarks --help``)."""
