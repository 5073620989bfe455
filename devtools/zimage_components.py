"""Tiny random-weight Z-Image pipelines and ControlNets, built in-process (no downloads).

A Qwen3 text encoder over a character vocabulary with a chat template (Qwen3's, without tools), a
``ZImageTransformer2DModel`` of width 64, a 16-channel VAE (:func:`devtools.dit_components.flow_vae`),
and a ``ZImageControlNetModel`` matched to the transformer. Used by ``tests/test_zimage.py`` and
``tests/test_zimage_controlnet.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from devtools.dit_components import _weighted, flow_vae

__all__ = ["CHAT_TEMPLATE", "SPECIAL", "qwen_tokenizer", "tiny_zimage_controlnet", "tiny_zimage_pipeline"]

SAMPLE_SIZE = 16  # latent pixels: 128 px, the tiny model's native window
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def qwen_tokenizer() -> Any:
    """A fast tokenizer of single characters with Qwen's special tokens and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    tok = Tokenizer(models.WordLevel({s: i for i, s in enumerate(SPECIAL + chars)}, unk_token=SPECIAL[0]))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=SPECIAL[0], eos_token=SPECIAL[2], additional_special_tokens=SPECIAL[1:]
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_zimage_pipeline(dynamic: bool = False, seed: int = 0, layers: int = 1) -> Any:
    """A ``ZImagePipeline``: Z-Image Turbo's scheduler (fixed shift 3) or, with ``dynamic``, a
    resolution-shifted one; ``layers`` main transformer blocks (a ControlNet's hints go into them)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = qwen_tokenizer()
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    text_encoder = Qwen3Model(config).eval()
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        in_channels=16,
        dim=64,
        n_layers=layers,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=32,
        axes_dims=[8, 12, 12],
        axes_lens=[256, 64, 64],
    ).eval()
    if dynamic:
        scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(
        scheduler=scheduler,
        vae=flow_vae(seed=seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.default_sample_size = SAMPLE_SIZE
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_zimage_controlnet(transformer: Any, seed: int = 0, places: tuple[int, ...] = (0, 1), **config: Any) -> Any:
    """A random ``ZImageControlNetModel`` for ``transformer`` (its width, heads and norms), adding hints
    to its main blocks ``places`` (Z-Image-Turbo-Fun-Controlnet-Union's kind: 16 control channels, the
    plain control noise refiner); ``config`` overrides (``control_in_dim=33`` and
    ``add_control_noise_refiner="control_noise_refiner"``: the 2.x ControlNets). Its zero-initialised
    projections are drawn at random so its hints matter."""
    from diffusers import ZImageControlNetModel

    c = transformer.config
    torch.manual_seed(seed)
    settings = dict(
        control_layers_places=list(places),
        control_refiner_layers_places=[0],
        control_in_dim=c.in_channels,
        dim=c.dim,
        n_refiner_layers=c.n_refiner_layers,
        n_heads=c.n_heads,
        n_kv_heads=c.n_kv_heads,
        norm_eps=c.norm_eps,
        qk_norm=c.qk_norm,
    )
    return _weighted(ZImageControlNetModel(**{**settings, **config}), seed)
