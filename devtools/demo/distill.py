"""Distil the shipped demo into a few-step LCM-LoRA: ``python -m devtools.demo.distill``.

Latent consistency distillation (Luo et al. 2023, "Latent Consistency Models"; the LoRA form of
"LCM-LoRA", 2023). The teacher is the shipped demo UNet with classifier-free guidance; the student is
the same UNet plus a low-rank adapter (``W + B A`` on the attention, feed-forward, resnet convolutions,
resamplers and time projections, alpha = rank so the scale is 1). Per step, on the demo's own training
scenes (cached latents, as ``finetune.py`` and ``train_controlnet.py`` do):

1. pick a boundary ``n`` of the skipping-step DDIM solver (``--solver-steps`` 50 over 1000 training
   steps: k = 20, boundaries ``t_n = 20 n + 19``) and noise the latents to ``x_{t_{n+k}}``;
2. the teacher (no LoRA) takes one guided DDIM step ``x_{t_{n+k}} -> x_{t_n}`` with
   ``eps = eps_u + w (eps_c - eps_u)`` (LCM's Eq. 9 solver, applied to the guided estimate);
3. the student's consistency function ``f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t)`` at
   ``(x_{t_{n+k}}, t_{n+k})`` is pulled towards the EMA target network's ``f(x_{t_n}, t_n)``
   (LCM's Eq. 8, a pseudo-Huber loss), with LCMScheduler's boundary scalings ``c_skip = s^2 / ((10 t)^2
   + s^2)``, ``c_out = 10 t / sqrt((10 t)^2 + s^2)``, ``s = 0.5`` (so ``f(x, 0) = x``).

The guidance is fixed (``--guidance 7.5``, the demo's usual scale in diffusers' convention): a LoRA has
no guidance embedding, so sampling ``w`` from a range would teach one average of the guided teachers;
fixing it at the scale the base demo is measured with makes the student's one-evaluation steps
(``guidance_scale=1``) imitate the 25-step base demo that caption agreement compares against.

Writes ``pytorch_lora_weights.safetensors`` (float16, diffusers' peft key format, so
``StableDiffusionPipeline.load_lora_weights`` reads it), ``scheduler/scheduler_config.json``
(LCMScheduler with the demo's schedule) and ``training_log.json`` into ``--output``, at every checkpoint
(so a stopped run is usable) and at the end.
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

from devtools.demo.architecture import DEFAULT_MODEL_DIR
from devtools.demo.data import tokenize
from devtools.demo.scenes import generate
from devtools.demo.train import Progress, encode_images

log = logging.getLogger("devtools.demo.distill")

DEFAULT_LCM_DIR = DEFAULT_MODEL_DIR.parent / "lcm"
LORA_FILE = "pytorch_lora_weights.safetensors"
# The layers LCM-LoRA adapts in SD 1.5 (diffusers' train_lcm_distill_lora_sd_wds.py), by name suffix.
TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


class LoRA(torch.nn.Module):
    """``base(x) + B(A(x))`` with a second, EMA copy of (A, B) for the target network; ``mode`` picks
    none ("teacher"), the trained pair ("student") or the EMA pair ("target")."""

    def __init__(self, base: torch.nn.Module, rank: int) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.mode = "student"
        self.A, self.B = self._pair(base, rank)
        self.ema_A, self.ema_B = self._pair(base, rank)
        torch.nn.init.kaiming_uniform_(self.A.weight, a=5**0.5)
        torch.nn.init.zeros_(self.B.weight)
        self.ema_A.load_state_dict(self.A.state_dict())
        self.ema_B.load_state_dict(self.B.state_dict())
        self.ema_A.requires_grad_(False)
        self.ema_B.requires_grad_(False)

    @staticmethod
    def _pair(base: torch.nn.Module, rank: int) -> tuple[torch.nn.Module, torch.nn.Module]:
        if isinstance(base, torch.nn.Linear):
            return torch.nn.Linear(base.in_features, rank, bias=False), torch.nn.Linear(
                rank, base.out_features, bias=False
            )
        a = torch.nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False)
        return a, torch.nn.Conv2d(rank, base.out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.mode == "teacher":
            return y
        a, b = (self.A, self.B) if self.mode == "student" else (self.ema_A, self.ema_B)
        return y + b(a(x))


def add_lora(unet: torch.nn.Module, rank: int) -> dict[str, LoRA]:
    """Wrap every targeted Linear / Conv2d of ``unet`` in :class:`LoRA`; returns them by module name."""
    unet.requires_grad_(False)
    found = {
        name: m
        for name, m in unet.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and any(name.endswith(t) for t in TARGETS)
    }
    wrapped = {}
    for name, module in found.items():
        parent_name, _, attr = name.rpartition(".")
        wrapped[name] = LoRA(module, rank)
        setattr(unet.get_submodule(parent_name), attr, wrapped[name])
    return wrapped


def set_mode(loras: dict[str, LoRA], mode: str) -> None:
    for m in loras.values():
        m.mode = mode


def lora_state_dict(loras: dict[str, LoRA]) -> dict[str, torch.Tensor]:
    """The student's pairs in diffusers' peft format (``unet.<module>.lora_A.weight``), float16."""
    out = {}
    for name, m in loras.items():
        out[f"unet.{name}.lora_A.weight"] = m.A.weight.detach().to(torch.float16).contiguous()
        out[f"unet.{name}.lora_B.weight"] = m.B.weight.detach().to(torch.float16).contiguous()
    return out


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LCMScheduler's ``c_skip(t), c_out(t)`` (``get_scalings_for_boundary_condition_discrete``)."""
    scaled = t.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip[:, None, None, None], c_out[:, None, None, None]


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    a = alpha_bar[:, None, None, None]
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


def write_output(out: Path, loras: dict[str, LoRA], base_scheduler_config: dict, record: dict) -> None:
    from diffusers import LCMScheduler
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(lora_state_dict(loras), str(out / LORA_FILE))
    LCMScheduler.from_config(base_scheduler_config).save_config(str(out / "scheduler"))
    (out / "training_log.json").write_text(json.dumps(record, indent=2) + "\n")


def run(args: argparse.Namespace) -> Path:
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    load_start, t_start = os.getloadavg(), time.time()
    pipe = StableDiffusionPipeline.from_pretrained(str(args.model), torch_dtype=torch.float32)
    unet, text, vae = (m.eval().requires_grad_(False) for m in (pipe.unet, pipe.text_encoder, pipe.vae))
    t0 = time.time()
    images, captions, _ = generate(
        np.random.default_rng(args.seed), args.num_images, isolated_share=args.isolated_share
    )
    latents = encode_images(vae, images, bf16=False) * vae.config.scaling_factor
    del images
    tokenizer = CLIPTokenizer.from_pretrained(str(Path(args.model) / "tokenizer"))
    ids = tokenize(tokenizer, captions)
    with torch.no_grad():  # the text encoder is frozen: its states once
        states = torch.cat([text(ids[i : i + 512])[0] for i in range(0, len(ids), 512)])
        empty_states = text(tokenize(tokenizer, [""]))[0]
    data_s = time.time() - t0
    log.info("data: %d scenes, latents and text states in %.1fs", len(latents), data_s)

    torch.manual_seed(args.seed)
    loras = add_lora(unet, args.rank)
    params = [p for m in loras.values() for p in (m.A.weight, m.B.weight)]
    ema_params = [p for m in loras.values() for p in (m.ema_A.weight, m.ema_B.weight)]
    n_params = sum(p.numel() for p in params)
    log.info(
        "LoRA rank %d on %d layers: %d parameters (%.2f MB in float16)",
        args.rank,
        len(loras),
        n_params,
        n_params * 2e-6,
    )
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    alphas = pipe.scheduler.alphas_cumprod.float()  # DDIM's training schedule, as the teacher learned it
    k = pipe.scheduler.config.num_train_timesteps // args.solver_steps
    boundaries = torch.arange(1, args.solver_steps + 1) * k - 1  # t_{n+k}: 19, 39, ..., 999
    prev_alphas = torch.cat([alphas[:1], alphas[boundaries[:-1]]])  # alpha_bar at t_n (t_0 -> alphas[0])
    gen = torch.Generator().manual_seed(args.seed + 1)
    progress = Progress("lcm", 0, args.steps, args.log_every)
    history: list[dict] = []
    record_base = {
        "teacher": os.path.relpath(args.model),
        "config": {k_: v for k_, v in vars(args).items() if k_ not in ("output", "model")},
        "method": "latent consistency distillation into a LoRA (LCM-LoRA), skipping-step DDIM solver, "
        "fixed classifier-free guidance, EMA target, pseudo-Huber loss, LCMScheduler boundary scalings",
        "solver": {"k": k, "boundaries": len(boundaries)},
        "lora": {"rank": args.rank, "alpha": args.rank, "layers": len(loras), "parameters": n_params},
        "data_s": round(data_s, 1),
        "load_average_start": load_start,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }

    def save(step: int, train_s: float, finished: bool) -> None:
        record = {
            **record_base,
            "steps_done": step,
            "finished": finished,
            "wall_time_s": {
                "data_s": round(data_s, 1),
                "train_s": round(train_s, 1),
                "total_s": round(time.time() - t_start, 1),
            },
            "steps_per_s": round(step / max(train_s, 1e-9), 4),
            "load_average_end": os.getloadavg(),
            "loss_avg50": float(np.mean(progress.losses[-50:])) if progress.losses else None,
            "losses_every_log": history,
        }
        write_output(Path(args.output), loras, dict(pipe.scheduler.config), record)

    t0 = time.time()
    deadline = t0 + args.max_minutes * 60 if args.max_minutes else float("inf")
    step = 0
    for step in range(args.steps):
        idx = torch.randint(0, len(latents), (args.batch_size,), generator=gen)
        x0, cond = latents[idx], states[idx]
        n = torch.randint(0, args.solver_steps, (args.batch_size,), generator=gen)
        t_start_, t_prev = boundaries[n], (boundaries[n] - k).clamp(min=0)
        noise = torch.randn(x0.shape, generator=gen)
        a_start = alphas[t_start_]
        x_t = a_start.sqrt()[:, None, None, None] * x0 + (1 - a_start).sqrt()[:, None, None, None] * noise
        with torch.no_grad():
            set_mode(loras, "teacher")  # one guided DDIM step t_{n+k} -> t_n
            eps_c, eps_u = unet(
                torch.cat([x_t, x_t]), torch.cat([t_start_, t_start_]), torch.cat([cond, empty_states.expand_as(cond)])
            ).sample.chunk(2)
            eps = eps_u + args.guidance * (eps_c - eps_u)
            a_prev = prev_alphas[n][:, None, None, None]
            x_prev = a_prev.sqrt() * x0_from_eps(x_t, eps, a_start) + (1 - a_prev).sqrt() * eps
            set_mode(loras, "target")
            skip, out = boundary_scalings(t_prev)
            target = skip * x_prev + out * x0_from_eps(x_prev, unet(x_prev, t_prev, cond).sample, alphas[t_prev])
        set_mode(loras, "student")
        skip, out = boundary_scalings(t_start_)
        pred = skip * x_t + out * x0_from_eps(x_t, unet(x_t, t_start_, cond).sample, a_start)
        c = args.huber_c
        loss = (((pred - target) ** 2 + c * c).sqrt() - c).mean()
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - args.ema_decay)
        progress.update(step, loss.item())
        if (step + 1) % args.log_every == 0:
            history.append(
                {
                    "step": step + 1,
                    "loss": float(np.mean(progress.losses[-args.log_every :])),
                    "s": round(time.time() - t0, 1),
                }
            )
        if (step + 1) % args.checkpoint_every == 0:
            save(step + 1, time.time() - t0, False)
        if time.time() > deadline:
            log.info("--max-minutes reached after %d steps", step + 1)
            break
    save(step + 1, time.time() - t0, True)
    log.info("wrote %s in %.0fs", args.output, time.time() - t_start)
    return Path(args.output)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m devtools.demo.distill``."""
    p = argparse.ArgumentParser(prog="python -m devtools.demo.distill", description=__doc__)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="the teacher: the demo pipeline folder")
    p.add_argument("--output", default=str(DEFAULT_LCM_DIR))
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--num-images", type=int, default=6000)
    p.add_argument("--isolated-share", type=float, default=0.1, help="as the v2i demo's training mix")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--solver-steps", type=int, default=50, help="DDIM solver boundaries over 1000 steps (k = 1000 / n)")
    p.add_argument("--guidance", type=float, default=7.5, help="the teacher's classifier-free guidance scale")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (and write) after this long; 0: no limit")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--ema-decay", type=float, default=0.95, help="the target network's EMA decay (LCM: 0.95)")
    p.add_argument("--huber-c", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--checkpoint-every", type=int, default=100)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
