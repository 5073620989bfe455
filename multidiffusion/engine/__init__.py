"""The MultiDiffusion engine: views of a canvas (:mod:`.views`), which windows each step denoises
(:mod:`.windows`), the fused prediction of paper Eq. 5 (:mod:`.fusion`), guidance and the sampling loop
(:mod:`.sampler`, :mod:`.shared_prefix`), scheduler names (:mod:`.schedulers`) and the runner that
takes any task from prompts to images (:mod:`.runner`). Nothing here knows about tasks, files or shells."""
