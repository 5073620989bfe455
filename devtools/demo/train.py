"""Train the demo model from a seed: ``python -m devtools.demo.train``.

Three phases, all on the CPU (``torch.set_num_threads(2)`` by default):

1. generate the training set (procedural scenes and captions, in memory);
2. train the VAE alone on pixels (random 32 px crops, which cost a quarter of whole images; L1 + MSE,
   tiny KL), then freeze it, encode the whole set once and set ``scaling_factor`` to 1 / std of the
   latents;
3. train the UNet and the text encoder jointly on epsilon prediction (Stable Diffusion's noise
   schedule, min-SNR-5 loss weights, 10% empty captions for classifier-free guidance), keeping an
   exponential moving average (EMA) of both, which is what ships;
4. fine-tune the VAE's decoder alone on whole images from the cached latents (the encoder, and so
   the latent space the UNet learned, stays fixed).

The result is written as a StableDiffusionPipeline folder (default: ``multidiffusion/demo/model``)
with a ``training_log.json`` beside the weights. Checkpoints go to ``multidiffusion/demo/checkpoints``
(git-ignored); ``--resume`` continues from the last one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPTokenizer

from devtools.demo.architecture import (
    DEFAULT_MODEL_DIR,
    build_text_encoder,
    build_unet,
    build_vae,
    count_parameters,
    save_pipeline,
    train_scheduler,
)
from devtools.demo.data import make_dataset, to_tensor, tokenize
from devtools.demo.tokenizer import write_tokenizer

log = logging.getLogger("devtools.demo.train")

DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parents[2] / "out" / "demo-checkpoints"


@dataclass
class TrainConfig:
    """Everything a run depends on; the defaults produced the shipped weights."""

    output: str = str(DEFAULT_MODEL_DIR)
    seed: int = 0
    num_images: int = 24000
    vae_steps: int = 1000
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    vae_crop: int = 32
    kl_weight: float = 1e-6
    unet_steps: int = 2400
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.998
    decoder_steps: int = 400
    decoder_batch_size: int = 16
    decoder_lr: float = 5e-4
    bf16: bool = True
    threads: int = 2
    checkpoint_dir: str = str(DEFAULT_CHECKPOINT_DIR)
    checkpoint_every: int = 200
    log_every: int = 25


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s")
    )


class Progress:
    """Logs loss, it/s and ETA every ``every`` steps of a phase."""

    def __init__(self, phase: str, start: int, total: int, every: int) -> None:
        self.phase, self.start, self.total, self.every = phase, start, total, every
        self.t0 = time.time()
        self.losses: list[float] = []

    def update(self, step: int, loss: float, extra: str = "") -> None:
        self.losses.append(loss)
        done = step + 1
        if done % self.every and done != self.total:
            return
        elapsed = time.time() - self.t0
        rate = (done - self.start) / max(elapsed, 1e-9)
        eta = (self.total - done) / max(rate, 1e-9)
        recent = float(np.mean(self.losses[-self.every :]))
        log.info(
            "[%s] step %d/%d  loss %.4f  %.2f it/s  elapsed %s  ETA %s%s",
            self.phase,
            done,
            self.total,
            recent,
            rate,
            _fmt(elapsed),
            _fmt(eta),
            extra,
        )


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to 10% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _autocast(enabled: bool) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


class _Clock:
    """Wall time of the whole run, including the segments before a resume."""

    start = time.time()
    prior = 0.0

    @classmethod
    def elapsed(cls) -> float:
        return cls.prior + time.time() - cls.start


def _save_checkpoint(cfg: TrainConfig, state: dict[str, Any]) -> None:
    folder = Path(cfg.checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "last.pt.tmp"
    torch.save({**state, "config": asdict(cfg), "elapsed_s": _Clock.elapsed()}, tmp)
    tmp.replace(folder / "last.pt")
    log.info("checkpoint: %s (phase %s, step %d)", folder / "last.pt", state["phase"], state["step"])


def _random_crops(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """One random ``size`` x ``size`` crop per image (``size`` 0 or >= the image: unchanged)."""
    h, w = x.shape[-2:]
    if size <= 0 or size >= min(h, w):
        return x
    oy = torch.randint(0, h - size + 1, (len(x),), generator=gen).tolist()
    ox = torch.randint(0, w - size + 1, (len(x),), generator=gen).tolist()
    return torch.stack([im[:, y : y + size, x0 : x0 + size] for im, y, x0 in zip(x, oy, ox, strict=True)])


def train_vae(cfg: TrainConfig, images: np.ndarray, resume: dict[str, Any] | None) -> torch.nn.Module:
    """Phase 2a: fit the autoencoder to the images; returns it in eval mode."""
    torch.manual_seed(cfg.seed)
    vae = build_vae()
    # Start near a deterministic autoencoder: log-variance about -8 (posterior std ~0.02) instead of 0,
    # so early reconstructions are not drowned in unit-variance latent noise. Learns several times faster.
    with torch.no_grad():
        vae.quant_conv.bias[vae.config.latent_channels :] = -8.0
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    start = 0
    if resume is not None:
        vae.load_state_dict(resume["vae"])
        if resume["phase"] == "vae":
            opt.load_state_dict(resume["vae_opt"])
            start = resume["step"]
        else:
            start = cfg.vae_steps
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    if start:
        gen.manual_seed(cfg.seed + 1 + start)
    log.info("VAE: %d parameters, %d steps at batch %d", count_parameters(vae), cfg.vae_steps, cfg.vae_batch_size)
    progress = Progress("vae", start, cfg.vae_steps, cfg.log_every)
    vae.train()
    for step in range(start, cfg.vae_steps):
        idx = torch.randint(0, len(images), (cfg.vae_batch_size,), generator=gen)
        x = _random_crops(to_tensor(images[idx.numpy()]), cfg.vae_crop, gen)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.vae_steps, 50, cfg.vae_lr)
        with _autocast(cfg.bf16):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample(generator=gen)).sample
        recon = recon.float()
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        loss = rec + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        progress.update(step, rec.item())
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.vae_steps:
            state = {"phase": "vae", "step": step + 1, "vae": vae.state_dict(), "vae_opt": opt.state_dict()}
            _save_checkpoint(cfg, state)
    if start < cfg.vae_steps:
        state = {"phase": "vae", "step": cfg.vae_steps, "vae": vae.state_dict(), "vae_opt": opt.state_dict()}
        _save_checkpoint(cfg, state)
    vae.eval().requires_grad_(False)
    return vae


@torch.no_grad()
def reconstruction_error(vae: torch.nn.Module, images: np.ndarray) -> dict[str, float]:
    """Mean absolute and squared error of whole-image reconstructions, in [-1, 1] pixel units."""
    x = to_tensor(images)
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    return {"l1": float((recon - x).abs().mean()), "mse": float((recon - x).pow(2).mean())}


@torch.no_grad()
def encode_images(vae: torch.nn.Module, images: np.ndarray, batch: int = 256, bf16: bool = True) -> torch.Tensor:
    """Posterior means of all images, float32 (N, 4, 16, 16), unscaled."""
    out = []
    t0 = time.time()
    for i in range(0, len(images), batch):
        with _autocast(bf16):
            out.append(vae.encode(to_tensor(images[i : i + batch])).latent_dist.mean.float())
        if (i // batch) % 20 == 0:
            done = i + len(out[-1])
            eta = (time.time() - t0) / done * (len(images) - done)
            log.info("[encode] %d/%d  ETA %s", done, len(images), _fmt(eta))
    return torch.cat(out)


def finetune_decoder(
    cfg: TrainConfig,
    vae: torch.nn.Module,
    latents: torch.Tensor,
    images: np.ndarray,
    resume: dict[str, Any] | None,
    carry: dict[str, Any],
) -> list[float]:
    """Phase 4: sharpen the decoder on whole images, decoding the frozen encoder's latents.

    The encoder is untouched, so the latent space (and the UNet trained on it) stays valid; the
    decoder learns from whole 64 px images rather than crops, for more steps than phase 2 could
    afford. ``latents`` are the unscaled posterior means of ``images``; ``carry`` (the UNet phase's
    state) goes into this phase's checkpoints.
    """
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    start = 0
    if resume is not None and resume["phase"] == "decoder":
        opt.load_state_dict(resume["decoder_opt"])
        start = resume["step"]
    gen = torch.Generator().manual_seed(cfg.seed + 4 + start)
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()
    log.info("decoder: %d steps at batch %d on whole images", cfg.decoder_steps, cfg.decoder_batch_size)
    progress = Progress("decoder", start, cfg.decoder_steps, cfg.log_every)
    for step in range(start, cfg.decoder_steps):
        idx = torch.randint(0, len(latents), (cfg.decoder_batch_size,), generator=gen)
        x = to_tensor(images[idx.numpy()])
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.decoder_steps, 20, cfg.decoder_lr)
        with _autocast(cfg.bf16):
            recon = vae.decode(latents[idx]).sample
        recon = recon.float()
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        progress.update(step, loss.item())
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.decoder_steps:
            state = {
                **carry,
                "phase": "decoder",
                "step": step + 1,
                "vae": vae.state_dict(),
                "decoder_opt": opt.state_dict(),
            }
            _save_checkpoint(cfg, state)
    vae.eval().requires_grad_(False)
    return progress.losses


def _snr_weights(scheduler: Any, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min-SNR-gamma loss weights for epsilon prediction (Hang et al. 2023): min(SNR, gamma) / SNR."""
    alphas = scheduler.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / snr


def train_denoiser(
    cfg: TrainConfig,
    latents: torch.Tensor,
    ids: torch.Tensor,
    empty_ids: torch.Tensor,
    resume: dict[str, Any] | None,
    vae_state: dict[str, Any],
    init: tuple[torch.nn.Module, torch.nn.Module] | None = None,
) -> tuple[torch.nn.Module, torch.nn.Module, list[float], dict[str, Any]]:
    """Phase 3: UNet + text encoder on (scaled) latents.

    Returns the EMA copies, the loss curve and the end-of-phase training state (what later
    checkpoints carry). ``vae_state`` (the frozen VAE) goes into checkpoints so that a resumed run
    encodes and decodes the same way. ``init`` (a UNet and text encoder) starts from those weights
    instead of random ones: fine-tuning (``devtools.demo.finetune``).
    """
    torch.manual_seed(cfg.seed + 2)
    unet, text = build_unet(), build_text_encoder()
    if init is not None:
        unet.load_state_dict(init[0].state_dict())
        text.load_state_dict(init[1].state_dict())
    ema_unet, ema_text = build_unet(), build_text_encoder()
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    start = 0
    if resume is not None and resume["phase"] in ("unet", "decoder"):
        unet.load_state_dict(resume["unet"])
        text.load_state_dict(resume["text"])
        ema_unet.load_state_dict(resume["ema_unet"])
        ema_text.load_state_dict(resume["ema_text"])
        opt.load_state_dict(resume["opt"])
        start = resume["step"] if resume["phase"] == "unet" else cfg.unet_steps
    else:
        ema_unet.load_state_dict(unet.state_dict())
        ema_text.load_state_dict(text.state_dict())
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    for p in ema_params:
        p.requires_grad_(False)
    scheduler = train_scheduler()
    gen = torch.Generator().manual_seed(cfg.seed + 3 + start)
    log.info(
        "UNet: %d parameters, text encoder: %d parameters; %d steps at batch %d",
        count_parameters(unet),
        count_parameters(text),
        cfg.unet_steps,
        cfg.batch_size,
    )
    progress = Progress("unet", start, cfg.unet_steps, cfg.log_every)
    unet.train()
    text.train()
    for step in range(start, cfg.unet_steps):
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=gen)
        x0 = latents[idx]
        tokens = ids[idx].clone()
        drop = torch.rand(cfg.batch_size, generator=gen) < cfg.caption_dropout
        tokens[drop] = empty_ids
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=gen)
        xt = scheduler.add_noise(x0, noise, t)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.unet_steps, cfg.warmup_steps, cfg.lr)
        with _autocast(cfg.bf16):
            states = text(tokens)[0]
            pred = unet(xt, t, states).sample
        per_sample = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * _snr_weights(scheduler, t, cfg.min_snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        progress.update(step, per_sample.mean().item())
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.unet_steps:
            state = {
                "phase": "unet",
                "step": step + 1,
                "unet": unet.state_dict(),
                "text": text.state_dict(),
                "ema_unet": ema_unet.state_dict(),
                "ema_text": ema_text.state_dict(),
                "opt": opt.state_dict(),
                "vae": vae_state,
            }
            _save_checkpoint(cfg, state)
    if start >= cfg.unet_steps:  # resumed after this phase: keep the checkpoint's training state
        assert resume is not None
        state = {k: resume[k] for k in ("unet", "text", "ema_unet", "ema_text", "opt")}
    return ema_unet.eval(), ema_text.eval(), progress.losses, state


def run(cfg: TrainConfig, resume_path: str | None = None) -> Path:
    """Train everything and write the pipeline folder; returns its path."""
    torch.set_num_threads(cfg.threads)
    t_start = _Clock.start = time.time()
    resume = None
    if resume_path:
        path = Path(cfg.checkpoint_dir) / "last.pt" if resume_path == "auto" else Path(resume_path)
        resume = torch.load(path, map_location="cpu", weights_only=False)
        _Clock.prior = float(resume.get("elapsed_s", 0.0))
        log.info("resuming from %s (phase %s, step %d)", path, resume["phase"], resume["step"])
    timings: dict[str, float] = {}

    t0 = time.time()
    images, captions = make_dataset(cfg.seed, cfg.num_images)
    timings["data_s"] = time.time() - t0
    log.info("data: %d scenes in %.1fs; e.g. %r", len(images), timings["data_s"], captions[:3])

    t0 = time.time()
    vae = train_vae(cfg, images, resume)
    timings["vae_s"] = time.time() - t0
    vae_error = reconstruction_error(vae, make_dataset(cfg.seed + 1000, 128)[0])
    log.info("VAE reconstruction on held-out scenes: L1 %.4f, MSE %.5f", vae_error["l1"], vae_error["mse"])

    t0 = time.time()
    latent_cache = Path(cfg.checkpoint_dir) / "latents.pt"
    vae_done = resume is not None and (resume["phase"] != "vae" or resume["step"] >= cfg.vae_steps)
    if vae_done and latent_cache.exists():  # encoded by this very VAE before the resume
        latents = torch.load(latent_cache)
    else:
        latents = encode_images(vae, images, bf16=cfg.bf16)
        Path(cfg.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        torch.save(latents, latent_cache)
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    latents = latents * scale
    timings["encode_s"] = time.time() - t0
    log.info("latents: std %.4f -> scaling_factor %.4f, mean after scaling %.3f", 1 / scale, scale, latents.mean())

    tok_dir = write_tokenizer(Path(cfg.checkpoint_dir) / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    ids = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])[0]

    t0 = time.time()
    unet, text, losses, carry = train_denoiser(cfg, latents, ids, empty_ids, resume, vae.state_dict())
    timings["unet_s"] = time.time() - t0

    t0 = time.time()
    decoder_losses = finetune_decoder(cfg, vae, latents / scale, images, resume, carry)
    timings["decoder_s"] = time.time() - t0
    decoder_error = reconstruction_error(vae, make_dataset(cfg.seed + 1000, 128)[0])
    log.info("after decoder fine-tuning: L1 %.4f, MSE %.5f", decoder_error["l1"], decoder_error["mse"])

    out = save_pipeline(cfg.output, vae, unet, text)
    timings["total_s"] = time.time() - t_start
    record = {
        "config": asdict(cfg),
        "resumed_from": resume_path,
        "wall_time_s": {k: round(v, 1) for k, v in timings.items()},
        "wall_time_including_resumed_segments_s": round(_Clock.elapsed(), 1),
        "threads": torch.get_num_threads(),
        "vae_scaling_factor": scale,
        "vae_reconstruction": {"after_vae_phase": vae_error, "after_decoder_finetuning": decoder_error},
        "parameters": {
            "unet": count_parameters(unet),
            "text_encoder": count_parameters(text),
            "vae": count_parameters(vae),
        },
        "final_unet_loss_avg100": float(np.mean(losses[-100:])) if losses else None,
        "final_decoder_loss_avg100": float(np.mean(decoder_losses[-100:])) if decoder_losses else None,
        "torch": torch.__version__,
    }
    (out / "training_log.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info(
        "wrote %s in %s total (%s)",
        out,
        _fmt(timings["total_s"]),
        ", ".join(f"{k} {_fmt(v)}" for k, v in timings.items()),
    )
    return out


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, str | None]:
    """Command-line options; every TrainConfig field has a flag."""
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m devtools.demo.train", description=__doc__.split("\n")[0])
    p.add_argument("--output", default=d.output, help="pipeline folder to write (default: the shipped model)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-images", type=int, default=d.num_images, help="scenes pre-generated into memory")
    p.add_argument("--vae-steps", type=int, default=d.vae_steps)
    p.add_argument("--vae-batch-size", type=int, default=d.vae_batch_size)
    p.add_argument("--vae-lr", type=float, default=d.vae_lr)
    p.add_argument("--vae-crop", type=int, default=d.vae_crop, help="train the VAE on random crops (0: whole)")
    p.add_argument("--unet-steps", type=int, default=d.unet_steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--caption-dropout", type=float, default=d.caption_dropout)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--decoder-steps", type=int, default=d.decoder_steps, help="decoder fine-tuning (0: none)")
    p.add_argument("--decoder-batch-size", type=int, default=d.decoder_batch_size)
    p.add_argument("--decoder-lr", type=float, default=d.decoder_lr)
    p.add_argument("--no-bf16", action="store_true", help="train in float32 instead of bfloat16 autocast")
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--checkpoint-dir", default=d.checkpoint_dir)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="continue from a checkpoint (default: <checkpoint-dir>/last.pt)",
    )
    a = p.parse_args(argv)
    cfg = TrainConfig(
        output=a.output,
        seed=a.seed,
        num_images=a.num_images,
        vae_steps=a.vae_steps,
        vae_batch_size=a.vae_batch_size,
        vae_lr=a.vae_lr,
        vae_crop=a.vae_crop,
        unet_steps=a.unet_steps,
        batch_size=a.batch_size,
        lr=a.lr,
        caption_dropout=a.caption_dropout,
        ema_decay=a.ema_decay,
        decoder_steps=a.decoder_steps,
        decoder_batch_size=a.decoder_batch_size,
        decoder_lr=a.decoder_lr,
        bf16=not a.no_bf16,
        threads=a.threads,
        checkpoint_dir=a.checkpoint_dir,
        checkpoint_every=a.checkpoint_every,
        log_every=a.log_every,
    )
    return cfg, a.resume


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m devtools.demo.train``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg, resume = parse_args(argv)
    if "OMP_WAIT_POLICY" not in os.environ:
        log.warning("OMP_WAIT_POLICY is not set: on a shared CPU, OMP_WAIT_POLICY=PASSIVE runs several times faster")
    run(cfg, resume)


if __name__ == "__main__":
    main()
