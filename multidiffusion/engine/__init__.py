"""The MultiDiffusion engine: views of a canvas (:mod:`.views`), which windows each step denoises
(:mod:`.windows`), the fused prediction of paper Eq. 5 (:mod:`.fusion`), guidance and the sampling loop
(:mod:`.sampler`, :mod:`.shared_prefix`) over any denoiser ``denoise(crops, t, jobs)``, the contract
of a conditioning (:mod:`.conditioning`), scheduler names (:mod:`.schedulers`). Nothing here knows
about tasks, options, files or shells, nor about any concrete conditioning; the run of a call from
prompts to images is :mod:`multidiffusion.runner`'s."""
