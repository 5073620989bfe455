"""``multidiffusion serve``: the web app (Gradio), on this machine only unless told otherwise."""

from __future__ import annotations

import argparse
import sys

from multidiffusion.cli.common import add_model_options, fail, load_model
from multidiffusion.cli.sources import control_net_choice, lora_choice

HELP = """\
Start the web app: Panorama, Regions, Upscale and Inpaint / Outpaint tabs in the browser, over the
same engine as the command line. One generation runs at a time; others wait in a queue.

The models the page offers are fixed here (repeat --model for a list), and so are the upscaler model
files besides the resampling filters (--upscaler, repeated); the page never takes a path. Requests
are capped by --max-side (pixels per canvas side), --max-steps and --max-upload-mb.

examples:
  multidiffusion serve                                   # demo model, http://127.0.0.1:7860
  multidiffusion serve --model stabilityai/stable-diffusion-2-base --model demo --max-side 4608
"""


def register(p: argparse.ArgumentParser) -> None:
    from multidiffusion.app.limits import (
        DEFAULT_MAX_EVALUATIONS,
        DEFAULT_MAX_SIDE,
        DEFAULT_MAX_STEPS,
        DEFAULT_MAX_UPLOAD_MB,
    )

    p.conflict_handler = "resolve"  # --model below replaces add_model_options' single --model
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    g.add_argument("--queue-size", type=int, default=16, help="requests that may wait for their turn (default 16)")
    g.add_argument(
        "--upscaler",
        action="append",
        metavar="NAME=FILE",
        help="an upscaler model file (ESRGAN family, .safetensors; .pth needs --allow-pickle) the Upscale tab "
        "offers as NAME besides the filters; repeat for a list",
    )
    g = p.add_argument_group("limits")
    g.add_argument(
        "--max-side",
        type=int,
        default=DEFAULT_MAX_SIDE,
        help=f"largest canvas side in pixels a request may ask for (default {DEFAULT_MAX_SIDE})",
    )
    g.add_argument(
        "--max-steps",
        type=int,
        default=DEFAULT_MAX_STEPS,
        help=f"most denoising steps a request may ask for (default {DEFAULT_MAX_STEPS})",
    )
    g.add_argument(
        "--max-evaluations",
        type=int,
        default=DEFAULT_MAX_EVALUATIONS,
        help="most window evaluations a request may cost (windows x prompts x steps, plus the VAE's tiles and the "
        f"prompts converted to window evaluations): the compute bound (default {DEFAULT_MAX_EVALUATIONS})",
    )
    g.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest upload in MB (default {DEFAULT_MAX_UPLOAD_MB:g})",
    )
    add_model_options(p)
    model_group = next(g for g in p._action_groups if g.title == "model")
    model_group.add_argument(
        "--model",
        action="append",
        metavar="MODEL",
        help="a model the page offers: 'demo', 'demo-lcm', a repo id, a diffusers folder or a .safetensors file; "
        "repeat for a list (default: demo)",
    )
    p.set_defaults(run=run, quiet=True)


def run(args: argparse.Namespace) -> None:
    from multidiffusion.app.server import LOOPBACK, create_app, launch, private_temp_folder

    if "gradio" not in sys.modules:  # results and uploads in a folder no other local user can read
        private_temp_folder()
    try:
        import gradio  # noqa: F401
    except ImportError:
        fail("the web app needs Gradio, which is not installed: pip install 'multidiffusion[app]'")
    from multidiffusion.app.limits import ServerLimits
    from multidiffusion.app.upscalers import Upscalers, parse_upscaler

    if not 1 <= args.port <= 65535:
        fail(f"--port must be from 1 to 65535, got {args.port}")
    if args.queue_size < 1:
        fail(f"--queue-size must be at least 1, got {args.queue_size}")
    limits = ServerLimits(args.max_side, args.max_steps, args.max_upload_mb, args.max_evaluations)
    upscalers = Upscalers([parse_upscaler(u) for u in args.upscaler or []], bool(args.allow_pickle))
    models = args.model or ["demo"]
    if args.host.startswith("[") and args.host.endswith("]"):  # an IPv6 address as URLs write it
        args.host = args.host[1:-1]
    if args.host not in LOOPBACK:
        print(f"warning: serving on {args.host}: anyone who can reach this address can use the page", file=sys.stderr)
    lora_choice(args, None, None)
    args.controlnet = control_net_choice(args, None)  # checked before any model loads; every model runs them
    app = create_app(models, lambda name: load_model(name, args), limits, upscalers=upscalers)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"multidiffusion: serving {', '.join(models)} at http://{host}:{args.port} (Ctrl+C to stop)", flush=True)
    launch(app, host=args.host, port=args.port, limits=limits, queue_size=args.queue_size)
