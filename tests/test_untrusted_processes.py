"""Issue 25, hole 8: ranks of a sharded run agree on every input before the first step. Before, only
the prompts, the canvas, the number of steps and the initial noise were compared: two ranks given a
white and a black input image fused a mixed canvas and exited 0."""

from __future__ import annotations

import json
import multiprocessing

from multidiffusion.engine.distributed import call_digests, digest

from . import untrusted_ranks_worker
from .test_distributed import WORLD, free_port, joined


def test_ranks_that_differ_in_an_input_are_refused_by_name_before_any_model_call(tmp_path):
    context = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [
        context.Process(target=untrusted_ranks_worker.main, args=(r, WORLD, port, str(tmp_path))) for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    joined(procs, tmp_path, 240)
    for r in range(WORLD):
        results = json.loads((tmp_path / f"rank-{r}.json").read_text())
        for name, result in results.items():
            error = result["error"]
            assert error is not None, f"rank {r} ran {name!r} with inputs that differ between the ranks"
            assert error.startswith(f"ValueError: a sharded run: the ranks disagree on {name} (rank 0: "), error
            assert "\n" not in error
            assert result["model_calls"] == 0, f"{name}: the model ran before the refusal"


def test_digests_are_of_content_not_of_identity():
    """Equal pixels from different objects (or paths) agree; one changed pixel or setting does not."""
    import torch
    from diffusers import DDIMScheduler, EulerDiscreteScheduler
    from PIL import Image

    from multidiffusion.io.image_loader import InputImage
    from multidiffusion.options import Img2ImgOptions

    white = Image.new("RGB", (64, 64), "white")
    assert digest(InputImage(white, "/a/x.png")) == digest(InputImage(white.copy(), "/b/y.png"))
    changed = white.copy()
    changed.putpixel((3, 3), (254, 255, 255))
    assert digest(InputImage(white)) != digest(InputImage(changed))
    assert digest(torch.zeros(3)) != digest(torch.zeros(3, dtype=torch.float64))
    assert digest(lambda: 1) == digest(lambda: 1)  # a function by name, never by address
    ddim, euler = DDIMScheduler(), EulerDiscreteScheduler()
    assert digest(ddim) == digest(DDIMScheduler()) != digest(euler)
    assert digest(DDIMScheduler(steps_offset=1)) != digest(ddim)
    options = Img2ImgOptions(prompt="x", image=white, view_batch_size=1)
    digests = call_digests(options, ddim, None)
    again = call_digests(Img2ImgOptions(prompt="x", image=white.copy(), view_batch_size=4), ddim, None)
    assert digests == again  # the views per model call change memory, not the result
    assert call_digests(Img2ImgOptions(prompt="x", image=changed), ddim, None)["image"] != digests["image"]
