"""What each process of tests/test_distributed.py runs: the same calls as the single-process
reference, on a tiny random SD pipeline, inside a gloo process group; rank 0 saves what it got.

Kept apart from the test module so that spawned processes import only this (and the package).
"""

from __future__ import annotations

import json
import os
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROMPT = "snowy mountains"


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_md() -> Any:
    from devtools.components import tiny_sd_pipeline
    from multidiffusion import MultiDiffusion

    md = MultiDiffusion(tiny_sd_pipeline(sample_size=16))
    md.set_progress_bar_config(disable=True)
    md.set_vae_tiling(tile=16)  # canvases of several VAE tiles: the sharded decode and encode run
    return md


def input_image() -> Any:
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))


def cases(md: Any) -> dict[str, Any]:
    """name -> a call returning (final latents, images as an array, stats)."""
    from multidiffusion import Region

    def captured(call: Any, **kwargs: Any) -> tuple[torch.Tensor, np.ndarray, Any]:
        last: dict[str, torch.Tensor] = {}

        def keep(pipe: Any, i: int, t: Any, tensors: dict[str, torch.Tensor]) -> dict:
            last["latents"] = tensors["latents"].clone()
            return {}

        out = call(**kwargs, output_type="np", callback_on_step_end=keep)
        return last["latents"], np.asarray(out.images), out.stats

    # one view per model call: the calls, hence their floating-point results, are those of one process
    # (a different batch composition alone moves this random tiny UNet's latents by ~4e-5 in 3 steps)
    one = {"view_batch_size": 1}
    return {
        "panorama": lambda: captured(
            md.panorama, prompt=PROMPT, height=128, width=384, num_inference_steps=3, generator=seeded(1), **one
        ),
        "regions": lambda: captured(
            md.regions,
            height=128,
            width=256,
            background="a beach",
            regions=[Region("a red ball", box=(0.1, 0.2, 0.45, 0.9)), Region("a dog", box=(0.55, 0.1, 0.95, 0.6))],
            bootstrap_steps=2,
            num_inference_steps=3,
            generator=seeded(2),
            **one,
        ),
        "fast": lambda: captured(
            md.panorama,
            prompt=PROMPT,
            height=192,
            width=384,
            placement="shifted",
            num_inference_steps=3,
            generator=seeded(3),
            **one,
        ),
        "upscale": lambda: captured(
            md.upscale,
            image=input_image(),
            scale=2,
            prompt=PROMPT,
            strength=0.75,
            num_inference_steps=4,
            generator=seeded(4),
            **one,
        ),
        # the default batching: several views per call on each rank
        "panorama-batched": lambda: captured(
            md.panorama, prompt=PROMPT, height=128, width=384, num_inference_steps=3, generator=seeded(1)
        ),
    }


def _break_unet(md: Any, after: int, breaking: Any) -> Any:
    """Make md's UNet call ``breaking()`` from its ``after + 1``-th call on; returns the original forward."""
    unet = md.adapter.unet
    calls = {"n": 0}
    original = unet.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > after:
            breaking()
        return original(*args, **kwargs)

    unet.forward = forward
    return original


def _out_of_memory() -> None:
    raise RuntimeError("out of memory (simulated on rank 1)")


def _die() -> None:
    os._exit(3)  # no goodbye: the other rank learns of it from the process group


def _attempt(path: Path, md: Any, seed: int) -> None:
    """A small panorama; the error it raised (or "no error") written to ``path``."""
    try:
        md.panorama(
            prompt=PROMPT, height=128, width=256, num_inference_steps=3, generator=seeded(seed), output_type="latent"
        )
        path.write_text("no error")
    except (RuntimeError, ValueError) as exc:
        path.write_text(f"{type(exc).__name__}: {exc}")


def batch(rank: int, folder: Path, model: str) -> None:
    """``multidiffusion batch`` in the group: each rank makes its share of the images; rank 0 reports."""
    import contextlib
    import io

    from multidiffusion.cli import main as cli

    lines = [
        {"task": "panorama", "prompt": p, "height": 128, "width": 256, "num_inference_steps": 2, "seed": k,
         "output": f"batch-{k}.png"}
        for k, p in enumerate(["hills", "a lake", "a forest"])
    ]  # fmt: skip
    jobs = folder / "jobs.jsonl"
    if rank == 0:
        jobs.write_text("\n".join(json.dumps(line) for line in lines))
    torch.distributed.barrier()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = cli(["batch", str(jobs), "--model", model, "-q"])
        except SystemExit as exc:
            code = exc.code
    (folder / f"batch-{rank}.txt").write_text(f"{code}\n{out.getvalue()}")


def main(rank: int, world: int, port: int, folder: str, model: str) -> None:
    """Run every case in one process group, a batch, then a rank failure, then a rank that dies."""
    torch.set_num_threads(1)
    out = Path(folder)
    try:
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
        )
        md = tiny_md()
        results = {name: call() for name, call in cases(md).items()}
        if rank == 0:
            torch.save(results, out / "results.pt")
        batch(rank, out, model)
        # a rank whose model call fails: every rank stops with an error that names it
        original = _break_unet(md, 2, _out_of_memory) if rank == 1 else None
        _attempt(out / f"failure-{rank}.txt", md, seed=5)
        if original is not None:
            md.adapter.unet.forward = original
        # ranks that disagree on the call (another seed on rank 1) are refused before any step
        _attempt(out / f"disagree-{rank}.txt", md, seed=6 + rank)
        # a rank that dies in the middle of a run
        if rank == 1:
            _break_unet(md, 2, _die)
        _attempt(out / f"died-{rank}.txt", md, seed=7)
    except BaseException:
        (out / f"crash-{rank}.txt").write_text(traceback.format_exc())
        raise
