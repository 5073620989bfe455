"""Text encoders released after encoding: a diffusion transformer's text encoder can hold as much
memory as the transformer (FLUX.2 [dev]'s Mistral Small 24B next to its 32B transformer; T5-XXL's
4.8B next to FLUX.1's 12B), and a call needs it only for the prompts, once, before the first step.

:meth:`EncodedPrompts.condition` stands in the runner where the adapter's ``condition`` is called.
While the text encoders are loaded it encodes every call's prompts (never serving old embeddings:
a LoRA or textual inversion may have changed the encoders since) and keeps the last call's; after
:meth:`EncodedPrompts.release`, a call with those same prompts (and negatives, guidance scales,
images per prompt and any reference image the task's slots carry) runs from the kept embeddings,
and a call with others is refused in one line.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
from typing import Any

from multidiffusion.engine.adapter import PromptEmbeddings

__all__ = ["TEXT_ENCODERS", "EncodedPrompts", "release_text_encoders"]

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
"""The pipeline attributes that hold text encoders, in every family diffusers ships."""


def _key(slots: Any, num_images: int) -> tuple:
    """What the embeddings of a call depend on, besides the encoders: the prompts and negatives of
    every slot, the slots' guidance scales (FLUX.1 embeds them; Z-Image encodes the negatives only
    when guided), the images per prompt, and whatever else a task's slots carry (the edit task's
    reference image, which Qwen-Image-Edit's text encoder reads with the prompt)."""
    prompts = tuple(tuple(slot) for slot in slots.prompts)
    negatives = tuple(tuple(slot) for slot in slots.negatives)
    known = {"prompts", "negatives", "guidance"}
    extra = [] if not dataclasses.is_dataclass(slots) else [f.name for f in dataclasses.fields(slots)]
    carried = tuple((name, _fingerprint(getattr(slots, name))) for name in extra if name not in known)
    return prompts, negatives, tuple(float(g) for g in slots.guidance), int(num_images), carried


def _fingerprint(value: Any) -> Any:
    """``value`` as something comparable across calls: plain values as they are, images, arrays and
    tensors by their shape and a SHA-256 of their bytes, any other object by its identity (so a new
    one never matches: refused rather than served another input's embeddings)."""
    import torch

    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_fingerprint(v) for v in value)
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous()
        return (
            "tensor",
            tuple(data.shape),
            str(data.dtype),
            hashlib.sha256(data.view(torch.uint8).numpy()).hexdigest(),
        )
    if hasattr(value, "tobytes") and hasattr(value, "size"):  # PIL images and numpy arrays
        shape = getattr(value, "shape", None) or (getattr(value, "mode", ""), value.size)
        return (type(value).__name__, shape, hashlib.sha256(value.tobytes()).hexdigest())
    return (type(value).__name__, id(value))


def _copy(cond: PromptEmbeddings) -> PromptEmbeddings:
    """``cond`` with its own dicts and an empty per-call cache (the tensors are shared, not copied)."""
    negative = None if cond.negative is None else dict(cond.negative)
    return PromptEmbeddings(dict(cond.positive), negative)


class EncodedPrompts:
    """The embeddings of the last call's prompts, and whether the text encoders were released.

    ``release_after_encoding``: release them as soon as a call has encoded its prompts, before its
    first step (``MultiDiffusion(..., release_text_encoders=True)``), so even that call's denoising
    runs without them."""

    def __init__(self, release_after_encoding: bool = False):
        self.release_after_encoding = bool(release_after_encoding)
        self.released = False
        self._key: tuple | None = None
        self._kept: tuple[PromptEmbeddings, list[float]] | None = None

    def condition(self, adapter: Any, slots: Any, num_images: int) -> tuple[PromptEmbeddings, list[float]]:
        """``adapter.condition(slots, num_images)``, or after the release the kept embeddings of the
        same prompts (ValueError in one line for any other)."""
        key = _key(slots, num_images)
        if self.released:
            if key != self._key or self._kept is None:
                raise ValueError(
                    "prompts: the text encoders were released (release_text_encoders), so only the prompts (and an "
                    "edit's image) of the last call before the release can run again; load the model again to use "
                    "new prompts"
                )
            cond, guidance = self._kept
            return _copy(cond), list(guidance)
        cond, guidance = adapter.condition(slots, num_images)
        self._key, self._kept = key, (_copy(cond), list(guidance))
        if self.release_after_encoding:
            self.release(adapter.pipe)
        return cond, guidance

    def release(self, pipe: Any) -> list[str]:
        """Release ``pipe``'s text encoders (:func:`release_text_encoders`); later calls run from the
        kept embeddings only."""
        self.released = True
        return release_text_encoders(pipe)


def release_text_encoders(pipe: Any) -> list[str]:
    """Set ``pipe``'s text encoders to None and give their memory back: model CPU offload's hooks
    made again without them (the old chain holds them), garbage collected, the accelerator's cache
    emptied, and the host heap's free pages returned to the system (glibc's ``malloc_trim``). The names released."""
    import torch

    names = [name for name in TEXT_ENCODERS if getattr(pipe, name, None) is not None]
    for name in names:
        setattr(pipe, name, None)
    if getattr(pipe, "_all_hooks", None):  # enable_model_cpu_offload's chain references every model
        pipe.enable_model_cpu_offload(device=getattr(pipe, "_offload_device", None))
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    from multidiffusion.vae.heap import give_back_freed

    give_back_freed(torch.device("cpu"))  # their weights, or offloaded copies, were in host memory too
    return names
