"""A region's own LoRA through ComfyUI's hooks: only that region's rows run with the hooked weights.

ComfyUI attaches a LoRA to a conditioning as a hook (Create Hook LoRA, then Set CLIP Hooks or Cond
Set Props / Set Hooks): a ``WeightHook`` in the conditioning's ``"hooks"`` group. Its sampler
registers the hooks of the conditionings it was given (``register_all_hook_patches``), and for each
group of rows that share hooks swaps the model's weights to the hooked ones (``apply_hooks``) before
the model call. A region's conditioning never reaches the sampler, so :class:`RegionHooks` does the
same for it:

- an ``outer_sample`` wrapper (it runs after the sampler registered its own conditionings' hooks,
  before the first step) registers the regions' hooks together with the sampler's (re-registering
  the sampler's: registering restores the patcher's state from before the sampler's registration);
  ComfyUI's sampler restores that state when it ends;
- per model call of the regions patch, the jobs are split by their prompt's hooks: the jobs of a
  region with hooks run in their own model calls with its weights applied (``apply_hooks``, with
  ComfyUI's keyframe scheduling of the hook's strength), then the weights the sampler had applied
  are put back; every other job (background, regions without hooks, the negative rows) runs with the
  sampler's weights, unchanged.

Weight hooks (LoRAs, a model as a LoRA) are supported; other hook kinds (transformer-options,
additional models, injections) are refused by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from multidiffusion.engine.fusion import Job

from .crops import select_rows

__all__ = ["KEY", "RegionHooks", "check_hooks"]

KEY = "multidiffusion_region_hooks"


def check_hooks(hooks: Any, name: str) -> None:
    """Refuse a hook group with anything but weight hooks (LoRA), naming it."""
    import comfy.hooks

    kinds = {hook.hook_type for hook in getattr(hooks, "hooks", None) or []}
    if not kinds:
        raise ValueError(f"{name}: its conditioning's 'hooks' is not a ComfyUI hook group with hooks")
    other = kinds - {comfy.hooks.EnumHookType.Weight}
    if other:
        names = ", ".join(sorted(kind.name for kind in other))
        raise ValueError(f"{name}: only LoRA (weight) hooks are supported on a region, got {names} hooks")


class RegionHooks:
    """The regions' hook groups (None for a region without), registered and applied as ComfyUI does."""

    def __init__(self, hooks: Sequence[Any]):
        self.hooks = list(hooks)

    def __bool__(self) -> bool:
        return any(h is not None for h in self.hooks)

    def install(self, patched: Any) -> None:
        """Add the ``outer_sample`` wrapper that registers the regions' hooks (only when some region has)."""
        if self:
            import comfy.patcher_extension as ext

            patched.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, KEY, self._outer_sample)

    def _outer_sample(self, executor: Callable, *args: Any, **kwargs: Any) -> Any:
        import comfy.hooks
        import comfy.sampler_helpers

        guider = executor.class_obj
        group = comfy.hooks.HookGroup()
        for conds in guider.conds.values():
            comfy.sampler_helpers.get_hooks_from_cond(conds, group)
        for hooks in self.hooks:
            for hook in [] if hooks is None else hooks.hooks:
                group.add(hook)
        target = comfy.hooks.create_target_dict(comfy.hooks.EnumWeightTarget.Model)
        guider.model_patcher.register_all_hook_patches(group, target, guider.model_options, comfy.hooks.HookGroup())
        return executor(*args, **kwargs)

    def call(
        self,
        call: Callable[[torch.Tensor, torch.Tensor, dict[str, Any], list[int]], torch.Tensor],
        model: Any,
        crops: torch.Tensor,
        sigmas: torch.Tensor,
        inputs: dict[str, Any],
        jobs: Sequence[Job],
        chunks: list[int],
    ) -> torch.Tensor:
        """``call(crops, sigmas, inputs, cond_or_uncond)`` for the batch of ``jobs`` (``rows`` = rows per
        job, view-major), the jobs of each hooked region in a call of their own under its weights."""
        own = [self.hooks[job.prompt - 1] if job.prompt > 0 else None for job in jobs]
        if all(h is None for h in own):
            return call(crops, sigmas, inputs, chunks * len(jobs))
        rows = crops.shape[0] // len(jobs)
        out: torch.Tensor | None = None
        for hooks in dict.fromkeys(own):  # the groups in order of first use, None (the sampler's) too
            picked = [j for j, h in enumerate(own) if h is hooks]
            index = torch.cat([torch.arange(j * rows, (j + 1) * rows) for j in picked]).to(crops.device)
            sub = {
                k: v if k == "transformer_options" else select_rows(v, index, crops.shape[0]) for k, v in inputs.items()
            }
            options = dict(inputs.get("transformer_options", {}))
            for name in ("cond_or_uncond", "uuids"):
                if isinstance(options.get(name), list) and len(options[name]) == len(chunks) * len(jobs):
                    options[name] = options[name][: len(chunks) * len(picked)]
            sub["transformer_options"] = options
            with _applied(model, hooks, sigmas, options):
                result = call(crops.index_select(0, index), sigmas.index_select(0, index), sub, chunks * len(picked))
            if out is None:
                out = torch.empty((crops.shape[0], *result.shape[1:]), dtype=result.dtype, device=result.device)
            out[index] = result
        return out


class _applied:
    """The model's weights under ``hooks`` for one call (None: as the sampler applied them), then back."""

    def __init__(self, model: Any, hooks: Any, sigmas: torch.Tensor, options: dict[str, Any]):
        self.patcher = getattr(model, "current_patcher", None) if hooks is not None else None
        self.hooks, self.sigmas, self.options = hooks, sigmas, options

    def __enter__(self) -> None:
        if self.patcher is None:
            return
        if self.hooks.hooks[0].hook_ref not in self.patcher.hook_patches:
            raise RuntimeError(
                "a region's LoRA hooks were not registered: sample through ComfyUI's sampler (the patch's "
                "outer_sample wrapper registers them)"
            )
        self.previous = self.patcher.current_hooks
        self.patcher.prepare_hook_patches_current_keyframe(
            self.sigmas, self.hooks, {"transformer_options": self.options}
        )
        self.patcher.apply_hooks(hooks=self.hooks)

    def __exit__(self, *_: Any) -> None:
        if self.patcher is not None:
            self.patcher.apply_hooks(hooks=self.previous)
