"""Fine-tune the demo VAE's decoder against its frame: ``python -m devtools.demo.border``.

The demo VAE (and every convolutional decoder) pads its feature maps with zeros, so the outermost
pixel rows and columns of a decode are computed from a half-empty neighbourhood. Trained only on
whole 64 px images, the demo decoder learnt to draw the landscape's edges with a 1-3 px band of
other colour (the "frame"). This script fine-tunes the decoder (and ``post_quant_conv``) alone, so
the encoder, and with it the latent space the UNet and the demo ControlNet learnt, stays fixed:

- **whole images** (``--num-whole`` native 64 px scenes encoded alone: their latents carry the
  encoder's own framed edges, as the UNet's do, since it learnt them) and, with ``--whole-share``
  below 1, **crops that move the image's edges**: latent crops of a random size (8 to 16 latent
  pixels high, 8 to 32 wide) at random offsets of encoded 64 x ``--scene-width`` scenes, compared
  with the same crops of the pixels, so that a crop's edges fall inside content as a panorama
  window's do;
- **a loss that weights the border**: L1 + MSE per pixel, times ``--border-weight`` on the
  ``--border`` outermost pixel rows and columns (1 elsewhere), normalised by the weights' sum.

:func:`edge_to_inside` is the frame's measure (the benchmark ``demo-border`` uses it too). The run
records its configuration, wall time and held-out reconstruction errors (whole, inside, border)
before and after in the model folder's ``training_log.json`` under ``"decoder_border"``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from devtools.demo.architecture import DEFAULT_MODEL_DIR
from devtools.demo.data import to_tensor
from devtools.demo.scenes import generate

__all__ = ["BorderConfig", "edge_to_inside", "reconstruction_errors", "run"]

log = logging.getLogger("devtools.demo.border")


def edge_to_inside(x: torch.Tensor) -> dict[str, dict[str, float]]:
    """The frame of images or latents ``x`` (B, C, H, W), per side.

    For the top side: edge = mean over images, channels and columns of |x[0] - x[1]| (the step from
    the outermost row into its neighbour); inside = the same mean over the steps between adjacent
    rows r, r+1 for 1 <= r <= H - 3 (every row step that touches neither outermost row). Bottom,
    left and right likewise (columns for left and right). ``ratio`` = edge / inside: about 1 when
    the outermost row continues the picture like any other, well above 1 for a frame. Means are
    taken over the whole batch before the ratio (a ratio of means, stable on flat images).
    Needs H, W >= 4.
    """
    x = x.detach().float()
    if x.ndim != 4 or min(x.shape[-2:]) < 4:
        raise ValueError(f"x must be (B, C, H, W) with H, W >= 4, got shape {tuple(x.shape)}")
    rows = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(0, 1, 3))  # step r -> r+1
    cols = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(0, 1, 2))
    out = {}
    for side, steps, k in (("top", rows, 0), ("bottom", rows, -1), ("left", cols, 0), ("right", cols, -1)):
        edge, inside = float(steps[k]), float(steps[1:-1].mean())
        out[side] = {"edge": edge, "inside": inside, "ratio": edge / inside if inside > 0 else math.inf}
    return out


@dataclass
class BorderConfig:
    """Everything a run depends on; the defaults produced the shipped decoder."""

    model: str = str(DEFAULT_MODEL_DIR)
    output: str = str(DEFAULT_MODEL_DIR)
    seed: int = 7
    num_images: int = 1500
    num_whole: int = 1500
    scene_width: int = 128
    steps: int = 300
    batch_size: int = 8
    lr: float = 3e-4
    warmup: int = 20
    border: int = 2
    border_weight: float = 8.0
    whole_share: float = 1.0
    held_out: int = 256
    threads: int = 1
    log_every: int = 25


def _weights(h: int, w: int, border: int, weight: float) -> torch.Tensor:
    m = torch.ones(h, w)
    if border > 0:
        m[:border], m[-border:], m[:, :border], m[:, -border:] = weight, weight, weight, weight
    return m


@torch.no_grad()
def reconstruction_errors(vae: torch.nn.Module, x: torch.Tensor, border: int = 3) -> dict[str, float]:
    """L1 and MSE (pixels in [-1, 1]) of whole decodes of ``x``'s posterior means: over every pixel,
    over the inside (``border`` px from every edge excluded) and over the border band alone."""
    recon = torch.cat([vae.decode(vae.encode(c).latent_dist.mean).sample for c in x.split(64)]).clamp(-1, 1)
    err = recon - x
    band = _weights(*x.shape[-2:], border, 0.0) == 0
    out = {}
    for name, sel in (("all", slice(None)), ("inside", ~band), ("border", band)):
        e = err[..., sel] if name != "all" else err
        out[f"l1_{name}"], out[f"mse_{name}"] = float(e.abs().mean()), float(e.pow(2).mean())
    out["edge_to_inside"] = {k: v["ratio"] for k, v in edge_to_inside((recon + 1) * 127.5).items()}
    return out


def _lr_at(step: int, cfg: BorderConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _batch(
    cfg: BorderConfig,
    wide: tuple[torch.Tensor, torch.Tensor],
    whole: tuple[torch.Tensor, torch.Tensor],
    f: int,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, pixels) of one batch, one size per batch: with probability ``whole_share`` whole
    native images encoded alone (their latents carry the encoder's framed edges, as the UNet's do),
    else crops of random size and offset of the wide scenes' latents and the same crops of their pixels."""
    if torch.rand(1, generator=gen).item() < cfg.whole_share:
        idx = torch.randint(0, len(whole[0]), (cfg.batch_size,), generator=gen)
        return whole[0][idx], whole[1][idx]
    latents, pixels = wide
    h_lat, w_lat = latents.shape[-2:]
    idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=gen)
    h = int(torch.randint(h_lat // 2, h_lat + 1, (1,), generator=gen))
    w = int(torch.randint(h_lat // 2, min(2 * h_lat, w_lat) + 1, (1,), generator=gen))
    tops = torch.randint(0, h_lat - h + 1, (cfg.batch_size,), generator=gen).tolist()
    lefts = torch.randint(0, w_lat - w + 1, (cfg.batch_size,), generator=gen).tolist()
    z = torch.stack([latents[i, :, t : t + h, s : s + w] for i, t, s in zip(idx.tolist(), tops, lefts, strict=True)])
    x = torch.stack(
        [
            pixels[i, :, t * f : (t + h) * f, s * f : (s + w) * f]
            for i, t, s in zip(idx.tolist(), tops, lefts, strict=True)
        ]
    )
    return z, x


def run(cfg: BorderConfig) -> dict:
    """Fine-tune, write the decoder into ``cfg.output``'s vae folder (float16 safetensors, config
    unchanged) and its record into ``training_log.json``; returns the record."""
    from diffusers import AutoencoderKL

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    load_start, t_start = os.getloadavg(), time.time()
    vae = AutoencoderKL.from_pretrained(str(Path(cfg.model) / "vae"), torch_dtype=torch.float32).eval()
    vae.requires_grad_(False)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    rng = np.random.default_rng(cfg.seed)
    images, _, _ = generate(rng, cfg.num_images if cfg.whole_share < 1 else 1, 64, cfg.scene_width)
    squares, _, _ = generate(rng, cfg.num_whole, 64)
    held, _, _ = generate(np.random.default_rng(cfg.seed + 1000), cfg.held_out, 64)
    held_x = to_tensor(held)
    data_s = time.time() - t_start
    t0 = time.time()
    pixels, square_pixels = to_tensor(images), to_tensor(squares)
    with torch.no_grad():  # the frozen encoder's posterior means, once
        latents = torch.cat([vae.encode(c).latent_dist.mean for c in pixels.split(128)])
        square_latents = torch.cat([vae.encode(c).latent_dist.mean for c in square_pixels.split(128)])
    encode_s = time.time() - t0
    before = reconstruction_errors(vae, held_x, cfg.border)
    log.info("before: %s", before)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    vae.decoder.train()
    losses: list[float] = []
    t0 = time.time()
    for step in range(cfg.steps):
        z, x = _batch(cfg, (latents, pixels), (square_latents, square_pixels), f, gen)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        recon = vae.decode(z).sample
        w = _weights(*x.shape[-2:], cfg.border, cfg.border_weight)
        per_pixel = (recon - x).abs() + (recon - x).pow(2)
        loss = (per_pixel * w).sum() / (w.sum() * x.shape[0] * x.shape[1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            rate = (step + 1) / (time.time() - t0)
            log.info(
                "[border] step %d/%d loss %.4f  %.2f it/s  ETA %.0fs",
                step + 1,
                cfg.steps,
                float(np.mean(losses[-cfg.log_every :])),
                rate,
                (cfg.steps - step - 1) / rate,
            )
    train_s = time.time() - t0
    vae.eval().requires_grad_(False)
    after = reconstruction_errors(vae, held_x, cfg.border)
    log.info("after: %s", after)
    record = {
        "config": asdict(cfg),
        "wall_time_s": {
            "data_s": round(data_s, 1),
            "encode_s": round(encode_s, 1),
            "train_s": round(train_s, 1),
            "total_s": round(time.time() - t_start, 1),
        },
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "held_out_reconstruction": {"before": before, "after": after},
        "final_loss_avg100": float(np.mean(losses[-100:])),
        "torch": torch.__version__,
    }
    _save(vae, Path(cfg.output), record)
    return record


def _save(vae: torch.nn.Module, output: Path, record: dict) -> None:
    """The VAE's weights as float16 safetensors in ``output/vae`` (config untouched), and the record
    under ``"decoder_border"`` in ``output/training_log.json``."""
    folder = output / "vae"
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in copy.deepcopy(vae).half().state_dict().items()}
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    if not (folder / "config.json").exists():
        vae.save_config(str(folder))
    log_path = output / "training_log.json"
    full = json.loads(log_path.read_text()) if log_path.is_file() else {}
    full["decoder_border"] = record
    log_path.write_text(json.dumps(full, indent=2) + "\n")
    log.info("wrote %s and %s", folder, log_path)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m devtools.demo.border``."""
    d = BorderConfig()
    p = argparse.ArgumentParser(prog="python -m devtools.demo.border", description=__doc__.split("\n")[0])
    for name, value in asdict(d).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run(BorderConfig(**vars(p.parse_args(argv))))


if __name__ == "__main__":
    main()
