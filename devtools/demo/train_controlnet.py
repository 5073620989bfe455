"""Train the demo ControlNet: ``python -m devtools.demo.train_controlnet``.

The procedural generator knows every scene's layout, so the control image comes for free: the
scene's class map (``scenes.render_layout``: sky, sun, moon, mountains, hills, ground, house, tree,
painted in ``LAYOUT_PALETTE``). The training scenes use the free layout (``sample_scene(rng,
free_layout=True)``): the horizon anywhere in [0.42, 0.8] of the height and waving across the width,
so that the control map, not the demo model's habit (a horizon at 0.58-0.66), decides where it is.

The ControlNet starts as a copy of the demo UNet's encoder (``ControlNetModel.from_unet``, a
conditioning embedding that down-samples by 4 like the demo VAE) and learns against the frozen UNet
and text encoder: epsilon prediction, min-SNR-5 weights, 10% empty captions, EMA. Written to
``multidiffusion/demo/controlnet`` (float16 .safetensors) with a ``training_log.json``.

**Tile ControlNet** (``--control tile``, written to ``multidiffusion/demo/controlnet-tile``): the
control image is the training image itself, degraded as an upscaler's output is: down-sampled by a
factor drawn from [2, 4] (area average), up-sampled back (bicubic) and sometimes blurred (Gaussian,
σ up to 1 px), drawn afresh at every step (:func:`tile_degrade`). That is what a Tile ControlNet sees
in a 2x upscale: each window's crop of the resized input. It learns to put back the detail the
degradation removed while keeping the layout and colours, so an upscale follows its input instead of
the model's habit. Half the captions are empty (``--caption-dropout`` 0.5 by default for tiles):
upscales usually run with an empty or generic prompt, and the control image alone must carry it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPTokenizer

from devtools.demo.architecture import DEFAULT_MODEL_DIR, count_parameters, train_scheduler
from devtools.demo.captions import caption_scene
from devtools.demo.data import to_tensor, tokenize
from devtools.demo.scenes import layout_image, render_layout, render_scene, sample_scene
from devtools.demo.train import Progress, _lr_at, _snr_weights, encode_images

log = logging.getLogger("devtools.demo.train_controlnet")

DEFAULT_CONTROLNET_DIR = DEFAULT_MODEL_DIR.parent / "controlnet"
DEFAULT_TILE_DIR = DEFAULT_MODEL_DIR.parent / "controlnet-tile"
CONTROLS = {
    "layout": "class map of the scene layout (devtools.demo.scenes.render_layout / layout_image)",
    "tile": "the image itself, down-sampled 2-4x (area), up-sampled back (bicubic), sometimes blurred (tile_degrade)",
}
CONDITIONING_CHANNELS = (16, 32, 64)  # 64 px -> 16 latents: down-sampling 4, as the demo VAE


def make_layout_dataset(seed: int, n: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n`` free-layout scenes: images and control images (n, size, size, 3) uint8, and captions."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    controls = np.empty_like(images)
    captions = []
    for i in range(n):
        scene = sample_scene(rng, free_layout=True)
        images[i], labels = render_layout(scene, size)
        controls[i] = layout_image(labels)
        captions.append(caption_scene(scene, rng))
    return images, controls, captions


def tile_degrade(images: torch.Tensor, generator: torch.Generator, max_blur: float = 1.0) -> torch.Tensor:
    """A Tile ControlNet's control images from ``images`` (B, 3, H, W) in [0, 1]: each down-sampled by
    its own factor in [2, 4] (area average: the detail a smaller source never had), up-sampled back
    to (H, W) (bicubic, as upscalers' filters do) and, for half of them, blurred by a Gaussian of σ
    in (0, ``max_blur``] px. Clamped to [0, 1]."""
    import torch.nn.functional as F

    b, _, h, w = images.shape
    factors = torch.empty(b).uniform_(2.0, 4.0, generator=generator)
    sigmas = torch.empty(b).uniform_(0.0, max_blur, generator=generator) * (torch.rand(b, generator=generator) < 0.5)
    out = torch.empty_like(images)
    for i in range(b):
        small = (max(1, round(h / float(factors[i]))), max(1, round(w / float(factors[i]))))
        x = F.interpolate(images[i : i + 1], size=small, mode="area")
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
        sigma = float(sigmas[i])
        if sigma > 0.05:
            r = torch.arange(-2, 3, dtype=x.dtype)
            k = torch.exp(-(r**2) / (2 * sigma**2))
            k = k / k.sum()
            x = F.pad(x, (2, 2, 2, 2), mode="replicate")
            x = F.conv2d(x, k.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
            x = F.conv2d(x, k.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)
        out[i] = x[0]
    return out.clamp_(0, 1)


def build_controlnet(unet: torch.nn.Module) -> torch.nn.Module:
    """A ControlNet copied from the demo UNet's encoder, for 3-channel control images."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS)


def run(args: argparse.Namespace) -> Path:
    from diffusers import ControlNetModel, StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    t_start = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(str(args.model), torch_dtype=torch.float32)
    unet, text, vae = pipe.unet.eval(), pipe.text_encoder.eval(), pipe.vae.eval()
    for m in (unet, text, vae):
        m.requires_grad_(False)
    t0 = time.time()
    images, controls, captions = make_layout_dataset(args.seed, args.num_images)
    latents = encode_images(vae, images, bf16=False) * vae.config.scaling_factor
    tile = args.control == "tile"
    # [0, 1], as the pipelines feed control images; a tile's are degraded afresh at each step
    cond = to_tensor(images if tile else controls).add_(1).div_(2)
    tokenizer = CLIPTokenizer.from_pretrained(str(Path(args.model) / "tokenizer"))
    ids = tokenize(tokenizer, captions)
    empty = tokenize(tokenizer, [""])[0]
    with torch.no_grad():  # the text encoder is frozen: its states once
        states = torch.cat([text(ids[i : i + 512])[0] for i in range(0, len(ids), 512)])
        empty_states = text(empty[None])[0][0]
    data_s = time.time() - t0
    log.info("data: %d free-layout scenes, latents and text states in %.1fs", len(images), data_s)

    torch.manual_seed(args.seed)
    net = build_controlnet(unet)
    ema = build_controlnet(unet)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    params = list(net.parameters())
    ema_params = list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    scheduler = train_scheduler()
    gen = torch.Generator().manual_seed(args.seed + 1)
    progress = Progress("controlnet", 0, args.steps, args.log_every)
    net.train()
    t0 = time.time()
    for step in range(args.steps):
        idx = torch.randint(0, len(latents), (args.batch_size,), generator=gen)
        x0, c, s = latents[idx], cond[idx], states[idx].clone()
        if tile:
            c = tile_degrade(c, gen)
        s[torch.rand(args.batch_size, generator=gen) < args.caption_dropout] = empty_states
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch_size,), generator=gen)
        xt = scheduler.add_noise(x0, noise, t)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, args.steps, args.warmup, args.lr)
        down, mid = net(xt, t, s, controlnet_cond=c, return_dict=False)
        pred = unet(xt, t, s, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * _snr_weights(scheduler, t, 5.0)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        progress.update(step, per_sample.mean().item())
    train_s = time.time() - t0
    out = Path(args.output)
    ema.to(torch.float16).save_pretrained(str(out), safe_serialization=True)
    ControlNetModel.from_pretrained(str(out))  # loads back
    record = {
        "base_model": os.path.relpath(args.model),
        "config": {k: v for k, v in vars(args).items() if k not in ("output", "model")},
        "control": CONTROLS[args.control],
        "conditioning_embedding_out_channels": list(CONDITIONING_CHANNELS),
        "parameters": count_parameters(ema),
        "wall_time_s": {
            "data_s": round(data_s, 1),
            "train_s": round(train_s, 1),
            "total_s": round(time.time() - t_start, 1),
        },
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "final_loss_avg50": float(np.mean(progress.losses[-50:])) if progress.losses else None,
        "torch": torch.__version__,
    }
    (out / "training_log.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %s in %.0fs (training %.0fs)", out, time.time() - t_start, train_s)
    return out


def _upscale_scores(image, source, truth: np.ndarray) -> tuple[float, float]:
    """Mean |difference| (0-255) of ``image`` down-sampled to ``source``'s size (area) against it, and
    of ``image`` against ``truth``."""
    from PIL import Image

    big = np.asarray(image.convert("RGB"), dtype=np.float64)
    small = np.asarray(image.convert("RGB").resize(source.size, Image.Resampling.BOX), dtype=np.float64)
    return float(np.abs(small - np.asarray(source, dtype=np.float64)).mean()), float(np.abs(big - truth).mean())


def evaluate_tile(seeds: int = 4, strength: float = 0.5, steps: int = 20, threads: int = 1) -> dict:
    """What the demo Tile ControlNet does to a 2x upscale: ``seeds`` scenes rendered at 128 x 192 (the
    truth) and at 64 x 96 (the source), the source upscaled 2x by the library (lanczos, then re-worked
    from ``strength`` over 64 px windows at stride 32 px, the scene's caption as prompt) without and with ``demo-tile``,
    from fresh noise and from its noise inversion. Scores, mean |difference| in 0-255 units: the
    result down-sampled 2x (area) against the source, and the result against the truth; lanczos alone
    as the floor."""
    from PIL import Image

    from multidiffusion import MultiDiffusion

    torch.set_num_threads(threads)
    models = {"without": MultiDiffusion.from_pretrained("demo"), "demo-tile": None}
    models["demo-tile"] = MultiDiffusion.from_pretrained("demo", controlnet="demo-tile")
    rng = np.random.default_rng(1234)
    rows: dict[str, list[tuple[float, float]]] = {}
    for seed in range(seeds):
        scene = sample_scene(rng)
        truth = render_scene(scene, 128, 192).astype(np.float64)
        source = Image.fromarray(render_scene(scene, 64, 96))
        prompt = caption_scene(scene, rng)

        lanczos = source.resize((192, 128), Image.Resampling.LANCZOS)
        rows.setdefault("lanczos only", []).append(_upscale_scores(lanczos, source, truth))
        for name, md in models.items():
            for inversion in (False, True):
                out = md.upscale(
                    source, scale=2, prompt=prompt, strength=strength, num_inference_steps=steps,
                    noise_inversion=inversion, stride=8, generator=torch.Generator().manual_seed(seed),
                )  # fmt: skip
                key = f"{name} ControlNet, {'noise inversion' if inversion else 'fresh noise'}"
                rows.setdefault(key, []).append(_upscale_scores(out.images[0], source, truth))
        log.info("scene %d of %d scored", seed + 1, seeds)
    return {
        key: {
            "vs_source_downscaled": float(np.mean([r[0] for r in v])),
            "vs_truth": float(np.mean([r[1] for r in v])),
            "per_scene": [[round(a, 2), round(b, 2)] for a, b in v],
        }
        for key, v in rows.items()
    }


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m devtools.demo.train_controlnet``."""
    p = argparse.ArgumentParser(prog="python -m devtools.demo.train_controlnet", description=__doc__)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="the demo pipeline folder it controls")
    p.add_argument("--control", choices=tuple(CONTROLS), default="layout", help="what the control image is")
    p.add_argument("--output", default=None, help="default: multidiffusion/demo/controlnet (-tile for tiles)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=8000)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--caption-dropout", type=float, default=None, help="default: 0.1 (layout), 0.5 (tile)")
    p.add_argument("--ema-decay", type=float, default=0.99)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--evaluate-tile", action="store_true", help="only score the shipped demo-tile on 2x upscales")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = p.parse_args(argv)
    if args.evaluate_tile:
        print(json.dumps(evaluate_tile(threads=args.threads), indent=2))
        return
    if args.output is None:
        args.output = str(DEFAULT_TILE_DIR if args.control == "tile" else DEFAULT_CONTROLNET_DIR)
    if args.caption_dropout is None:
        args.caption_dropout = 0.5 if args.control == "tile" else 0.1
    run(args)


if __name__ == "__main__":
    main()
