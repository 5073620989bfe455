"""Tiny random-weight diffusion-transformer pipelines (FLUX.1, SD 3), built in-process (no downloads).

Used by the tests and the CPU benchmarks, as :mod:`devtools.components` for the UNet families.
Shapes follow the real models where the engine cares: a VAE that down-samples by 8 to 16 latent
channels with FLUX's / SD 3's shift and scaling factors, 2x2 patches, CLIP and T5 text encoders.
The T5 tokenizer is a real ``T5TokenizerFast`` over a character Unigram vocabulary made with the
``tokenizers`` library; the CLIP tokenizers are :func:`devtools.components.char_tokenizer`'s.
"""

from __future__ import annotations

from typing import Any

import torch

from devtools.components import _text_encoder, _vae, char_tokenizer

__all__ = [
    "flow_vae",
    "t5_encoder",
    "t5_tokenizer",
    "tiny_flux_controlnet",
    "tiny_flux_pipeline",
    "tiny_sd3_controlnet",
    "tiny_sd3_pipeline",
]

FLUX_VAE = {"shift_factor": 0.1159, "scaling_factor": 0.3611}
SD3_VAE = {"shift_factor": 0.0609, "scaling_factor": 1.5305}


def t5_tokenizer(max_length: int = 32) -> Any:
    """A ``T5TokenizerFast`` over single characters (with and without T5's word-start mark "▁"),
    <pad> = 0, </s> = 1 appended to every text, <unk> = 2; built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = [chr(c) for c in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    vocab += [(c, -2.0) for c in chars] + [("▁" + c, -1.5) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=max_length,
    )


def t5_encoder(tokenizer: Any, d_model: int = 32, layers: int = 1, heads: int = 2, seed: int = 0) -> Any:
    """A random ``T5EncoderModel`` of width ``d_model`` over ``tokenizer``'s vocabulary."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // heads,
        d_ff=2 * d_model,
        num_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def flow_vae(channels: int = 32, factors: dict[str, float] | None = None, seed: int = 0, sample_size: int = 256) -> Any:
    """An ``AutoencoderKL`` that down-samples by 8 to 16 latent channels, without quant convs, with a
    shift and scaling factor (FLUX's by default), as the SD 3 and FLUX VAEs."""
    factors = factors or FLUX_VAE
    return _vae(channels, seed, sample_size, 16, use_quant_conv=False, use_post_quant_conv=False, **factors)


def _flow_scheduler(dynamic: bool, shift: float = 1.0) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    if dynamic:  # FLUX.1-dev's scheduler_config.json
        return FlowMatchEulerDiscreteScheduler(
            base_image_seq_len=256,
            base_shift=0.5,
            max_image_seq_len=4096,
            max_shift=1.15,
            shift=3.0,
            use_dynamic_shifting=True,
        )
    return FlowMatchEulerDiscreteScheduler(shift=shift)


def tiny_flux_pipeline(
    sample_size: int = 16,
    guidance_embeds: bool = True,
    seed: int = 0,
    text_length: int = 16,
    width: int = 32,
    layers: tuple[int, int] = (1, 1),
    head: int = 16,
    axes: tuple[int, int, int] = (4, 6, 6),
    text_width: int = 32,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A random-weight ``FluxPipeline``: a ``FluxTransformer2DModel`` of ``width`` (= heads x
    ``head``, rotary ``axes`` summing to ``head``; FLUX.1: 24 x 128, (16, 56, 56)) with ``layers``
    (double-stream, single-stream; FLUX.1: 19, 38) blocks, a distilled guidance embedding when
    ``guidance_embeds`` (dev; schnell without), FLUX.1-dev's dynamically shifted scheduler (schnell:
    a fixed shift of 1), 16-channel VAE, CLIP (pooled) and T5 of ``text_width``.

    ``sample_size`` is the pipeline's default latent size (its ``default_sample_size``: the native
    window); ``text_length`` the tokenizers' maximum length."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    tokenizer = char_tokenizer(max_length=text_length)
    tokenizer_2 = t5_tokenizer(max_length=text_length)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=layers[0],
        num_single_layers=layers[1],
        attention_head_dim=head,
        num_attention_heads=width // head,
        joint_attention_dim=text_width,
        pooled_projection_dim=text_width,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=axes,
    ).eval()
    pipe = FluxPipeline(
        scheduler=_flow_scheduler(dynamic=guidance_embeds),
        vae=flow_vae(seed=seed, sample_size=sample_size * 8),
        text_encoder=_text_encoder(tokenizer, hidden=text_width, seed=seed),
        tokenizer=tokenizer,
        text_encoder_2=t5_encoder(tokenizer_2, d_model=text_width, seed=seed + 1),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.default_sample_size = sample_size
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def tiny_sd3_pipeline(
    sample_size: int = 16,
    seed: int = 0,
    text_length: int = 16,
    heads: int = 4,
    layers: int = 1,
    head: int = 8,
    text_width: int = 32,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A random-weight ``StableDiffusion3Pipeline``: an ``SD3Transformer2DModel`` (2x2 patches, 16
    latent channels, ``heads`` x ``head`` wide, ``layers`` joint blocks, native ``sample_size``
    latents; SD 3.5 large: 38 x 64 heads of 64, 38 blocks), CLIP-L and CLIP-G stand-ins with
    projections (widths ``text_width`` / 2, pooled 2 x ``text_width``), T5 of ``text_width``, SD 3's
    VAE factors and fixed-shift scheduler (shift 3.0)."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = char_tokenizer(max_length=text_length)
    tokenizer_2 = char_tokenizer(max_length=text_length)
    tokenizer_3 = t5_tokenizer(max_length=text_length)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=layers,
        attention_head_dim=head,
        num_attention_heads=heads,
        joint_attention_dim=text_width,
        caption_projection_dim=heads * head,
        pooled_projection_dim=2 * text_width,
        pos_embed_max_size=max(sample_size, 32),
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=_flow_scheduler(dynamic=False, shift=3.0),
        vae=flow_vae(factors=SD3_VAE, seed=seed, sample_size=sample_size * 8),
        text_encoder=_text_encoder(tokenizer, hidden=text_width // 2, projection=text_width, seed=seed),
        tokenizer=tokenizer,
        text_encoder_2=_text_encoder(tokenizer_2, hidden=text_width // 2, projection=text_width, seed=seed + 1),
        tokenizer_2=tokenizer_2,
        text_encoder_3=t5_encoder(tokenizer_3, d_model=text_width, seed=seed + 2),
        tokenizer_3=tokenizer_3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def _weighted(net: Any, seed: int) -> Any:
    """``net`` with its zero-initialised parameters (ControlNet outputs and condition embedders)
    drawn at random, so the ControlNet's output matters in tests."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return net.eval()


def tiny_flux_controlnet(transformer: Any, seed: int = 0, layers: tuple[int, int] = (1, 1), **config: Any) -> Any:
    """A random ``FluxControlNetModel`` for ``transformer`` (its width, text sizes and guidance
    embedding; ``layers`` double- and single-stream blocks), as InstantX's: the control image VAE-
    encoded and packed (``config`` overrides; XLabs' pixel hint block: ``conditioning_embedding_channels=16,
    patch_size=2``)."""
    from diffusers import FluxControlNetModel

    c = transformer.config
    torch.manual_seed(seed)
    settings = dict(
        patch_size=c.patch_size,
        in_channels=c.in_channels,
        num_layers=layers[0],
        num_single_layers=layers[1],
        attention_head_dim=c.attention_head_dim,
        num_attention_heads=c.num_attention_heads,
        joint_attention_dim=c.joint_attention_dim,
        pooled_projection_dim=c.pooled_projection_dim,
        guidance_embeds=c.guidance_embeds,
        axes_dims_rope=list(c.axes_dims_rope),
    )
    net = FluxControlNetModel(**{**settings, **config})
    return _weighted(net, seed)


def tiny_sd3_controlnet(transformer: Any, seed: int = 0, layers: int = 1, **config: Any) -> Any:
    """A random ``SD3ControlNetModel`` for ``transformer`` (its width, patches, text sizes) with
    ``layers`` joint blocks; ``config`` overrides (``force_zeros_for_pooled_projection``, default True
    as InstantX's SD 3 ControlNets). The transformer needs two blocks or more for its output to
    matter: SD 3's last block is context-pre-only and takes no ControlNet residual."""
    from diffusers import SD3ControlNetModel

    c = transformer.config
    torch.manual_seed(seed)
    net = SD3ControlNetModel(
        sample_size=c.sample_size,
        patch_size=c.patch_size,
        in_channels=c.in_channels,
        num_layers=layers,
        attention_head_dim=c.attention_head_dim,
        num_attention_heads=c.num_attention_heads,
        joint_attention_dim=c.joint_attention_dim,
        caption_projection_dim=c.caption_projection_dim,
        pooled_projection_dim=c.pooled_projection_dim,
        out_channels=c.out_channels,
        pos_embed_max_size=c.pos_embed_max_size,
        **config,
    )
    return _weighted(net, seed)
