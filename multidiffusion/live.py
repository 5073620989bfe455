"""Live region painting: a layout is pushed after every brush stroke or moved box, and each push
renders it, for a front end that answers as the user draws (the web app's "Live" mode, or any
other front end through :class:`LiveRegions` or :func:`stream`).

Three rules make the loop answer quickly:

- **The newest layout wins.** A push cancels the render in progress at its next denoising-step
  boundary (the runner's ``should_stop``, as the web app cancels a request) and is never queued
  behind it: at most one push waits, the newest; the pushes it replaces are dropped unrendered.
- **The canvas keeps its noise.** Eq. 5 runs from the canvas's initial noise J_T; with the same
  seed and canvas size every render starts from the same J_T (drawn once, kept), so a stroke
  changes the image where the layout changed rather than re-rolling all of it. A render equals
  ``md.regions(..., seed=seed)`` exactly: the generator resumes from where the noise left it, so
  the bootstrapping backgrounds are drawn as in a plain call.
- **Prompts are encoded once.** :class:`PromptCache` keeps each prompt slot's embeddings by its
  text (prompts, negatives, whether guidance runs), so a stroke that moves a mask re-encodes
  nothing, and a new prompt on one region encodes that region's prompt only.

>>> live = LiveRegions(md)
>>> v = live.push(background="a meadow", regions=[Region("a red house", box=(0.1, 0.2, 0.5, 0.9))],
...               height=64, width=128, num_inference_steps=4, seed=1)
>>> live.wait(v).image.save("frame.png")
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from multidiffusion.options import RegionsOptions
from multidiffusion.output import MultiDiffusionOutput
from multidiffusion.runner import Cancelled, RunSettings, run
from multidiffusion.runner.prompt_cache import PromptCache
from multidiffusion.tasks import task_for

__all__ = ["LiveFrame", "LiveRegions", "LiveStats", "PromptCache", "stream"]

Use = Callable[[Any, Callable[[], bool]], AbstractContextManager[Any]]
"""``use(model, should_stop)``: the model to render with, held for the ``with`` block (the web app's
``ModelPool.use``); ``model`` is the push's ``model`` (a name the caller understands)."""


@dataclass
class LiveFrame:
    """A finished render: ``version`` is the number :meth:`LiveRegions.push` returned for its layout."""

    version: int
    output: MultiDiffusionOutput
    seconds: float

    @property
    def image(self) -> Any:
        return self.output.images[0]


@dataclass
class LiveStats:
    """What the loop did: pushes received, renders started, finished and cancelled, pushes dropped
    unrendered (a newer one replaced them while they waited), renders that failed, the most pushes
    ever waiting at once (1 by construction: the rule the web app's test checks), noise draws."""

    pushes: int = 0
    started: int = 0
    finished: int = 0
    cancelled: int = 0
    dropped: int = 0
    failed: int = 0
    max_waiting: int = 0
    noise_draws: int = 0

    def summary(self) -> str:
        renders = f"finished {self.finished}, cancelled {self.cancelled}, failed {self.failed}"
        return (f"pushes {self.pushes} · renders {self.started} ({renders}) · dropped {self.dropped} · "
                f"most waiting {self.max_waiting}")  # fmt: skip


@dataclass
class _Push:
    version: int
    options: RegionsOptions
    model: Any = None
    error: BaseException | None = field(default=None, repr=False)


class LiveRegions:
    """A render loop for region layouts on its own thread (thread-safe: push from any thread).

    ``md``: a ``MultiDiffusion``; or ``use(model, should_stop)``, a context manager that holds the
    model for one render (the web app's model pool). ``seed``: the noise seed of pushes that give
    none (default: one random seed for the loop's life, so the canvas keeps its noise).
    ``on_frame(frame)`` is called on the loop's thread after each finished render."""

    def __init__(
        self,
        md: Any = None,
        *,
        use: Use | None = None,
        seed: int | None = None,
        on_frame: Callable[[LiveFrame], None] | None = None,
    ):
        if (md is None) == (use is None):
            raise ValueError("LiveRegions: give the model (md) or use, not both")
        self._use: Use = use if use is not None else (lambda model, stop: nullcontext(md))
        self.seed = int(seed) if seed is not None else random.randrange(2**31)
        self.on_frame = on_frame
        self.prompts = PromptCache(fallback=getattr(md, "_prompts", None))
        self.stats = LiveStats()
        self._noise: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cond = threading.Condition()
        self._version = 0
        self._pending: _Push | None = None
        self._running: _Push | None = None
        self._frame: LiveFrame | None = None
        self._failed: _Push | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="multidiffusion-live", daemon=True)
        self._thread.start()

    # -- the caller's side ---------------------------------------------------------------------
    def push(self, options: RegionsOptions | None = None, *, model: Any = None, **arguments: Any) -> int:
        """Render this layout as soon as the loop is free: ``options``, or ``md.regions``' arguments
        (``height``, ``width``, ``background``, ``regions``, ``num_inference_steps``, ``seed``, ...,
        checked here: a bad one is a ValueError to the caller). Cancels the render in progress at
        its next step boundary and replaces the push waiting, if any. Returns the push's version."""
        if options is None:
            options = RegionsOptions(**arguments)
        elif arguments:
            raise ValueError("push: give options or keyword arguments, not both")
        if not isinstance(options, RegionsOptions):
            raise ValueError(f"push: options must be RegionsOptions, got {type(options).__name__}")
        with self._cond:
            if self._closed:
                raise RuntimeError("push: this LiveRegions was closed")
            self._version += 1
            self.stats.pushes += 1
            if self._pending is not None:
                self.stats.dropped += 1
            self._pending = _Push(self._version, options, model)
            self.stats.max_waiting = max(self.stats.max_waiting, 1)
            self._cond.notify_all()
            return self._version

    def wait(self, version: int, timeout: float | None = None) -> LiveFrame | None:
        """The frame of push ``version`` once rendered; None as soon as a newer push replaces it (or
        on ``timeout``). Its render's error is raised here."""
        with self._cond:
            self._cond.wait_for(lambda: self._settled(version), timeout)
            if self._failed is not None and self._failed.version == version:
                raise self._failed.error  # type: ignore[misc]
            frame = self._frame
            return frame if frame is not None and frame.version == version else None

    def frames(self, timeout: float | None = None) -> Iterator[LiveFrame]:
        """Each new frame as it is rendered, until :meth:`close` (or ``timeout`` s without one)."""
        seen = 0
        while True:
            with self._cond:
                ready = self._cond.wait_for(
                    lambda seen=seen: self._closed or (self._frame is not None and self._frame.version > seen), timeout
                )
                frame = self._frame
                if not ready or (self._closed and (frame is None or frame.version <= seen)):
                    return
            seen = frame.version
            yield frame

    @property
    def latest(self) -> LiveFrame | None:
        """The newest finished frame."""
        return self._frame

    @property
    def busy(self) -> bool:
        """A render runs or a push waits."""
        with self._cond:
            return self._pending is not None or self._running is not None

    def close(self, timeout: float | None = 30) -> None:
        """Stop the loop: the render in progress is cancelled, the push waiting dropped."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        self._thread.join(timeout)

    def __enter__(self) -> LiveRegions:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _settled(self, version: int) -> bool:
        if self._frame is not None and self._frame.version >= version:
            return True
        if self._failed is not None and self._failed.version == version:
            return True
        return self._version > version or self._closed

    def _should_stop(self) -> bool:
        return self._pending is not None or self._closed  # read without the lock: a flag, checked each step

    # -- the loop's side -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                push, self._pending, self._running = self._pending, None, self._pending
                self.stats.started += 1
            frame = None
            try:
                frame = self._render(push)
            except Cancelled:
                with self._cond:
                    self.stats.cancelled += 1
            except Exception as exc:  # reported to wait(); the loop goes on with the next push
                push.error = exc
                with self._cond:
                    self.stats.failed += 1
                    self._failed = push
            with self._cond:
                self._running = None
                if frame is not None:
                    self._frame = frame
                    self.stats.finished += 1
                self._cond.notify_all()
            if frame is not None and self.on_frame is not None:
                self.on_frame(frame)

    def _render(self, push: _Push) -> LiveFrame:
        started = time.perf_counter()
        options = push.options
        with self._use(push.model, self._should_stop) as md:
            if self._should_stop():
                raise Cancelled("replaced by a newer layout before it started")
            seed = options.seed if options.seed is not None else self.seed
            layout = md.region_layout(options.height, options.width, options.background, options.regions)
            task = task_for(options, md.adapter, layout=layout)
            generator, latents = self._start(md, task, seed)
            self.prompts.scope = tuple(sorted(getattr(md, "lora_files", {})))
            settings = RunSettings(
                scheduler=md.scheduler,
                model_name=md.model_name,
                share_prefix=md.share_prefix,
                share_unconditional=md.share_unconditional,
                progress={**getattr(md, "_progress", {}), "disable": True},
                decode=getattr(md, "_decode", {}),
                lora_files=md.lora_files,
                prompts=self.prompts,  # type: ignore[arg-type]  # duck-typed: condition(adapter, slots, n)
            )
            out = run(task, settings, generator=generator, latents=latents, pipeline=md, should_stop=self._should_stop)
        out.parameters["seed"] = seed  # the run saw latents, so it could not record the seed
        return LiveFrame(push.version, out, time.perf_counter() - started)

    def _start(self, md: Any, task: Any, seed: int) -> tuple[torch.Generator, torch.Tensor | None]:
        """The canvas's initial noise J_T for ``seed``, drawn once per (model, seed, canvas) and kept,
        and a generator at the state the draw left it in (so later draws match a plain call). With
        an input image the task draws before the noise: no noise is kept then."""
        generator = torch.Generator("cpu").manual_seed(seed)
        if task.options.image is not None:
            return generator, None
        adapter = md.adapter
        batch = len(task.prompt_slots().prompts[0]) * task.options.num_images_per_prompt
        shape = (batch, adapter.latent_channels, *task.latent_size)
        key = (id(adapter), seed, shape, adapter.dtype, str(adapter.device))
        if key not in self._noise:
            noise = randn_tensor(shape, generator=generator, device=adapter.device, dtype=adapter.dtype)
            self._noise[key] = (noise, generator.get_state())
            self.stats.noise_draws += 1
            while len(self._noise) > 4:
                self._noise.popitem(last=False)
        noise, state = self._noise[key]
        generator.set_state(state)
        return generator, noise


def stream(md: Any, layouts: Iterable[Mapping[str, Any] | RegionsOptions], **defaults: Any) -> Iterator[LiveFrame]:
    """Render a stream of layouts as they come, newest first: each item of ``layouts`` (``md.regions``'
    arguments, over ``defaults``; or ``RegionsOptions``) is pushed as soon as the iterable gives it
    (read on a thread of its own, so a slow source such as a queue of UI events never waits for a
    render), and each finished render is yielded. Layouts that arrive during a render replace each
    other: only the newest is rendered. Ends after the last layout's frame.

    >>> for frame in stream(md, [dict(regions=[...]), dict(regions=[...])], height=64, width=128, seed=1):
    ...     frame.image.save(f"frame-{frame.version}.png")
    """
    with LiveRegions(md, seed=defaults.get("seed")) as live:
        done = threading.Event()
        problem: list[BaseException] = []
        last: list[int] = []

        def feed() -> None:
            try:
                for layout in layouts:
                    item = layout if isinstance(layout, RegionsOptions) else None
                    last.append(live.push(item) if item else live.push(**{**defaults, **layout}))
            except BaseException as exc:  # handed to the consumer
                problem.append(exc)
            finally:
                done.set()
                with live._cond:
                    live._cond.notify_all()

        threading.Thread(target=feed, name="multidiffusion-live-feed", daemon=True).start()
        seen = 0
        while True:
            with live._cond:
                live._cond.wait_for(
                    lambda seen=seen: (live._frame is not None and live._frame.version > seen) or done.is_set()
                )
                frame = live._frame
            if frame is not None and frame.version > seen:
                seen = frame.version
                yield frame
                continue
            if problem:
                raise problem[0]
            if not last:
                return
            final = live.wait(last[-1])  # raises the last layout's error
            if final is not None and final.version > seen:
                yield final
            return
