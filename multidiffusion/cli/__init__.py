"""The ``multidiffusion`` command line: one verb per job, thin over the Python API.

Each verb lives in its own module with ``register(subparsers)``; bad input prints one line
``error: ...`` and exits with status 2, and nothing is written.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from multidiffusion.cli import img2img, inpaint, outpaint, panorama, regions, serve, upscale
from multidiffusion.cli.common import EXIT_USAGE, Parser, fail

__all__ = ["build_parser", "main"]

VERBS = [panorama, regions, img2img, upscale, inpaint, outpaint, serve]


def build_parser() -> Parser:
    parser = Parser(
        prog="multidiffusion",
        description="Panoramas of any size, region prompts, and image-to-image, upscaling, inpainting and "
        "outpainting at any size with Stable Diffusion, no training "
        "(MultiDiffusion, Bar-Tal et al., ICML 2023). Run `multidiffusion COMMAND --help` for each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for verb in VERBS:
        verb.register(sub)
    return parser


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
        fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal failure: one line, the traceback on request
        if os.environ.get("MULTIDIFFUSION_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc} (set MULTIDIFFUSION_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 0
