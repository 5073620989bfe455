"""ControlNet per view: its share of each step, the saving from not running it outside
[control_guidance_start, end], and the peers' approach (diffusers' ControlNet pipeline run once per
view of the panorama, each view on its own: what a user of diffusers alone writes).

All runs share one ControlNet made from the benchmark's UNet (``ControlNetModel.from_unet``: the
ControlNet of a model has the architecture of its UNet's encoder, so its cost is realistic), the
same canvas, latents and control image. ControlNet time is measured with hooks on the ControlNet,
the way :mod:`.measure` counts the UNet.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from multidiffusion.engine.views import grid_views
from multidiffusion.engine.windows import default_stride

from .common import GUIDANCE, PROMPT, Context, Row, noise, repeat

__all__ = ["controlnet_rows"]


class _Timer:
    """Calls and seconds inside a module's forward (synchronised on CUDA)."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.calls, self.seconds, self.device = 0, 0.0, device
        self._t = 0.0
        self.handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _pre(self, *_: Any) -> None:
        self._sync()
        self._t = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self._sync()
        self.calls += 1
        self.seconds += time.perf_counter() - self._t

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _control_image(height: int, width: int):
    from PIL import Image

    rng = np.random.default_rng(0)
    ridge = (np.sin(np.linspace(0, 12, width)) * height / 6 + height / 2).astype(int)
    edges = np.zeros((height, width), np.uint8)
    edges[ridge, np.arange(width)] = 255
    edges |= (rng.random((height, width)) > 0.995).astype(np.uint8) * 255
    return Image.fromarray(np.stack([edges] * 3, -1))


def controlnet_rows(ctx: Context, width: int = 1024, height: int = 512) -> list[Row]:
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from multidiffusion import MultiDiffusion

    torch.manual_seed(0)
    net = ControlNetModel.from_unet(ctx.pipe.unet).to(ctx.device, ctx.pipe.unet.dtype)
    with torch.no_grad():  # from_unet zero-initialises the output convolutions: give them weights
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    md = MultiDiffusion(ctx.pipe, controlnet=net)
    md.set_progress_bar_config(disable=True)
    cn_pipe = StableDiffusionControlNetPipeline(**ctx.pipe.components, controlnet=net)
    cn_pipe.set_progress_bar_config(disable=True)
    h, w = height // 8, width // 8
    views = grid_views(h, w, ctx.window, default_stride(ctx.window, "grid"))
    latents = noise((1, 4, h, w)).to(ctx.device, ctx.pipe.unet.dtype)
    control = _control_image(height, width)
    batch = ctx.batches.get("ours") or 4
    common = dict(
        height=height, width=width, num_inference_steps=ctx.steps, guidance_scale=GUIDANCE, output_type="latent",
        view_batch_size=batch,
    )  # fmt: skip

    def ours(**kwargs: Any):
        return lambda: md.panorama(PROMPT, latents=latents.clone(), **common, **kwargs).images

    def peer():  # diffusers' ControlNet pipeline once per view: independent views, no fusion
        out = torch.zeros_like(latents)
        f = 8
        for v in views:
            crop = control.crop((v.left * f, v.top * f, (v.left + v.width) * f, (v.top + v.height) * f))
            out[..., v.top : v.top + v.height, v.left : v.left + v.width] = cn_pipe(
                PROMPT,
                image=crop,
                height=v.height * f,
                width=v.width * f,
                num_inference_steps=ctx.steps,
                guidance_scale=GUIDANCE,
                latents=latents[..., v.top : v.top + v.height, v.left : v.left + v.width].clone(),
                output_type="latent",
            ).images
        return out

    timer = _Timer(net, ctx.device)
    try:
        runs = {
            "peer": peer,
            "ours": ours(control_image=control),
            "ours without ControlNet": ours(),
            "ours, ControlNet over the first half": ours(control_image=control, control_guidance_end=0.5),
        }
        seconds: dict[str, float] = {}
        calls: dict[str, int] = {}
        results, m = {}, {}
        for name, run in runs.items():  # ControlNet time per runner: one run each, then the medians
            before_s, before_c = timer.seconds, timer.calls
            out, mm = repeat(ctx, {name: run})
            results.update(out)
            m.update(mm)
            seconds[name] = (timer.seconds - before_s) / ctx.repeats
            calls[name] = (timer.calls - before_c) // ctx.repeats
    finally:
        timer.close()
    canvas = h * w
    share = seconds["ours"] / m["ours"].seconds if m["ours"].seconds else 0.0
    rows = [
        Row(
            "controlnet",
            f"panorama {height}x{width} with a ControlNet, {len(views)} windows",
            "diffusers StableDiffusionControlNetPipeline run once per view (no fusion)",
            m["peer"],
            m["ours"],
            canvas,
            ctx.steps,
            notes=(
                f"ControlNet calls peer {calls['peer']} / ours {calls['ours']}; ControlNet share of ours "
                f"{share:.0%} ({seconds['ours']:.2f} s of {m['ours'].seconds:.2f} s)"
            ),
            extra={"controlnet_seconds": seconds, "controlnet_calls": calls, "controlnet_share_ours": share},
        ),
        Row(
            "controlnet",
            f"panorama {height}x{width}: ControlNet cost (ours with vs without)",
            "ours without ControlNet",
            m["ours without ControlNet"],
            m["ours"],
            canvas,
            ctx.steps,
            notes=f"with ControlNet: {m['ours'].seconds / m['ours without ControlNet'].seconds:.2f}x the time",
        ),
        Row(
            "controlnet",
            f"panorama {height}x{width}: control_guidance_end=0.5 (ControlNet not run after it)",
            "ours, ControlNet every step (what diffusers runs, at scale 0 outside the range)",
            m["ours"],
            m["ours, ControlNet over the first half"],
            canvas,
            ctx.steps,
            notes=(
                f"ControlNet calls {calls['ours']} -> {calls['ours, ControlNet over the first half']}; "
                f"time {m['ours'].seconds:.2f} -> {m['ours, ControlNet over the first half'].seconds:.2f} s"
            ),
        ),
    ]
    return rows
