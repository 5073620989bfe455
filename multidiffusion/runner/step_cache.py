"""Step caching per batch of views: diffusers' cache hooks (first-block cache, TaylorSeer) on a
diffusion transformer, each batch of views with its own cache.

A cache hook reuses work between denoising steps of the *same* input: first-block cache (FBCache,
after TeaCache) runs the first transformer block, compares its residual with the one of the
previous step, and when the relative change

    mean|r_t − r_{t+1}| / mean|r_{t+1}|  <  threshold

skips the other blocks, adding the tail residual it cached at the last full evaluation; TaylorSeer
computes the attention modules every ``cache_interval`` steps and predicts them in between from a
Taylor expansion in the step index. Both keep state (residuals, Taylor factors) of the rows they
saw. diffusers' pipelines keep one state per ``transformer.cache_context(name)`` ("cond",
"uncond").

MultiDiffusion evaluates a step as many model calls, each on a batch of views (crops of one canvas)
under their prompts; Eq. 5 fuses their predictions. A state is only meaningful for the same views
in the same rows, so every batch of jobs (its views, prompts and rows; and each network call of it:
FLUX.1 with canvas positions makes one per view position, skip-layer guidance another) gets its own
context, named when the guided model announces the call (:meth:`StepCache.model_inputs`) and set
around each forward of the transformer. A view's prediction then only ever uses residuals of its
own crop, so the fused step still receives every view's own (cached) prediction.

The state is bounded: ``step_cache_mb`` caps the bytes of all contexts' state tensors (counted
after every forward). A batch whose state would pass the bound has it dropped: that batch falls
back to computing every step (a fresh state always computes), the others keep theirs. Contexts no
batch used during a whole step (the fast mode's shifted windows change every step) are freed when
the next step starts. Everything is installed for one call and removed after it (hooks, the
contexts, the attributes diffusers adds to the modules), so nothing leaks into the next call or the
user's pipeline.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterator
from typing import Any

import torch

from multidiffusion.engine.conditioning import Conditioning, ModelCall

__all__ = ["DEFAULT_MB", "StepCache", "prepare_step_cache"]

DEFAULT_MB = 1024.0
"""Default bound on the cached state of all view batches, MiB."""

_BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks", "layers")
_TAYLORSEER_PATTERNS = ("^blocks.*attn", "^transformer_blocks.*attn", "^single_transformer_blocks.*attn")


def prepare_step_cache(adapter: Any, options: Any) -> tuple[Conditioning, ...]:
    """The call's step cache (one :class:`StepCache`), or nothing when ``options.step_cache`` is None.
    ValueError, naming ``step_cache``, when the model's network is not a transformer diffusers'
    hooks can cache."""
    kind = getattr(options, "step_cache", None)
    if kind is None:
        return ()
    transformer = adapter.unet
    name = type(transformer).__name__
    blocks = _blocks(transformer)
    if not blocks:
        raise ValueError(
            "step_cache: diffusers' cache hooks work on diffusion transformers (FLUX, SD 3, Qwen-Image, Z-Image, "
            f"Chroma); this model's network is a {name}"
        )
    if getattr(transformer, "_cache_config", None) is not None:
        raise ValueError(f"step_cache: the {name} already has a diffusers cache enabled; disable it first")
    mb = options.step_cache_mb if options.step_cache_mb is not None else DEFAULT_MB
    if kind == "first_block":
        _check_block_metadata(blocks, name)
        threshold = options.step_cache_threshold if options.step_cache_threshold is not None else 0.05
        record = {"step_cache": kind, "step_cache_threshold": threshold, "step_cache_mb": mb}
        return (StepCache(_first_block_config(threshold), record, blocks[-1]),)
    patterns = _taylorseer_patterns(transformer, name)
    interval = options.step_cache_interval if options.step_cache_interval is not None else 5
    record = {"step_cache": kind, "step_cache_interval": interval, "step_cache_mb": mb}
    return (StepCache(_taylorseer_config(interval, patterns), record, blocks[-1]),)


def _taylorseer_patterns(transformer: torch.nn.Module, name: str) -> list[str] | None:
    """The attention modules TaylorSeer predicts: diffusers' default patterns (None) where they find
    any (``*blocks.N.attn``: FLUX.1, SD 3, Chroma), else every block's ``attention`` (Z-Image's
    ``layers.N.attention``); ValueError naming ``step_cache`` when neither does."""
    names = [n for n, _ in transformer.named_modules()]
    if any(re.fullmatch(p, n) for n in names for p in _TAYLORSEER_PATTERNS):
        return None
    blocks = "|".join(_BLOCK_LISTS)
    patterns = [rf"^({blocks})\.\d+\.attention$"]
    if not any(re.fullmatch(patterns[0], n) for n in names):
        raise ValueError(f"step_cache: diffusers' TaylorSeer finds no attention modules (blocks.N.attn) in {name}")
    return patterns


def _first_block_config(threshold: float) -> Any:
    from diffusers.hooks import FirstBlockCacheConfig

    return FirstBlockCacheConfig(threshold=threshold)


def _taylorseer_config(interval: int, patterns: list[str] | None) -> Any:
    from diffusers.hooks import TaylorSeerCacheConfig

    return TaylorSeerCacheConfig(cache_interval=interval, cache_identifiers=patterns)


def _install(transformer: torch.nn.Module, config: Any) -> list[tuple[Any, str]]:
    """``config``'s hooks applied to ``transformer`` (diffusers' ``apply_*``: SD 3's and Z-Image's
    transformers lack ``enable_cache``); returns (registry, hook name) of each hook added, latest first."""
    from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, apply_first_block_cache, apply_taylorseer_cache

    before = {id(m): set(r.hooks) for m in transformer.modules() if (r := vars(m).get("_diffusers_hook"))}
    (apply_first_block_cache if isinstance(config, FirstBlockCacheConfig) else apply_taylorseer_cache)(
        transformer, config
    )
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()  # reach the new hooks
    added = []
    for module in transformer.modules():
        registry = vars(module).get("_diffusers_hook")
        if registry is not None:
            added += [(registry, n) for n in reversed(registry._hook_order) if n not in before.get(id(module), ())]
    return added


def _blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer's blocks in the order diffusers' first-block cache takes them."""
    found: list[torch.nn.Module] = []
    for name, child in transformer.named_children():
        if name in _BLOCK_LISTS and isinstance(child, torch.nn.ModuleList):
            found.extend(child)
    return found


def _check_block_metadata(blocks: list[torch.nn.Module], name: str) -> None:
    """First-block cache needs diffusers' metadata of every block class, and a head and a tail."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    if len(blocks) < 2:
        raise ValueError(f"step_cache: first_block needs at least 2 transformer blocks, the {name} has {len(blocks)}")
    if getattr(blocks[-1], "context_pre_only", False):  # SD 3's: its text stream ends one block early
        raise ValueError(
            f"step_cache: diffusers 0.42's first_block cache fails on the {name}'s last block (it returns no text "
            "stream); try step_cache='taylorseer'"
        )
    for block in blocks:
        try:
            metadata = TransformerBlockRegistry.get(type(block))
        except ValueError:
            metadata = None
        if metadata is None or metadata.hidden_states_argument_name not in inspect.signature(block.forward).parameters:
            why = "does not know" if metadata is None else "misreads the arguments of"  # Z-Image's block takes x
            raise ValueError(
                f"step_cache: diffusers 0.42's first_block cache {why} {type(block).__name__} (in {name}); "
                "try step_cache='taylorseer'"
            )


def _probe(block: torch.nn.Module) -> torch.nn.Module:
    """A leaf inside the last block's attention (else the block's first leaf with weights): it runs
    exactly when that block is computed, not when a cache skips (FBCache) or predicts (TaylorSeer) it."""
    for name, module in block.named_modules():
        if name.split(".")[-1] in ("attn", "attention"):
            block = module
            break
    return next(m for m in block.modules() if isinstance(m, torch.nn.Linear))


class StepCache(Conditioning):
    """A cache hook on the transformer for one call, one cache context per batch of views."""

    def __init__(self, config: Any, record: dict[str, Any], last_block: torch.nn.Module):
        self.config = config
        self._record = record
        self.bound = int(record["step_cache_mb"] * 2**20)
        self._probe = _probe(last_block)
        self._state_managers: list[Any] = []
        self._call: tuple | None = None  # the jobs of the announced model call, and its forwards so far
        self._forwards = 0
        self._names: dict[tuple, str] = {}
        self._bytes: dict[str, int] = {}  # state bytes of each context holding state
        self._used: set[str] = set()  # contexts used in this step
        self._over: set[str] = set()  # contexts past the bound: computed, no state kept
        self._step = -1
        self._open: Any = None
        self._probe_calls = 0
        self.counts = {"skipped": 0, "computed": 0, "uncached": 0, "peak_bytes": 0, "contexts": 0}

    def record(self) -> dict[str, Any]:
        return dict(self._record)

    def stats(self) -> dict[str, float]:
        c = self.counts
        return {
            "step_cache_skipped": c["skipped"],
            "step_cache_computed": c["computed"],
            "step_cache_uncached": c["uncached"],
            "step_cache_contexts": c["contexts"],
            "step_cache_peak_mb": c["peak_bytes"] / 2**20,
        }

    def model_inputs(self, call: ModelCall) -> dict[str, Any]:
        """Names the call's cache context (no model inputs): the views and prompts of its jobs in order,
        its rows; a new step first frees the contexts the last step did not use."""
        if call.step != self._step:
            if self._step >= 0:
                for name in [n for n in self._bytes if n not in self._used]:
                    self._drop(name)
            self._step, self._used = call.step, set()
        self._call = (tuple((job.view, job.prompt) for job in call.jobs), call.x.shape[0], call.guided)
        self._forwards = 0
        return {}

    @contextlib.contextmanager
    def attached(self, adapter: Any) -> Iterator[None]:
        from diffusers.hooks import HookRegistry

        transformer = adapter.unet
        clean = [m for m in transformer.modules() if not {"forward", "_diffusers_hook"} & set(vars(m))]
        handles = [
            transformer.register_forward_pre_hook(self._before, with_kwargs=True),
            transformer.register_forward_hook(self._after),
            self._probe.register_forward_pre_hook(self._probed),
        ]
        added = _install(transformer, self.config)
        self._state_managers = _managers(transformer)
        try:
            yield
        except (TypeError, ValueError, AttributeError, IndexError) as error:
            if not _raised_in_hooks(error):
                raise
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(
                f"step_cache: diffusers' {self._record['step_cache']} cache fails on the {type(transformer).__name__} "
                f"({type(error).__name__}: {first}); try the other step_cache or none"
            ) from error
        finally:
            self._close()
            for handle in handles:
                handle.remove()
            for registry, name in added:
                registry.remove_hook(name, recurse=False)
            HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
            for module in clean:  # what diffusers leaves on the modules: its empty registry, a bound forward
                registry = vars(module).get("_diffusers_hook")
                if registry is not None and not registry.hooks:
                    del module._diffusers_hook
                    vars(module).pop("forward", None)
            self._state_managers, self._call, self._names, self._bytes, self._over = [], None, {}, {}, set()

    # -- around each forward of the transformer --------------------------------------------------------
    def _probed(self, module: Any, args: Any) -> None:
        self._probe_calls += 1

    def _before(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        from diffusers.models.cache_utils import CacheMixin

        key = (self._call, self._forwards)
        self._forwards += 1
        name = self._names.setdefault(key, f"views-{len(self._names)}")
        hidden = kwargs.get("hidden_states", kwargs.get("x", args[0] if args else None))
        self._rows = int(hidden.shape[0]) if isinstance(hidden, torch.Tensor) else len(hidden)  # Z-Image: a list
        self._name, self._seen = name, self._probe_calls
        self._open = CacheMixin.cache_context(module, name)
        self._open.__enter__()

    def _after(self, module: Any, args: Any, output: Any) -> None:
        self._close()
        name, c = self._name, self.counts
        c["computed" if self._probe_calls > self._seen else "skipped"] += self._rows
        self._used.add(name)
        if name in self._over:
            c["uncached"] += self._rows
            self._drop(name)
            return
        self._bytes[name] = self._state_bytes(name)
        total = sum(self._bytes.values())
        if total > self.bound:  # past the bound: this batch computes from now on
            self._over.add(name)
            self._drop(name)
        else:
            c["peak_bytes"] = max(c["peak_bytes"], total)
        c["contexts"] = max(c["contexts"], len(self._bytes))

    def _close(self) -> None:
        if self._open is not None:
            opened, self._open = self._open, None
            opened.__exit__(None, None, None)

    # -- the hooks' state, by context --------------------------------------------------------------------
    def _state_bytes(self, name: str) -> int:
        """Bytes of the tensors a context's state holds (each storage once)."""
        seen: dict[int, int] = {}
        for manager in self._state_managers:
            state = manager._state_cache.get(name)
            if state is not None:
                for tensor in _tensors(vars(state)):
                    storage = tensor.untyped_storage()
                    seen[storage.data_ptr()] = storage.nbytes()
        return sum(seen.values())

    def _drop(self, name: str) -> None:
        for manager in self._state_managers:
            manager._state_cache.pop(name, None)
        self._bytes.pop(name, None)


def _raised_in_hooks(error: BaseException) -> bool:
    """Whether ``error`` was raised inside diffusers' hooks (a hook that does not fit the model:
    FLUX.2's blocks under first_block), not by the model or the caller."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    path = tb.tb_frame.f_code.co_filename.replace("\\", "/") if tb is not None else ""
    return "/diffusers/hooks/" in path


def _managers(transformer: torch.nn.Module) -> list[Any]:
    """diffusers' ``StateManager``s of the hooks on the transformer (each once): they hold the
    state of every context, by name."""
    from diffusers.hooks.hooks import StateManager

    found: dict[int, Any] = {}
    for module in transformer.modules():
        registry = vars(module).get("_diffusers_hook")
        for hook in registry.hooks.values() if registry is not None else ():
            for value in vars(hook).values():
                if isinstance(value, StateManager):
                    found[id(value)] = value
    return list(found.values())


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
