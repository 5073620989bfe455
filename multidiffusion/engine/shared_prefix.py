"""Classifier-free guidance shares its first layers: compute them once for both branches.

With guidance the UNet sees the batch [crops; crops] with negative then positive prompts. Until the
first cross-attention reads the prompt, both halves go through exactly the same computation (for
Stable Diffusion 1.x/2.x the time embedding depends on the timestep only): the input convolution,
the first resnet and, in the first transformer block, its input projection and self-attention,
the costliest single layer at the full window resolution (4096 tokens for SD's 64x64 latents).
Hooks run those modules on the distinct rows only and copy the results to the others: the same
output, the same call count, less UNet time (measured in docs/benchmarks.md, "Speed and memory" and
``benchmarks/results/``). The batch need not be two equal halves: with a shared unconditional
branch (regions, :class:`~multidiffusion.engine.sampler.GuidedModel`) the first rows are copies of
some of the last ones, described by :meth:`SharedPrefix.rows`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["SharedPrefix", "shared_prefix_modules"]


def shared_prefix_modules(unet: nn.Module) -> list[nn.Module]:
    """Modules of a diffusers ``UNet2DConditionModel`` whose input is the same in both guidance
    halves, in call order; empty when the time embedding may depend on the prompt (SDXL's pooled
    text embeddings, class or guidance embeddings) or the UNet is compiled."""
    config = getattr(unet, "config", None)
    if config is None or getattr(unet, "_compiled_call_impl", None) is not None:
        return []
    if any(getattr(config, k, None) is not None for k in ("addition_embed_type", "class_embed_type")):
        return []
    if getattr(config, "time_cond_proj_dim", None) is not None:
        return []
    modules: list[nn.Module] = [unet.conv_in]
    block = unet.down_blocks[0]
    attentions = getattr(block, "attentions", None)
    if not attentions:  # no prompt in the first block: all of it is shared
        return [*modules, block]
    modules.append(block.resnets[0])
    transformer = attentions[0]
    first = getattr(transformer, "transformer_blocks", [None])[0]
    if first is None or getattr(first, "only_cross_attention", False):
        return modules
    return [*modules, transformer.norm, transformer.proj_in, first.norm1, first.attn1]


def _select(value: Any, full: int, first: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == full:
        return value[first:]  # a view: no copy on the hot path
    return value


def _expand(value: Any, index: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index.to(value.device))
    if isinstance(value, tuple):
        return tuple(_expand(v, index) for v in value)
    return value


class SharedPrefix:
    """Hooks on :func:`shared_prefix_modules` that, inside :meth:`rows`, run each on the distinct
    rows of its batch and copy the result to the repeated ones. Outside :meth:`rows` they do nothing."""

    def __init__(self, unet: nn.Module):
        self.modules = shared_prefix_modules(unet)
        self._first: int | None = None  # the batch rows from here on are computed
        self._expand: torch.Tensor | None = None  # for every batch row, its row among the computed
        self._full = 0
        self._halved: dict[int, bool] = {}

    @contextlib.contextmanager
    def attached(self) -> Iterator[SharedPrefix]:
        """Register the hooks for the duration of a run (the UNet is left as it was)."""
        handles = []
        for module in self.modules:
            handles.append(module.register_forward_pre_hook(self._before, with_kwargs=True))
            handles.append(module.register_forward_hook(self._after))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def halves(self, half: int, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
        """The UNet's batch is two identical halves of ``half`` rows each, for one call."""
        rows = torch.arange(half, device=device)
        return self.rows(half, torch.cat([rows, rows]))

    @contextlib.contextmanager
    def rows(self, first: int, expand: torch.Tensor) -> Iterator[None]:
        """For one call: the rows from ``first`` on are distinct, and batch row r equals row
        ``first + expand[r]``; only the distinct rows go through the shared layers."""
        self._first, self._expand, self._full = first, expand, expand.numel()
        try:
            yield
        finally:
            self._first = self._expand = None

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if self._first is None:
            return None
        new_args = tuple(_select(a, self._full, self._first) for a in args)
        new_kwargs = {k: _select(v, self._full, self._first) for k, v in kwargs.items()}
        halved = any(a is not b for a, b in zip(new_args, args)) or any(new_kwargs[k] is not kwargs[k] for k in kwargs)
        self._halved[id(module)] = halved
        return (new_args, new_kwargs) if halved else None

    def _after(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if self._expand is None or not self._halved.pop(id(module), False):
            return None
        return _expand(output, self._expand)
