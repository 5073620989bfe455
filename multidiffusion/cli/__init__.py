"""The ``multidiffusion`` command line: one verb per job, thin over the Python API.

Each verb lives in its own module with ``register(subparsers)``; bad input prints one line
``error: ...`` and exits with status 2, and nothing is written.

Under ``torchrun --nproc-per-node N -m multidiffusion VERB ...`` the processes join one process
group (:func:`multidiffusion.engine.distributed.init`: NCCL on GPUs, gloo otherwise) and every
verb's views are sharded across them; rank 0 shows progress and writes the files.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from multidiffusion.cli.parser import EXIT_USAGE, Parser, fail, fill_verb

__all__ = ["VERBS", "build_parser", "main"]

VERBS: dict[str, str] = {
    "panorama": "generate a panorama of any width or height",
    "regions": "generate an image whose regions follow their own prompts",
    "img2img": "re-work an image of any size under a prompt",
    "upscale": "upscale an image, re-worked over windows at low strength",
    "inpaint": "repaint the masked part of an image",
    "outpaint": "extend an image beyond its borders",
    "edit": "edit an image of any size as a prompt instructs (an editing model)",
    "batch": "generate many images from a JSON-lines file or a folder of scene files",
    "serve": "start the web app (needs multidiffusion[app])",
}
"""Verb -> its one-line summary. Its flags, description and run live in ``multidiffusion.cli.<verb>``
(``HELP``, ``register(parser)``, ``run(args)``), imported when the verb is chosen."""


def build_parser(lazy: bool = False) -> Parser:
    """The command line's parser; ``lazy``: each verb's flags are added only when it is chosen (what
    :func:`main` uses, so ``multidiffusion --help`` imports no torch)."""
    parser = Parser(
        prog="multidiffusion",
        description="Panoramas of any size, region prompts, and image-to-image, upscaling, inpainting and "
        "outpainting at any size with Stable Diffusion, no training "
        "(MultiDiffusion, Bar-Tal et al., ICML 2023). Run `multidiffusion COMMAND --help` for each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for verb, summary in VERBS.items():
        p = sub.add_parser(verb, help=summary)
        if not lazy:
            fill_verb(p, verb)
    return parser


@contextlib.contextmanager
def _process_group(args: Any) -> Iterator[None]:
    """Under torchrun (``WORLD_SIZE`` > 1), the process group of the run, left when it ends."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or args.command == "serve":
        yield
        return
    import torch.distributed as dist

    from multidiffusion.engine import distributed

    made = not dist.is_initialized()
    distributed.init(getattr(args, "device", None))
    try:
        yield
    finally:
        if made and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``multidiffusion`` command."""
    parser = build_parser(lazy=True)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        with _process_group(args):
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
