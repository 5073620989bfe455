"""Live region painting (multidiffusion.live) on the shipped demo model at 2-20 steps: a render per
push equal to a plain ``md.regions`` call, the canvas's noise kept, prompts encoded once by text,
a newer push cancelling the render in progress, at most one push waiting, the ``stream`` generator."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from multidiffusion import MultiDiffusion, Region
from multidiffusion.live import LiveRegions, stream
from multidiffusion.runner.prompt_cache import PromptCache

SIZE = {"height": 64, "width": 128}
TIMEOUT = 120


@pytest.fixture(scope="module")
def demo() -> MultiDiffusion:
    torch.set_num_threads(1)
    md = MultiDiffusion.from_pretrained("demo", device="cpu")
    md.set_progress_bar_config(disable=True)
    return md


@pytest.fixture
def unet_calls(demo):
    """The number of UNet forward passes so far (a list holding one count)."""
    count = [0]
    handle = demo.pipe.unet.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    yield count
    handle.remove()


def layout(house=(0.05, 0.1, 0.45, 0.9), house_prompt="a red house", **extra):
    regions = [Region(house_prompt, box=house), Region("snowy mountains", box=(0.55, 0.0, 1.0, 0.6))]
    return {**SIZE, "background": "a green meadow", "regions": regions, "num_inference_steps": 2, **extra}


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def wait_until(condition, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_render_per_push_equals_a_plain_call_and_keeps_the_noise(demo):
    with LiveRegions(demo) as live:
        first = live.wait(live.push(**layout(seed=3)), TIMEOUT)
        again = live.wait(live.push(**layout(seed=3)), TIMEOUT)
        assert first is not None and again is not None and (first.version, again.version) == (1, 2)
        assert live.stats.noise_draws == 1  # the same seed and canvas: J_T drawn once, kept
        plain = demo.regions(**layout(), generator=seeded(3)).images[0]
        assert np.abs(pixels(first.image) - pixels(plain)).max() == 0  # the generator resumes after the noise
        assert np.abs(pixels(again.image) - pixels(plain)).max() == 0
        assert first.output.parameters["seed"] == 3

        moved = live.wait(live.push(**layout(house=(0.1, 0.2, 0.5, 1.0), seed=3)), TIMEOUT)
        assert live.stats.noise_draws == 1  # a moved box keeps the canvas's noise ...
        assert np.abs(pixels(moved.image) - pixels(first.image)).max() > 0  # ... and changes the image
        reseeded = live.wait(live.push(**layout(seed=4)), TIMEOUT)
        assert live.stats.noise_draws == 2 and np.abs(pixels(reseeded.image) - pixels(first.image)).max() > 0
        assert (live.stats.started, live.stats.finished, live.stats.dropped) == (4, 4, 0)


def test_prompts_are_encoded_once_by_text(demo):
    with LiveRegions(demo, seed=1) as live:
        live.wait(live.push(**layout()), TIMEOUT)
        assert (live.prompts.hits, live.prompts.misses) == (0, 3)  # background, house, mountains
        live.wait(live.push(**layout(house=(0.2, 0.1, 0.6, 0.9))), TIMEOUT)  # a moved box: nothing re-encoded
        assert (live.prompts.hits, live.prompts.misses) == (3, 3)
        frame = live.wait(live.push(**layout(house_prompt="a blue boat")), TIMEOUT)  # one new prompt: one encode
        assert (live.prompts.hits, live.prompts.misses) == (5, 4)
    plain = demo.regions(**layout(house_prompt="a blue boat"), generator=seeded(1)).images[0]
    assert np.abs(pixels(frame.image) - pixels(plain)).max() == 0  # stacked one-slot embeddings = one call's


def test_the_prompt_cache_serves_the_same_embeddings(demo):
    from multidiffusion.options import RegionsOptions
    from multidiffusion.tasks import task_for

    task = task_for(RegionsOptions(**layout(guidance_scale=7.5)), demo.adapter)
    slots = task.prompt_slots()
    direct, guidance = demo.adapter.condition(slots, 1)
    cache = PromptCache()
    for _ in range(2):
        cond, cached_guidance = cache.condition(demo.adapter, slots, 1)
        assert cached_guidance == guidance
        for name in direct.positive:
            assert torch.equal(cond.positive[name], direct.positive[name])
            assert torch.equal(cond.negative[name], direct.negative[name])
    assert (cache.hits, cache.misses) == (3, 3)


def test_a_newer_push_cancels_the_render_at_a_step_boundary(demo, unet_calls):
    with LiveRegions(demo, seed=2) as live:
        live.wait(live.push(**layout(num_inference_steps=1)), TIMEOUT)
        per_step = unet_calls[0]
        unet_calls[0] = 0
        long = live.push(**layout(num_inference_steps=20))
        wait_until(lambda: unet_calls[0] >= per_step, "the long render's first step")
        short = live.push(**layout(num_inference_steps=2))
        assert live.wait(long, TIMEOUT) is None  # replaced: no frame for it
        assert live.wait(short, TIMEOUT).version == short
        assert live.stats.cancelled == 1 and live.stats.finished == 2
        assert unet_calls[0] < 20 * per_step  # the long render stopped early
        assert unet_calls[0] <= (1 + 2 + 2) * per_step  # at its next step boundary (1 step, maybe 2) + 2 steps


def test_a_burst_of_pushes_leaves_at_most_one_waiting(demo):
    with LiveRegions(demo, seed=5) as live:
        live.push(**layout(num_inference_steps=20))
        wait_until(lambda: live.stats.started == 1, "the first render")
        burst = [live.push(**layout(house=(0.05 + 0.01 * k, 0.1, 0.45, 0.9))) for k in range(10)]
        frame = live.wait(burst[-1], TIMEOUT)
        assert frame is not None and frame.version == burst[-1]
        assert all(live.wait(v, 0) is None for v in burst[:-1])
        s = live.stats
        assert (s.pushes, s.started, s.cancelled, s.dropped, s.finished) == (11, 2, 1, 9, 1), s
        assert s.max_waiting == 1 and not live.busy
        plain = demo.regions(**layout(house=(0.14, 0.1, 0.45, 0.9)), generator=seeded(5)).images[0]
        assert np.abs(pixels(frame.image) - pixels(plain)).max() == 0


def test_pushes_from_many_threads_are_each_rendered_or_dropped(demo):
    with LiveRegions(demo, seed=6) as live:
        versions: list[int] = []

        def pusher(k: int) -> None:
            for j in range(4):
                versions.append(live.push(**layout(house=(0.05, 0.1, 0.3 + 0.05 * k, 0.6 + 0.05 * j))))

        threads = [threading.Thread(target=pusher, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(versions) == list(range(1, 17))
        frame = live.wait(16, TIMEOUT)
        assert frame is not None and frame.version == 16
        s = live.stats
        assert s.started + s.dropped == s.pushes == 16 and s.finished + s.cancelled == s.started, s


def test_bad_pushes_fail_in_the_caller_and_renders_report_their_errors(demo):
    with LiveRegions(demo, seed=1) as live:
        with pytest.raises(ValueError, match="num_inference_steps"):
            live.push(**layout(num_inference_steps=0))
        bad = live.push(**{**layout(), "regions": [Region("a", mask=np.ones((8, 100), np.float32))]})  # wrong aspect
        with pytest.raises(ValueError):
            live.wait(bad, TIMEOUT)
        assert live.stats.failed == 1
        assert live.wait(live.push(**layout()), TIMEOUT) is not None  # the loop goes on
    with pytest.raises(RuntimeError, match="closed"):
        live.push(**layout())
    with pytest.raises(ValueError, match="md"):
        LiveRegions()


def test_stream_yields_the_newest_layouts_render(demo):
    layouts = [{"regions": [Region("a red house", box=(0.05 * k, 0.1, 0.45, 0.9))]} for k in range(4)]
    common = {**SIZE, "background": "a green meadow", "num_inference_steps": 2, "seed": 7}
    frames = list(stream(demo, iter(layouts), **common))
    again = list(demo.stream(iter(layouts), **common))  # the method is the same loop
    assert again and again[-1].version == 4 and pixels(again[-1].image).tolist() == pixels(frames[-1].image).tolist()
    common_call = {k: v for k, v in common.items() if k != "seed"}
    assert frames and frames[-1].version == 4 and len(frames) <= 4
    assert [f.version for f in frames] == sorted({f.version for f in frames})
    plain = demo.regions(regions=layouts[-1]["regions"], **common_call, generator=seeded(7)).images[0]
    assert np.abs(pixels(frames[-1].image) - pixels(plain)).max() == 0
