"""Tiny random-weight FLUX.2 pipelines ([dev] and [klein]), built in-process (no downloads).

Shapes follow the real models where the engine cares: an ``AutoencoderKLFlux2`` that down-samples
by 8 to 32 latent channels, with batch-norm running statistics over its 2x2-patchified channels
(128) set to random values so that the latent normalisation is exercised; a ``Flux2Transformer2DModel``
taking 128 channels per token with 4-axis rotary positions; text encoders whose hidden states are
read at the pipelines' own layers ((10, 20, 30) of a Mistral 3 for [dev], (9, 18, 27) of a Qwen3
for [klein]), so they have 30 and 27 layers, each 16 wide (the transformer reads 3 x 16 = 48
features per text token). The tokenizers are fast tokenizers over a Unigram vocabulary of single
characters plus the words of FLUX.2's system message (so that its chat template costs ~40 tokens,
not ~200), with the chat templates' special tokens. Used by ``tests/test_flux2*.py`` and the
benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "KLEIN_TEMPLATE",
    "MISTRAL_TEMPLATE",
    "chat_tokenizer",
    "flux2_scheduler",
    "flux2_vae",
    "tiny_flux2_klein_pipeline",
    "tiny_flux2_pipeline",
    "tiny_flux2_transformer",
]

SAMPLE_SIZE = 16
"""Latent pixels of the tiny pipelines' default image (128 px): their native window."""
TEXT_WIDTH = 16
"""Hidden size of the tiny text encoders (the transformer's ``joint_attention_dim`` is 3x it)."""

MISTRAL_SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]
MISTRAL_TEMPLATE = (
    "<s>{% for m in messages %}{% set text = m['content'][0]['text'] %}"
    "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% else %}[INST]{{ text }}[/INST]{% endif %}{% endfor %}"
)
"""Mistral Small 3's chat template reduced to what ``Flux2Pipeline`` sends: a system turn and a
user turn, each a list holding one text part."""

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
KLEIN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
"""Qwen3's chat template without tools, as ``Flux2KleinPipeline`` uses it (``enable_thinking=False``)."""


def chat_tokenizer(special: Sequence[str], template: str, words: Sequence[str] = ()) -> Any:
    """A ``PreTrainedTokenizerFast`` over single characters (with and without the word-start mark
    "▁") and ``words`` (one token each, preferred by the Unigram model over their characters),
    ``special`` tokens never split (the first is padding, the second and third begin and end), and
    the chat ``template``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(33, 127)]
    vocab = [(s, 0.0) for s in special] + [("▁", -1.0), ("\n", -2.0)]
    vocab += [("▁" + w, -1.0) for w in dict.fromkeys(words)]
    vocab += [(c, -3.0) for c in chars] + [("▁" + c, -2.5) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=special[0], additional_special_tokens=list(special[1:])
    )
    tokenizer.chat_template = template
    return tokenizer


def flux2_vae(seed: int = 0, channels: int = 32, sample_size: int = 256) -> Any:
    """An ``AutoencoderKLFlux2`` down-sampling by 8 (four blocks of ``channels``) to 32 latent
    channels, its batch-norm running mean and variance (over the 128 patchified channels) random."""
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        block_out_channels=(channels,) * 4,
        layers_per_block=1,
        latent_channels=32,
        norm_num_groups=min(32, channels),
        sample_size=sample_size,
    ).eval()
    g = torch.Generator().manual_seed(seed + 1)
    vae.bn.running_mean.copy_(0.5 * torch.randn(vae.bn.num_features, generator=g))
    vae.bn.running_var.copy_(0.5 + 1.5 * torch.rand(vae.bn.num_features, generator=g))
    return vae


def flux2_scheduler() -> Any:
    """FLUX.2's scheduler (its ``scheduler_config.json``): flow matching, shifted by a μ the pipeline
    computes (``use_dynamic_shifting``, exponential time shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=4096,
        max_shift=1.15,
        shift=3.0,
        use_dynamic_shifting=True,
        time_shift_type="exponential",
    )


def tiny_flux2_transformer(seed: int = 0, guidance_embeds: bool = True) -> Any:
    """A ``Flux2Transformer2DModel`` of width 32 (2 heads of 16), one double- and one single-stream
    block, 128 input channels per token, 4-axis rotary positions; ``guidance_embeds``: [dev]'s
    guidance embedding ([klein] has none)."""
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    return Flux2Transformer2DModel(
        in_channels=128,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * TEXT_WIDTH,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    ).eval()


def _mistral3(tokenizer: Any, seed: int) -> Any:
    """A ``Mistral3ForConditionalGeneration`` with a 30-layer text model 16 wide (hidden states 10,
    20 and 30 are read) and a one-layer vision tower (unused for text)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 32,
            "max_position_embeddings": 512,
            "num_attention_heads": 2,
            "num_hidden_layers": 30,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "sliding_window": None,
            "pad_token_id": 0,
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "image_size": 32,
            "patch_size": 8,
        },
        image_token_index=len(tokenizer) - 1,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return Mistral3ForConditionalGeneration(config).eval()


def _qwen3(tokenizer: Any, seed: int) -> Any:
    """A ``Qwen3ForCausalLM`` of 27 layers, 16 wide (hidden states 9, 18 and 27 are read)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=32,
        num_hidden_layers=27,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).eval()


def tiny_flux2_pipeline(seed: int = 0, sample_size: int = SAMPLE_SIZE) -> Any:
    """A ``Flux2Pipeline`` (FLUX.2 [dev]: Mistral 3 text, embedded guidance) whose default image is
    ``sample_size`` latent pixels a side."""
    from diffusers import Flux2Pipeline
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

    tokenizer = chat_tokenizer(MISTRAL_SPECIAL, MISTRAL_TEMPLATE, SYSTEM_MESSAGE.split())
    pipe = Flux2Pipeline(
        scheduler=flux2_scheduler(),
        vae=flux2_vae(seed),
        text_encoder=_mistral3(tokenizer, seed),
        tokenizer=tokenizer,
        transformer=tiny_flux2_transformer(seed, guidance_embeds=True),
    )
    pipe.default_sample_size = sample_size
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux2_klein_pipeline(seed: int = 0, distilled: bool = False, sample_size: int = SAMPLE_SIZE) -> Any:
    """A ``Flux2KleinPipeline`` (FLUX.2 [klein]: Qwen3 text, no guidance embedding): the base model
    with true classifier-free guidance, or with ``distilled`` the step-distilled one (no guidance)."""
    from diffusers import Flux2KleinPipeline

    tokenizer = chat_tokenizer(QWEN_SPECIAL, KLEIN_TEMPLATE)
    pipe = Flux2KleinPipeline(
        scheduler=flux2_scheduler(),
        vae=flux2_vae(seed),
        text_encoder=_qwen3(tokenizer, seed),
        tokenizer=tokenizer,
        transformer=tiny_flux2_transformer(seed, guidance_embeds=False),
        is_distilled=distilled,
    )
    pipe.default_sample_size = sample_size
    pipe.set_progress_bar_config(disable=True)
    return pipe
