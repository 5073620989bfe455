"""Random-weight Chroma pipelines of any reduced width, built in-process (no downloads),
and the reduced-but-family-shaped pipelines of every diffusion-transformer family of 2026 that the
memory benchmark (:mod:`benchmarks.memory_width`) runs.

The Chroma builder takes its sizes as arguments (the defaults are the tests' tiny model:
``tests/test_chroma.py`` builds the same); the reduced Z-Image is the tests' tiny one
(:mod:`devtools.zimage_components`) with a wider transformer and Qwen3. FLUX.2 and Qwen-Image come from
:mod:`devtools.flux2_components` and :mod:`devtools.qwen_components` when those modules exist
(:func:`reduced_families` lists what is there).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from devtools.dit_components import flow_vae, t5_encoder, t5_tokenizer, tiny_flux_pipeline
from devtools.zimage_components import tiny_zimage_pipeline

__all__ = [
    "parameter_bytes",
    "qwen3_encoder",
    "reduced_families",
    "tiny_chroma_pipeline",
]


def qwen3_encoder(tokenizer: Any, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> Any:
    """A random ``Qwen3Model`` of width ``hidden`` (heads of ``hidden // heads``, one key-value head,
    an MLP twice as wide) over ``tokenizer``'s vocabulary."""
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=1,
        head_dim=hidden // heads,
        max_position_embeddings=1024,
        pad_token_id=0,
    )
    return Qwen3Model(config).eval()


def _dynamic_flow_scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, use_dynamic_shifting=True
    )


def tiny_chroma_pipeline(
    sample_size: int = 16,
    seed: int = 0,
    text_length: int = 16,
    heads: int = 2,
    head: int = 16,
    layers: tuple[int, int] = (1, 1),
    axes: tuple[int, int, int] = (4, 6, 6),
    text_width: int = 32,
    text_layers: int = 1,
    approximator: tuple[int, int, int] = (16, 32, 1),
) -> Any:
    """A random ``ChromaPipeline``: a ``ChromaTransformer2DModel`` of ``heads`` x ``head`` with
    ``layers`` (double-, single-stream) blocks and rotary ``axes`` (Chroma1-HD: 24 x 128, (19, 38),
    (16, 56, 56)), its guidance approximator (channels, hidden width, layers; Chroma: 64, 5120, 5),
    FLUX.1's VAE factors, a T5 of ``text_width`` and ``text_layers``, a dynamically shifted scheduler.
    ``sample_size``: the native window in latent pixels."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    tokenizer = t5_tokenizer(max_length=text_length)
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=layers[0],
        num_single_layers=layers[1],
        attention_head_dim=head,
        num_attention_heads=heads,
        joint_attention_dim=text_width,
        axes_dims_rope=axes,
        approximator_num_channels=approximator[0],
        approximator_hidden_dim=approximator[1],
        approximator_layers=approximator[2],
    ).eval()
    pipe = ChromaPipeline(
        scheduler=_dynamic_flow_scheduler(),
        vae=flow_vae(seed=seed, sample_size=sample_size * 8),
        text_encoder=t5_encoder(tokenizer, d_model=text_width, layers=text_layers, seed=seed + 1),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.default_sample_size = sample_size
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_bytes(module: Any) -> int:
    """Bytes of ``module``'s parameters and buffers (0 for None)."""
    if module is None:
        return 0
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


# -- the reduced families of the memory benchmark --------------------------------------------------
# Each real family's layer structure (head width 128, its rotary axes, its text encoder's kind) at
# one head, a few blocks and a window of `native` latent pixels; the text encoder sized so its
# parameters stand to the transformer's roughly as the real ones do (FLUX.1: T5-XXL 4.8B / 12B = 0.4;
# Chroma1-HD: 4.8B / 8.9B = 0.5; Z-Image: Qwen3-4B / 6.2B = 0.65).


def _reduced_flux(native: int, text: int) -> Any:
    pipe = tiny_flux_pipeline(
        sample_size=native, width=128, head=128, axes=(16, 56, 56), layers=(2, 4), text_width=128, text_length=text
    )
    pipe.text_encoder_2 = t5_encoder(pipe.tokenizer_2, d_model=128, layers=5, seed=1)
    return pipe


def _reduced_chroma(native: int, text: int) -> Any:
    return tiny_chroma_pipeline(
        sample_size=native,
        text_length=text,
        heads=1,
        head=128,
        layers=(2, 4),
        axes=(16, 56, 56),
        text_width=128,
        text_layers=7,
        approximator=(64, 128, 2),
    )


def _reduced_zimage(native: int, text: int) -> Any:
    """The tests' Z-Image (:mod:`devtools.zimage_components`) with Z-Image's transformer shape (width
    128 in one head, 4 + 1 refiner blocks, rotary axes (32, 48, 48)) and a Qwen3 of width 128."""
    from diffusers import ZImageTransformer2DModel

    pipe = tiny_zimage_pipeline()
    pipe.text_encoder = qwen3_encoder(pipe.tokenizer, hidden=128, layers=8)
    torch.manual_seed(0)
    pipe.transformer = ZImageTransformer2DModel(
        in_channels=16,
        dim=128,
        n_layers=4,
        n_refiner_layers=1,
        n_heads=1,
        n_kv_heads=1,
        cap_feat_dim=128,
        axes_dims=[32, 48, 48],
        axes_lens=[512, 256, 256],
    ).eval()
    pipe.default_sample_size = native
    return pipe


def _reduced_flux2(klein: bool) -> Callable[[int, int], Any] | None:
    """FLUX.2 [dev] / [klein] from :mod:`devtools.flux2_components` (None while it is missing) with
    FLUX.2's transformer shape (heads of 128, rotary axes (32, 32, 32, 32), MLP ratio 3) at one head
    and (2, 4) blocks instead of 48 and (8, 48), and text encoders 384 wide instead of 16 (Mistral 3's
    30 layers, Qwen3's 27), so text encoder and transformer stand as FLUX.2's do (Mistral Small 24B
    to 32B; Qwen3 to [klein]'s 4B and 9B): about 0.8."""
    try:
        flux2 = importlib.import_module("devtools.flux2_components")
    except ImportError:
        return None

    def build(native: int, text: int) -> Any:
        from diffusers import Flux2Transformer2DModel

        tiny = flux2.tiny_flux2_klein_pipeline if klein else flux2.tiny_flux2_pipeline
        width, flux2.TEXT_WIDTH = flux2.TEXT_WIDTH, 384  # the builders read it when they build
        try:
            pipe = tiny(sample_size=native)
        finally:
            flux2.TEXT_WIDTH = width
        torch.manual_seed(0)
        pipe.transformer = Flux2Transformer2DModel(
            num_layers=2,
            num_single_layers=4,
            attention_head_dim=128,
            num_attention_heads=1,
            joint_attention_dim=3 * 384,
            guidance_embeds=not klein,
        ).eval()
        return pipe

    return build


def _optional(module: str, name: str) -> Callable[[int, int], Any] | None:
    """``module.name`` called with the reduced sizes it takes, or None while the module or the
    function is missing (Qwen-Image is written alongside)."""
    try:
        builder = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None

    def build(native: int, text: int) -> Any:
        import inspect

        accepted = inspect.signature(builder).parameters
        wanted = {"sample_size": native, "text_length": text, "max_sequence_length": text}
        pipe = builder(**{k: v for k, v in wanted.items() if k in accepted})
        if "sample_size" not in accepted:
            pipe.default_sample_size = native
        return pipe

    return build


def reduced_families() -> dict[str, Callable[[int, int], Any]]:
    """Label -> ``build(native, text_tokens)`` of a reduced random pipeline, for every family whose
    builder exists: FLUX.1, Chroma, Z-Image, and FLUX.2 [dev], FLUX.2 [klein], Qwen-Image when their
    devtools modules have landed."""
    families: dict[str, Callable[[int, int], Any] | None] = {
        "FLUX.1": _reduced_flux,
        "FLUX.2 [dev]": _reduced_flux2(klein=False),
        "FLUX.2 [klein]": _reduced_flux2(klein=True),
        "Qwen-Image": _optional("devtools.qwen_components", "tiny_qwenimage_pipeline"),
        "Z-Image": _reduced_zimage,
        "Chroma": _reduced_chroma,
    }
    return {label: build for label, build in families.items() if build is not None}
