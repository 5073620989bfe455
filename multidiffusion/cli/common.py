"""What the command-line verbs share: option groups, flags -> API names, loading the model, the
estimate and the report line (the parser itself: :mod:`multidiffusion.cli.parser`). Where
settings and weights come from (typed, a scene, a PNG's --from) and what each origin may load is
:mod:`multidiffusion.cli.sources`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from multidiffusion.cli.parser import fail
from multidiffusion.conditionings import KINDS
from multidiffusion.io.ranges import check_lora_weight
from multidiffusion.io.trust import TypedPath, pickle_allowed, typed_weights
from multidiffusion.models import model_flags
from multidiffusion.models.loading import PREDICTION_TYPES
from multidiffusion.options import SAMPLING_FLAG_NAMES, SCHEDULER_NAMES
from multidiffusion.options.sampling import STEP_CACHES

DTYPES = ("float32", "float16", "bfloat16")

__all__ = [
    "IMAGE_VERBS",
    "SAMPLING_FLAGS",
    "add_conditioning_options",
    "add_model_options",
    "add_sampling_options",
    "fail",
    "flag_values",
    "in_context",
    "load_model",
    "lora_type",
    "preflight",
    "report",
    "scene_file",
    "typed_file",
    "typed_model_options",
    "window_type",
    "with_flag",
]


def window_type(text: str) -> int | tuple[int, int]:
    """'64' or '64x96' (rows x columns, latent pixels)."""
    try:
        values = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or HxW, got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise argparse.ArgumentTypeError(f"expected an integer or HxW, got {text!r}")


def lora_type(text: str) -> tuple[str, str, float]:
    """'[NAME=]FILE[:WEIGHT]' -> (name, file, weight); the name defaults to the file's stem."""
    name, sep, rest = text.partition("=")
    if not sep or not name or "/" in name or "\\" in name:
        name, rest = "", text
    spec, weight = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            weight = float(tail)
            spec = head
        except ValueError:
            pass
    if not spec:
        raise argparse.ArgumentTypeError(f"expected [NAME=]FILE[:WEIGHT], got {text!r}")
    try:
        weight = check_lora_weight("the weight", weight)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name or Path(spec.rstrip("/")).stem or spec, spec, weight


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        help="'demo' or 'demo-lcm' (its few-step LCM-LoRA; both shipped, offline), a Hugging Face repo id, "
        "a diffusers folder or a .safetensors "
        "checkpoint (default: demo)",
    )
    g.add_argument("--config", help="for a .safetensors file: diffusers folder or repo id with its config")
    g.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.bin/.pt weights (they can run code)")
    g.add_argument(
        "--prediction-type",
        choices=PREDICTION_TYPES,
        help="override the model's (e.g. v_prediction for an SD 2.x 768-v .safetensors file)",
    )
    for flag, _name, kwargs in model_flags():  # every family's options (SDXL's micro-conditioning, T5 length, ...)
        g.add_argument(flag, **kwargs)
    g.add_argument(
        "--controlnet",
        action="append",
        metavar="MODEL",
        help="a ControlNet: demo (the demo model's, offline), a diffusers folder, a repo id or a .safetensors file "
        "(pickles only with --allow-pickle); repeat for several, each with its --control-image. Not stored in the "
        "PNG: give it again with --from",
    )
    g.add_argument(
        "--lora",
        action="append",
        type=lora_type,
        metavar="[NAME=]FILE[:WEIGHT]",
        help="a LoRA (.safetensors file, folder or repo id) for the whole image at WEIGHT (default 1); weight 0: only "
        "in the regions whose loras name it (NAME, default the file's stem); repeat for several. Recorded in the "
        "PNG by file name and SHA-256, never loaded from it: give it again with --from",
    )
    for kind in KINDS:  # what loads a kind's weights (--ip-adapter ...): never stored, given again with --from
        for flag in kind.load_flags:
            g.add_argument(flag.flag, **flag.kwargs)
    g.add_argument("--device", help="cuda, cpu or mps (default: cuda if present)")
    g.add_argument("--dtype", choices=DTYPES, help="default: float16 on GPU, else float32")
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet: pays on GPUs for long runs; on CPUs it rarely does (see README)",
    )


SAMPLING_FLAGS = SAMPLING_FLAG_NAMES
"""Command-line flag (argparse dest) -> API name, for the options every task shares."""


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=int, help="denoising steps (default: the model's, 50 for SD, 28 for FLUX.1-dev)")
    g.add_argument(
        "--guidance",
        type=float,
        help="guidance scale (default: the model's, 7.5 for SD, 5 for SDXL, 3.5 for FLUX.1-dev)",
    )
    g.add_argument("--negative", help="negative prompt: what the image should not show")
    g.add_argument(
        "--seed", type=int, help="random seed (-1: random); the same seed, device and dtype give the same image"
    )
    g.add_argument("--scheduler", help=f"{', '.join(SCHEDULER_NAMES)} (default ddim, as the paper)")
    g.add_argument("--batch-size", type=int, help="views per model call (default: scales with the model's window)")
    g.add_argument("--num-images", type=int, help="images to generate (out.png, out-2.png, ...)")
    g.add_argument(
        "--pre-average",
        action="store_true",
        default=None,
        help="fuse each view's own denoised estimate (latent pre-averaging; changes bootstrapped soft masks only)",
    )
    add_step_cache_options(p)
    add_conditioning_options(p)
    g.add_argument("-o", "--output", required=True, help="output PNG (parameters are stored in it)")
    g.add_argument("--from", dest="from_png", metavar="PNG", help="reuse the settings stored in a PNG; flags override")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar (and no estimate line)")
    g.add_argument(
        "--ignore-estimate",
        action="store_true",
        help="run even when the estimate says it needs more memory than is available",
    )


def add_step_cache_options(p: argparse.ArgumentParser) -> None:
    """diffusers' cache hooks per batch of views (diffusion transformers; docs/benchmarks.md, "Step caching")."""
    g = p.add_argument_group("step caching")
    g.add_argument("--step-cache", choices=STEP_CACHES, help="reuse work between steps (default: off)")
    g.add_argument("--step-cache-threshold", type=float, help="first_block: residual change that recomputes (0.05)")
    g.add_argument("--step-cache-interval", type=int, help="taylorseer: steps between full computations (5)")
    g.add_argument("--step-cache-mb", type=float, help="bound on the cached state of all view batches, MiB (1024)")


def add_conditioning_options(p: argparse.ArgumentParser) -> None:
    """Every conditioning kind's flags (:data:`multidiffusion.conditionings.KINDS`), a group each: a
    new kind's flags appear on every verb with no edit here."""
    for kind in KINDS:
        if kind.flags:
            g = p.add_argument_group(kind.flag_group or kind.name)
            for flag in kind.flags:
                g.add_argument(flag.flag, **flag.kwargs)


def flag_values(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, Any]:
    """The flags given on the command line, by API name (tuples become lists, as stored). A
    conditioning's flag that repeats (once per ControlNet, per IP-Adapter) given once is one value;
    its image files are absolute typed paths (:func:`typed_file`)."""
    from multidiffusion.options import CONTROL_INPUT

    repeated = {_dest(f.flag) for kind in KINDS for f in kind.flags if f.kwargs.get("action") == "append"}
    images = {_dest(f.flag) for kind in KINDS for f in kind.flags if f.field in kind.image_fields}
    values = {}
    for flag, key in flags.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if flag in images:
            value = [v if v == CONTROL_INPUT else typed_file(v) for v in value] if isinstance(value, list) else (
                typed_file(value))  # fmt: skip
        if flag in repeated and isinstance(value, list) and len(value) == 1:
            value = value[0]
        values[key] = value
    return values


def _dest(flag: str) -> str:
    """argparse's destination of ``flag`` ("--control-image" -> "control_image")."""
    return flag.lstrip("-").replace("-", "_")


IMAGE_VERBS = ("img2img", "upscale", "inpaint", "outpaint", "edit")
"""The verbs that take an input image and, with --scene, scene files of their task."""


def scene_file(path: str, verb: str) -> tuple[dict[str, Any], Path, str]:
    """(contents, folder, name) of a scene file for ``verb``'s task; a scene of another task is
    refused with the command that runs it."""
    from multidiffusion.files.scene import read_scene_file, stored_task

    try:
        data = read_scene_file(path)
    except ValueError as exc:
        fail(str(exc))
    task = stored_task(data) or "regions"  # stored parameters copied into a scene ("mode" in older PNGs)
    name = Path(path).name
    if task != verb:
        if isinstance(task, str) and task in ("regions", *IMAGE_VERBS):
            run = f"multidiffusion regions {path}" if task == "regions" else f"multidiffusion {task} --scene {path}"
            fail(f"{name}: task is {task!r}, not {verb}: run it with `{run}`")
        fail(f"{name}: task must be one of 'regions', {', '.join(map(repr, IMAGE_VERBS))}, got {task!r}")
    return data, Path(path).expanduser().absolute().parent, name


def typed_file(value: str | None) -> TypedPath | None:
    """A file name typed on the command line, as an absolute :class:`~multidiffusion.io.trust.TypedPath`:
    the user's own, read as given (a scene's file names, plain strings, are confined to its folder;
    a PNG's are refused), the only kind --allow-pickle covers, and recorded absolute in the result's
    PNG."""
    return None if value is None else TypedPath(Path(value).expanduser().absolute())


def in_context(message: str, flags: dict[str, str], given: dict[str, Any], source: str) -> str:
    """An options error with where the value came from: the flag when the user typed it
    (:func:`with_flag`), else the scene file or ``--from PNG`` that held it (``source``)."""
    flagged = with_flag(message, flags, given)
    if flagged != message or not source:
        return flagged
    return f"{source}: {message}"


def with_flag(message: str, flags: dict[str, str], given: dict[str, Any]) -> str:
    """An options error, with the flag that gave the value when the user typed it: the message is
    the library's own (the same from the API, a scene file and the web app), the flag is added."""
    for flag, key in flags.items():
        if key in given and message.startswith((f"{key} ", f"{key}:", f"{key}[")):
            return f"{message} (--{flag.replace('_', '-')})"
    return message


def typed_model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options typed as flags (every family's: :func:`~multidiffusion.models.model_flags`)."""
    return {name: getattr(args, name) for _, name, _ in model_flags() if getattr(args, name, None) is not None}


def load_model(
    model: str,
    args: argparse.Namespace,
    allow_pickle: bool = False,
    controlnet: list[str] | None = None,
    **options: Any,
):
    """The MultiDiffusion object for ``model`` with --device, --dtype, --config, --prediction-type and
    --compile, the ``controlnet`` models (:func:`control_net_choice`; by default --controlnet as
    typed; pickles only with --allow-pickle), the LoRAs and what every conditioning kind's loading
    flags give (an IP-Adapter); ``options`` are ``from_pretrained``'s model options (the families'
    flags)."""
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from multidiffusion.pipeline import MultiDiffusion

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    md = MultiDiffusion.from_pretrained(
        model,
        torch_dtype=getattr(torch, args.dtype) if args.dtype else None,
        device=args.device,
        allow_pickle=allow_pickle,
        config=args.config,
        prediction_type=args.prediction_type,
        **options,
    )
    nets = controlnet if controlnet is not None else [typed_weights(s) for s in getattr(args, "controlnet", None) or []]
    if nets:  # pickles only when every one was typed (--allow-pickle covers typed files alone)
        allow = all(pickle_allowed(net, args.allow_pickle) for net in nets)
        md.set_controlnet(nets if len(nets) > 1 else nets[0], allow_pickle=allow)
    for name, spec, weight in getattr(args, "lora", None) or []:  # checked by lora_choice
        try:
            md.load_lora(str(spec) if isinstance(spec, TypedPath) else spec, adapter_name=name, weight=weight)
        except ValueError as exc:
            fail(f"--lora {name}: {exc}")
    for kind in KINDS:  # a kind's weights from its loading flags (an IP-Adapter), as typed
        given = {f.field: getattr(args, _dest(f.flag), None) for f in kind.load_flags}
        kind.load(md, {k: v for k, v in given.items() if v is not None}, bool(getattr(args, "allow_pickle", False)))
    md.set_progress_bar_config(disable=args.quiet, leave=False)
    if getattr(args, "compile", False):
        md.compile()
    return md


def preflight(md: Any, options: Any, args: argparse.Namespace, **context: Any) -> None:
    """The run's estimate (window evaluations, VAE tiles, memory: :mod:`multidiffusion.estimate`, no
    model call) as one line on stderr before the progress bar (not with -q), and a refusal, within
    seconds, of a run that needs more memory than is available (unless --ignore-estimate)."""
    from multidiffusion.engine.distributed import is_writer
    from multidiffusion.estimate import estimate, memory_refusal

    try:
        found = estimate(md, options, **context)
    except ValueError as exc:
        fail(str(exc))
    if not args.quiet and is_writer():
        print(found.line(), file=sys.stderr, flush=True)
    refusal = memory_refusal(found)
    if refusal is not None and not getattr(args, "ignore_estimate", False):
        fail(refusal)


def report(saved: Any, extra: Sequence[Path] = ()) -> None:
    """The one line a verb prints when it is done (by rank 0 alone when processes share the run)."""
    from multidiffusion.engine.distributed import is_writer

    if not is_writer():
        return
    written = [str(p) for p in [*saved.paths, *extra]]
    print(f"wrote {', '.join(written)} ({saved.summary})")
