"""Tiny random-weight Qwen-Image pipelines (text-to-image and Edit), built in-process (no downloads).

Shapes follow the real models where the engine cares: a causal 3D VAE (``AutoencoderKLQwenImage``)
that down-samples by 8 to 16 latent channels with per-channel ``latents_mean`` / ``latents_std``; a
``QwenImageTransformer2DModel`` over 2x2 patches (64 input features) with centred rotary positions;
a Qwen2.5-VL text encoder (``Qwen2_5_VLForConditionalGeneration``, vision tower included, so the Edit
pipeline's image goes through it) over a character vocabulary with the chat tokens the pipelines'
templates use (``<|im_start|>``, ``<|im_end|>``, ``<|vision_start|>``, ``<|image_pad|>``,
``<|vision_end|>``), for Edit a ``Qwen2VLProcessor``, and a ``QwenImageControlNetModel`` matched to
the transformer (``tests/test_qwenimage_controlnet.py``).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["qwen_tokenizer", "tiny_qwenimage_controlnet", "tiny_qwenimage_edit_pipeline", "tiny_qwenimage_pipeline"]

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]
TEXT_WIDTH = 32


def qwen_tokenizer() -> Any:
    """A fast tokenizer of single characters (printable ASCII and newline) with Qwen's chat and
    vision tokens as special tokens; <|endoftext|> pads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    tok = Tokenizer(models.WordLevel({s: i for i, s in enumerate(SPECIAL + chars)}, unk_token=SPECIAL[0]))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=SPECIAL[0], eos_token=SPECIAL[2], additional_special_tokens=SPECIAL[1:]
    )


def _text_encoder(tokenizer: Any, seed: int) -> Any:
    """Qwen2.5-VL of width 32 (2 layers, multimodal rotary sections 2/3/3) with a 1-block vision tower
    (patch 14, 2x2 merge) projecting to the text width."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "pad_token_id": 0,
            "bos_token_id": 0,
            "eos_token_id": ids("<|im_end|>"),
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": TEXT_WIDTH,
            "fullatt_block_indexes": [0],
            "window_size": 112,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|endoftext|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _transformer(seed: int, guidance_embeds: bool = False, layers: int = 1) -> Any:
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    ).eval()


def qwen_vae(seed: int = 0) -> Any:
    """An ``AutoencoderKLQwenImage`` of base width 8 (down-sampling 8, 16 latent channels, the real
    model's ``latents_mean`` / ``latents_std``)."""
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1).eval()


def _scheduler() -> Any:
    """Qwen-Image's scheduler_config.json (resolution-shifted, exponential time shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        shift=1.0,
        shift_terminal=0.02,
        time_shift_type="exponential",
        use_dynamic_shifting=True,
    )


def tiny_qwenimage_pipeline(
    seed: int = 0, sample_size: int = 16, guidance_embeds: bool = False, layers: int = 1
) -> Any:
    """A ``QwenImagePipeline`` of tiny random components; native size ``sample_size`` latent pixels
    (``sample_size * 8`` px); ``layers`` transformer blocks (a ControlNet's hints go into them)."""
    from diffusers import QwenImagePipeline

    tokenizer = qwen_tokenizer()
    pipe = QwenImagePipeline(
        scheduler=_scheduler(),
        vae=qwen_vae(seed),
        text_encoder=_text_encoder(tokenizer, seed),
        tokenizer=tokenizer,
        transformer=_transformer(seed, guidance_embeds, layers),
    )
    pipe.default_sample_size = sample_size
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_qwenimage_edit_pipeline(seed: int = 0, sample_size: int = 16) -> Any:
    """A ``QwenImageEditPipeline`` of tiny random components, its ``Qwen2VLProcessor`` (patch 14, 2x2
    merge) sized so small images stay small."""
    from diffusers import QwenImageEditPipeline
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor

    base = tiny_qwenimage_pipeline(seed, sample_size)
    images = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    check = Qwen2VLProcessor.check_argument_for_proper_class
    Qwen2VLProcessor.check_argument_for_proper_class = lambda self, name, arg: (
        None if arg is None else check(self, name, arg)
    )  # no video processor: transformers' needs torchvision, and editing images never uses it
    try:
        processor = Qwen2VLProcessor(image_processor=images, tokenizer=base.tokenizer)
    finally:
        Qwen2VLProcessor.check_argument_for_proper_class = check
    pipe = QwenImageEditPipeline(processor=processor, **base.components)
    pipe.default_sample_size = sample_size
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_qwenimage_controlnet(transformer: Any, seed: int = 0, layers: int = 1, **config: Any) -> Any:
    """A random ``QwenImageControlNetModel`` for ``transformer`` (its width, heads, patches and text
    width; ``config`` overrides, e.g. ``num_attention_heads``) of ``layers`` blocks, started from the
    transformer's as diffusers' ``from_transformer`` does (random where its width differs), its
    zero-initialised outputs and control embedder drawn at random so that its hints matter."""
    from diffusers import QwenImageControlNetModel

    from devtools.dit_components import _weighted

    m = transformer.config
    shape = {"attention_head_dim": m.attention_head_dim, "num_attention_heads": m.num_attention_heads}
    config = {**shape, **config}
    same = all(config[k] == v for k, v in shape.items())
    net = QwenImageControlNetModel.from_transformer(
        transformer, num_layers=layers, load_weights_from_transformer=same, **config
    )
    return _weighted(net, seed)
