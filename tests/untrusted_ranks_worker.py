"""What each process of tests/test_untrusted_processes.py runs: calls whose inputs differ between the
two ranks of a gloo process group, each of which must be refused before any model call.

Kept apart from the test module so that spawned processes import only this (and the package).
"""

from __future__ import annotations

import json
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(1)


def attempts(md: Any, rank: int) -> dict[str, Any]:
    """name -> a call whose inputs differ on rank 1 (an image, a mask, a region's mask, the scheduler)."""
    from PIL import Image

    from multidiffusion import Region

    shade = 255 if rank == 0 else 0
    image = Image.new("RGB", (128, 128), (shade,) * 3)
    grey = Image.new("RGB", (128, 128), (128,) * 3)
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (0, 0, 64 + 32 * rank, 64))
    region_mask = torch.zeros(128, 256)
    region_mask[:, : 64 + 64 * rank] = 1
    common = {"num_inference_steps": 2, "output_type": "latent"}
    return {
        "image": lambda: md.img2img(generator=seeded(), image=image, prompt="x", strength=0.5, **common),
        "mask": lambda: md.inpaint(generator=seeded(), image=grey, mask=mask, prompt="x", **common),
        "regions": lambda: md.regions(
            generator=seeded(), height=128, width=256, background="a", regions=[Region("b", mask=region_mask)], **common
        ),
        "scheduler": lambda: md.panorama(
            generator=seeded(), prompt="x", height=128, width=256, scheduler="ddim" if rank == 0 else "euler", **common
        ),
    }


def main(rank: int, world: int, port: int, folder: str) -> None:
    """Every attempt in one process group; what each raised (and the model calls it made) to a JSON file."""
    from devtools.components import tiny_sd_pipeline
    from multidiffusion import MultiDiffusion

    torch.set_num_threads(1)
    out = Path(folder)
    try:
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
        )
        md = MultiDiffusion(tiny_sd_pipeline(sample_size=16))
        md.set_progress_bar_config(disable=True)
        calls = {"n": 0}
        for module in (md.adapter.pipe.unet, md.adapter.pipe.vae):
            module.register_forward_pre_hook(lambda *args: calls.__setitem__("n", calls["n"] + 1))
        encode = md.adapter.pipe.vae.encode

        def counted_encode(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            return encode(*args, **kwargs)

        md.adapter.pipe.vae.encode = counted_encode
        results = {}
        for name, call in attempts(md, rank).items():
            before = calls["n"]
            try:
                call()
                error = None
            except (RuntimeError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            results[name] = {"error": error, "model_calls": calls["n"] - before}
        (out / f"rank-{rank}.json").write_text(json.dumps(results))
    except BaseException:
        (out / f"crash-{rank}.txt").write_text(traceback.format_exc())
        raise
