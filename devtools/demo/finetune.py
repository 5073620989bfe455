"""Fine-tune the shipped demo model on a new data mix: ``python -m devtools.demo.finetune``.

Starts from the UNet and text encoder in ``--model`` (default: the shipped folder), keeps its VAE
(and so the latent space) fixed, and trains both jointly as ``devtools.demo.train`` does (epsilon
prediction, min-SNR-5, 10% empty captions, EMA), on landscapes mixed with isolated subjects on plain
colours (``--isolated-share``; ``scenes.sample_isolated``). Writes the pipeline folder to ``--output``
with a ``training_log.json`` that records the base model's log, this run's configuration, wall time and
the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPTokenizer

from devtools.demo.architecture import DEFAULT_MODEL_DIR, count_parameters, save_pipeline
from devtools.demo.data import tokenize
from devtools.demo.scenes import ISOLATED_KINDS, generate
from devtools.demo.train import TrainConfig, encode_images, train_denoiser

log = logging.getLogger("devtools.demo.finetune")


def run(args: argparse.Namespace) -> Path:
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    t_start = time.time()
    base = Path(args.model)
    pipe = StableDiffusionPipeline.from_pretrained(str(base), torch_dtype=torch.float32)
    cfg = TrainConfig(
        output=args.output,
        seed=args.seed,
        num_images=args.num_images,
        unet_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup,
        ema_decay=args.ema_decay,
        threads=args.threads,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=10**9,
        log_every=args.log_every,
        vae_steps=0,
        decoder_steps=0,
        bf16=args.bf16,
    )
    t0 = time.time()
    images, captions, scenes = generate(
        np.random.default_rng(args.seed),
        args.num_images,
        isolated_share=args.isolated_share,
        isolated_kinds=tuple(args.isolated_kinds),
    )
    isolated = sum(bool(s.isolated) for s in scenes)
    data_s = time.time() - t0
    log.info("data: %d scenes (%d isolated) in %.1fs", len(images), isolated, data_s)
    t0 = time.time()
    vae = pipe.vae.eval()
    latents = encode_images(vae, images, bf16=args.bf16) * vae.config.scaling_factor
    encode_s = time.time() - t0
    tokenizer = CLIPTokenizer.from_pretrained(str(base / "tokenizer"))
    ids = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])[0]
    t0 = time.time()
    unet, text, losses, _ = train_denoiser(
        cfg, latents, ids, empty_ids, None, vae.state_dict(), init=(pipe.unet, pipe.text_encoder)
    )
    unet_s = time.time() - t0
    out = save_pipeline(args.output, vae, unet, text)
    base_log = base / "training_log.json"
    record = {
        "fine_tuned_from": json.loads(base_log.read_text()) if base_log.is_file() else str(base),
        "fine_tuning": {
            "config": {**asdict(cfg), "isolated_share": args.isolated_share, "isolated_kinds": args.isolated_kinds},
            "isolated_scenes": isolated,
            "wall_time_s": {
                "data_s": round(data_s, 1),
                "encode_s": round(encode_s, 1),
                "unet_s": round(unet_s, 1),
                "total_s": round(time.time() - t_start, 1),
            },
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "parameters": {"unet": count_parameters(unet), "text_encoder": count_parameters(text)},
            "final_unet_loss_avg100": float(np.mean(losses[-100:])) if losses else None,
            "torch": torch.__version__,
        },
    }
    (out / "training_log.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %s in %.0fs (UNet %.0fs)", out, time.time() - t_start, unet_s)
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m devtools.demo.finetune``."""
    p = argparse.ArgumentParser(prog="python -m devtools.demo.finetune", description=__doc__)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="the pipeline folder to start from")
    p.add_argument("--output", default=str(DEFAULT_MODEL_DIR), help="where to write the fine-tuned folder")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--num-images", type=int, default=12000)
    p.add_argument("--isolated-share", type=float, default=0.3)
    p.add_argument(
        "--isolated-kinds",
        nargs="+",
        default=list(ISOLATED_KINDS),
        choices=list(ISOLATED_KINDS),
        help="which isolated subjects to draw (default: all)",
    )
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--ema-decay", type=float, default=0.99)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--bf16", action="store_true", help="bfloat16 autocast (12x slower than float32 on CPUs without bf16 units)"
    )
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--checkpoint-dir", default=str(Path(__file__).resolve().parents[2] / "out" / "demo-finetune"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
