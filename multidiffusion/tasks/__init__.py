"""Tasks as plug-ins: each says its prompt slots, the jobs of each step, what it composes into the
model's input and its start latents (:class:`~multidiffusion.engine.task.Task`); one runner does the
rest. A new task adds a module here, its options class in :mod:`multidiffusion.options`, and a line
in :data:`TASKS`."""

from multidiffusion.engine.task import Task
from multidiffusion.tasks.edit import EditTask
from multidiffusion.tasks.img2img import Img2ImgTask
from multidiffusion.tasks.inpaint import InpaintTask
from multidiffusion.tasks.outpaint import OutpaintTask
from multidiffusion.tasks.panorama import PanoramaTask
from multidiffusion.tasks.regions import RegionsTask
from multidiffusion.tasks.upscale import UpscaleTask

__all__ = [
    "TASKS",
    "EditTask",
    "Img2ImgTask",
    "InpaintTask",
    "OutpaintTask",
    "PanoramaTask",
    "RegionsTask",
    "UpscaleTask",
    "task_for",
]

TASKS: dict[str, type[Task]] = {
    "panorama": PanoramaTask,
    "regions": RegionsTask,
    "img2img": Img2ImgTask,
    "inpaint": InpaintTask,
    "outpaint": OutpaintTask,
    "upscale": UpscaleTask,
    "edit": EditTask,
}
"""Task name (as in :data:`multidiffusion.options.TASK_OPTIONS` and stored PNGs) -> its class."""


def task_for(options, adapter, **context) -> Task:
    """The task of ``options`` bound to a model's ``adapter`` (unset steps and guidance: the family's
    defaults)."""
    return TASKS[options.task](options.with_defaults(*adapter.sampling_defaults), adapter, **context)
