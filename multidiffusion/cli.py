"""The ``multidiffusion`` command line: one verb per job, thin over the Python API.

Bad input prints one line ``error: ...`` and exits with status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main"]

EXIT_USAGE = 2

PANORAMA_HELP = """\
Generate a panorama: the canvas is denoised as many overlapping windows of the model's native size
whose predictions are averaged every step (MultiDiffusion, Bar-Tal et al. 2023).

examples:
  multidiffusion panorama --model demo "snowy mountains at sunset" --width 1024 -o pano.png
  multidiffusion panorama "a photo of the dolomites" --model stabilityai/stable-diffusion-2-base \\
      --width 4608 --seed 1 -o dolomites.png
  multidiffusion panorama --from dolomites.png --steps 30 -o again.png   # rerun with changes
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``error: ...`` line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        _fail(message)


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _window(text: str) -> int | tuple[int, int]:
    """'64' or '64x96' (rows x columns, latent pixels)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or HxW, got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise argparse.ArgumentTypeError(f"expected an integer or HxW, got {text!r}")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        help="'demo' (shipped, offline), a Hugging Face repo id, a diffusers folder or a .safetensors "
        "checkpoint (default: demo)",
    )
    g.add_argument(
        "--config", help="for a single-file checkpoint: a diffusers folder or repo id with its configuration"
    )
    g.add_argument(
        "--allow-pickle", action="store_true", help="allow .ckpt/.bin/.pt weights (they can run code)"
    )
    g.add_argument("--device", help="cuda, cpu or mps (default: cuda if present)")
    g.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], help="default: float16 on GPU, float32 on CPU"
    )


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=int, help="denoising steps (default 50)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5)")
    g.add_argument("--negative", help="negative prompt: what the image should not show")
    g.add_argument(
        "--seed", type=int, help="random seed; the same seed, device and dtype give the same image"
    )
    g.add_argument(
        "--scheduler",
        help="ddim (default, as the paper), euler, euler_a, dpm++2m, dpm++2m_karras, unipc, pndm, heun, ...",
    )
    g.add_argument("--batch-size", type=int, help="views per model call (default: 4 on CPU, 16 on GPU)")
    g.add_argument("--num-images", type=int, help="images to generate (out.png, out-2.png, ...)")
    g.add_argument("-o", "--output", required=True, help="output PNG (parameters are stored in it)")
    g.add_argument(
        "--from",
        dest="from_png",
        metavar="PNG",
        help="take the settings of an image we wrote; flags override",
    )
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="multidiffusion",
        description="Panoramas of any size and region prompts with Stable Diffusion, no training "
        "(MultiDiffusion, ICML 2023).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    pano = sub.add_parser(
        "panorama",
        help="generate a panorama of any width or height",
        description=PANORAMA_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pano.add_argument("prompt", nargs="?", help="what the panorama shows")
    g = pano.add_argument_group("canvas")
    g.add_argument("--width", type=int, help="pixels, a multiple of 8 (default: 4x the model's native size)")
    g.add_argument("--height", type=int, help="pixels, a multiple of 8 (default: the model's native size)")
    g.add_argument(
        "--window", type=_window, help="window in latent pixels, N or HxW (default: the model's native)"
    )
    g.add_argument("--stride", type=_window, help="window stride in latent pixels (default: window / 8)")
    g.add_argument(
        "--circular", action="store_true", default=None, help="360-degree panorama that wraps around"
    )
    _add_sampling_options(pano)
    _add_model_options(pano)
    pano.set_defaults(run=_run_panorama)
    return parser


# -- running ---------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace, mapping: dict[str, str], mode: str) -> dict[str, Any]:
    """Flags given on the command line over settings stored in --from's PNG."""
    stored: dict[str, Any] = {}
    if args.from_png:
        from .io import read_parameters

        if not Path(args.from_png).is_file():
            _fail(f"--from: no such file {args.from_png!r}")
        try:
            stored = read_parameters(args.from_png)
        except (ValueError, OSError) as exc:
            _fail(f"--from {args.from_png}: {exc}")
        if stored.get("mode", mode) != mode:
            _fail(f"--from {args.from_png} was made by `multidiffusion {stored['mode']}`, not {mode}")
    settings = {key: stored.get(key) for key in mapping.values()}
    for flag, key in mapping.items():
        value = getattr(args, flag)
        if value is not None:
            settings[key] = value
    return settings


PANORAMA_FLAGS = {
    "prompt": "prompt",
    "negative": "negative_prompt",
    "width": "width",
    "height": "height",
    "window": "window",
    "stride": "stride",
    "circular": "circular",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "seed": "seed",
    "scheduler": "scheduler",
    "batch_size": "view_batch_size",
    "num_images": "num_images_per_prompt",
    "model": "model",
}


def _precheck(settings: dict[str, Any]) -> None:
    """Checks that need no model, so bad input fails before minutes of loading."""
    from .schedulers import scheduler_name
    from .validation import MAX_STEPS, check_int, check_number, check_side, pair

    flags = {v: k.replace("_", "-") for k, v in PANORAMA_FLAGS.items()}
    checks = {
        "width": lambda n, v: check_side(n, v),
        "height": lambda n, v: check_side(n, v),
        "num_inference_steps": lambda n, v: check_int(n, v, 1, MAX_STEPS),
        "guidance_scale": lambda n, v: check_number(n, v, 0),
        "view_batch_size": lambda n, v: check_int(n, v, 1),
        "num_images_per_prompt": lambda n, v: check_int(n, v, 1, 64),
        "scheduler": lambda n, v: scheduler_name(v),
    }
    for key, check in checks.items():
        if settings.get(key) is not None:
            check(f"--{flags.get(key, key)}", settings[key])
    window = settings.get("window")
    for w in pair("--window", window) if window is not None else ():
        check_int("--window", w, 8)
    stride = settings.get("stride")
    if stride is not None:
        limits = pair("--window", window) if window is not None else (None, None)
        for s, w in zip(pair("--stride", stride), limits):
            check_int("--stride", s, 1, w)


def _load(settings: dict[str, Any], args: argparse.Namespace):
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from . import MultiDiffusion

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    md = MultiDiffusion.from_pretrained(
        settings.get("model") or "demo",
        torch_dtype=dtype,
        device=args.device,
        allow_pickle=args.allow_pickle,
        config=args.config,
    )
    md.set_progress_bar_config(disable=args.quiet, leave=False)
    return md


def _outputs(path: Path, count: int) -> list[Path]:
    return [path] + [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(2, count + 1)]


def _run_panorama(args: argparse.Namespace) -> None:
    import torch

    from .io import check_output_path, save_png

    settings = _settings(args, PANORAMA_FLAGS, "panorama")
    if not settings.get("prompt"):
        _fail("a prompt is required (or --from an image we wrote)")
    output = check_output_path(args.output, "--output")
    _precheck(settings)
    if settings.get("seed") is None:
        settings["seed"] = secrets.randbelow(2**32)
    seed = settings.pop("seed")
    model = settings.pop("model", None)
    for key in ("window", "stride"):  # stored as JSON lists
        if isinstance(settings.get(key), list):
            settings[key] = tuple(settings[key])
    md = _load({"model": model}, args)
    kwargs = {k: v for k, v in settings.items() if v is not None}
    if isinstance(kwargs.get("negative_prompt"), list):  # stored per prompt
        kwargs["negative_prompt"] = kwargs["negative_prompt"][0]
    start = time.perf_counter()
    out = md.panorama(generator=torch.Generator("cpu").manual_seed(seed), **kwargs)
    elapsed = time.perf_counter() - start
    paths = _outputs(output, len(out.images))
    for path in paths[1:]:
        check_output_path(path, "--output")
    for i, (image, path) in enumerate(zip(out.images, paths)):
        params = {**out.parameters, "image_index": i}
        save_png(image, path, params)
    w, h = out.images[0].size
    print(
        f"wrote {', '.join(map(str, paths))} ({w}x{h}, {elapsed:.1f} s, {out.stats.model_calls} model calls)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``multidiffusion`` command."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        args.run(args)
    except ValueError as exc:  # bad input, named by the library
        _fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal failure: one line, the traceback on request
        if os.environ.get("MULTIDIFFUSION_DEBUG"):
            raise
        print(
            f"error: {type(exc).__name__}: {exc} (set MULTIDIFFUSION_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
