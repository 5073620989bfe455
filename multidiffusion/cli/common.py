"""What the command-line verbs share: the parser, option groups, settings from --from, loading."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "EXIT_USAGE",
    "Parser",
    "add_model_options",
    "add_sampling_options",
    "fail",
    "load_model",
    "numbered_outputs",
    "original_size_type",
    "settings_from",
    "stored_settings",
    "window_type",
]

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``error: ...`` line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


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


def original_size_type(text: str) -> str | tuple[int, int]:
    """'canvas', 'window' or HxW pixels, e.g. '2048x2048'."""
    if text in ("canvas", "window"):
        return text
    size = window_type(text) if "x" in text.lower() else None
    if not isinstance(size, tuple):
        raise argparse.ArgumentTypeError(f"expected canvas, window or HxW pixels, got {text!r}")
    return size


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        help="'demo' (shipped, offline), a Hugging Face repo id, a diffusers folder or a .safetensors "
        "checkpoint (default: demo)",
    )
    g.add_argument("--config", help="for a .safetensors file: diffusers folder or repo id with its config")
    g.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.bin/.pt weights (they can run code)")
    g.add_argument(
        "--prediction-type",
        choices=["epsilon", "v_prediction", "sample"],
        help="override the model's (e.g. v_prediction for an SD 2.x 768-v .safetensors file)",
    )
    g.add_argument(
        "--crops-coords",
        choices=["zero", "offset"],
        help="SDXL: each view's crop conditioning, (0, 0) or its offset on the canvas (default: zero)",
    )
    g.add_argument(
        "--original-size",
        type=original_size_type,
        help="SDXL: each view's original-size conditioning: canvas, window or HxW pixels (default: canvas)",
    )
    g.add_argument("--device", help="cuda, cpu or mps (default: cuda if present)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: float16 on GPU, else float32")
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet: pays on GPUs for long runs; on CPUs it rarely does (see README)",
    )


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=int, help="denoising steps (default 50)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5)")
    g.add_argument("--negative", help="negative prompt: what the image should not show")
    g.add_argument("--seed", type=int, help="random seed; the same seed, device and dtype give the same image")
    g.add_argument(
        "--scheduler",
        help="ddim (default, as the paper), euler, euler_a, dpm++2m, dpm++2m_karras, unipc, pndm, heun, ...",
    )
    g.add_argument("--batch-size", type=int, help="views per model call (default: 4 on CPU, 16 on GPU)")
    g.add_argument("--num-images", type=int, help="images to generate (out.png, out-2.png, ...)")
    g.add_argument("-o", "--output", required=True, help="output PNG (parameters are stored in it)")
    g.add_argument("--from", dest="from_png", metavar="PNG", help="reuse the settings stored in a PNG; flags override")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def stored_settings(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """The parameters stored in --from's PNG ({} without --from); it must have been made by ``mode``."""
    if not args.from_png:
        return {}
    from multidiffusion.metadata import read_parameters

    if not Path(args.from_png).is_file():
        fail(f"--from: no such file {args.from_png!r}")
    try:
        stored = read_parameters(args.from_png)
    except (ValueError, OSError) as exc:
        fail(f"--from {args.from_png}: {exc}")
    if stored.get("mode", mode) != mode:
        fail(f"--from {args.from_png} was made by `multidiffusion {stored['mode']}`, not {mode}")
    return stored


def settings_from(args: argparse.Namespace, mapping: dict[str, str], mode: str) -> dict[str, Any]:
    """Flags given on the command line over settings stored in --from's PNG (keys: API names)."""
    stored = stored_settings(args, mode)
    settings = {key: stored.get(key) for key in mapping.values()}
    for flag, key in mapping.items():
        value = getattr(args, flag)
        if value is not None:
            settings[key] = value
    return settings


def load_model(model: str | None, args: argparse.Namespace, **options: Any):
    """The MultiDiffusion object for --model (default: demo) with --device, --dtype, --config,
    --prediction-type, --crops-coords, --original-size, --compile; ``options`` (``from_pretrained``'s SDXL
    micro-conditioning, e.g. from a PNG's stored settings) take precedence over the flags."""
    flags = {"crops_coords_top_left": args.crops_coords, "original_size": args.original_size}
    options = {**{k: v for k, v in flags.items() if v is not None}, **options}
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from multidiffusion import MultiDiffusion

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    md = MultiDiffusion.from_pretrained(
        model or "demo",
        torch_dtype=getattr(torch, args.dtype) if args.dtype else None,
        device=args.device,
        allow_pickle=args.allow_pickle,
        config=args.config,
        prediction_type=args.prediction_type,
        **options,
    )
    md.set_progress_bar_config(disable=args.quiet, leave=False)
    if getattr(args, "compile", False):
        md.compile()
    return md


def numbered_outputs(path: Path, count: int) -> list[Path]:
    """out.png, out-2.png, out-3.png, ... for ``count`` images."""
    return [path] + [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(2, count + 1)]
