"""``multidiffusion batch FILE``: many images from a JSON-lines file or a folder of scene files.

Each JSON line (or scene file) is one task's settings as a scene holds them (``task``, the API's
argument names, ``model``, input files relative to the batch file) plus ``output``: the PNG to write,
relative to ``--output-dir`` (default: the batch file's folder; a scene file's default is its own
name with ``.png``). Every item is checked up front with the scene parser the verbs use
(:func:`~multidiffusion.files.scene.parse_scene`); a bad one is reported with its line number and
the others still run. The files are read by the bounded readers of :mod:`multidiffusion.io.text`
(regular files only; a JSON-lines file streamed, at most 16 MB a line), so one bad line or file
(its size, UTF-8, JSON or TOML, nesting, number length, settings) is that item's error, never the
batch's. Two items writing one PNG (numbered outputs included) and an item writing over one of its
own input files are refused by name. Items whose outputs exist already are skipped (resume;
``--overwrite`` redoes them). Under torchrun the items are shared among the processes (data
parallel: each image runs whole in one process). The exit status is 1 when an item failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multidiffusion.cli.batch_items import Item, read_items
from multidiffusion.cli.common import add_model_options, fail, load_model, typed_model_options
from multidiffusion.cli.sources import named_pickle
from multidiffusion.io.text import (
    TextFileError,
)
from multidiffusion.io.trust import typed_weights

HELP = """\
Generate many images, one per line of a JSON-lines file or per scene file of a folder. A line holds
one task's settings, named as in the Python API and in scene files, and the PNG to write:

  {"task": "panorama", "prompt": "snowy mountains", "width": 1024, "seed": 1, "output": "mountains.png"}
  {"task": "regions", "background": "a beach", "regions": [{"prompt": "a red ball", "box": [0.1, 0.5, 0.4, 0.9]}],
   "output": "beach.png"}
  {"task": "upscale", "image": "photo.png", "scale": 2, "output": "photo-2x.png"}

A line may be at most 16 MB; a bad line is reported by its number and the others run. Two lines may
not write one PNG, nor a line over one of its own input files. Outputs that exist already are
skipped, so an interrupted batch resumes where it stopped. Under
`torchrun --nproc-per-node N -m multidiffusion batch ...` the processes share the items.

examples:
  multidiffusion batch examples/batch/jobs.jsonl --output-dir out/
  multidiffusion batch examples/demo --output-dir out/   # every .toml/.json scene of the folder
  torchrun --nproc-per-node 2 -m multidiffusion batch examples/batch/jobs.jsonl --output-dir out/
"""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="FILE", help="a JSON-lines file, or a folder of .toml/.json scene files")
    p.add_argument(
        "--output-dir", metavar="DIR", help="where outputs go, made if missing (default: the batch file's folder)"
    )
    p.add_argument("--overwrite", action="store_true", help="redo items whose outputs exist (default: skip them)")
    p.add_argument(
        "--allow-outside-files",
        action="store_true",
        help="let items read inputs outside the batch file's folder and write outside --output-dir",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--ignore-estimate",
        action="store_true",
        help="run an item even when its estimate says it needs more memory than is available",
    )
    add_model_options(p)
    p.set_defaults(run=run)


@dataclass
class Outcome:
    """What happened to item ``index``: "written", "skipped" or "failed" (with the error)."""

    index: int
    where: str
    status: str
    error: str = ""


def run(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from multidiffusion.engine import distributed

    started = time.perf_counter()
    source = Path(args.source).expanduser()
    if not source.exists():
        fail(f"{args.source!r} does not exist (a JSON-lines file or a folder of scene files)")
    output_dir = (
        Path(args.output_dir).expanduser() if args.output_dir else (source if source.is_dir() else source.parent)
    )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--output-dir {str(output_dir)!r} can't be made: {exc.strerror}")
    try:
        items = read_items(source, output_dir, args.allow_outside_files, bool(args.allow_pickle))
    except TextFileError as exc:  # the file as a whole: not a regular file, too many items
        fail(str(exc))
    if not items:
        fail(f"{args.source}: no items (JSON lines, or .toml/.json scene files)")
    shard = distributed.active()
    writer = shard is None or shard.rank == 0
    known = [Outcome(k, i.where, "failed", i.error) for k, i in enumerate(items) if i.error is not None]
    if writer:  # at once: a long batch should not hide a typo until it ends
        for o in known:
            _report(o)
    todo = [k for k, item in enumerate(items) if item.error is None]
    if not args.overwrite:  # decided once, by rank 0, so that the ranks share one list
        done = set(_agreed(shard, [k for k in todo if items[k].done()]))
        known += [Outcome(k, items[k].where, "skipped") for k in sorted(done)]
        todo = [k for k in todo if k not in done]
    mine = todo if shard is None else todo[shard.rank :: shard.world]
    models = _Models(args)
    ran = []
    with distributed.local(), tqdm(total=len(mine), desc="batch", disable=args.quiet or not writer) as bar:
        for k in mine:
            ran.append(_run_item(k, items[k], models))
            if ran[-1].status == "failed":
                _report(ran[-1], bar)
            bar.update()
    outcomes = sorted(known + _gathered(shard, ran), key=lambda o: o.index)
    if writer:
        _summary(outcomes, len(items), time.perf_counter() - started)
    if any(o.status == "failed" for o in outcomes):
        raise SystemExit(1)


def _run_item(index: int, item: Item, models: _Models) -> Outcome:
    from multidiffusion.estimate import check_memory
    from multidiffusion.generation import run_and_save

    try:
        scene = item.scene  # parsed again: the up-front check kept none
        md = models.get(scene)
        if not getattr(models.args, "ignore_estimate", False):  # refused in seconds, not after minutes
            check_memory(md, scene.options)
        run_and_save(md, scene.options, item.output)
    except Exception as exc:  # one item's failure is reported, the others run
        if isinstance(exc, TextFileError):
            message = exc.reason  # the item's name says the file already
        else:
            message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        return Outcome(index, item.where, "failed", message)
    return Outcome(index, item.where, "written")


class _Models:
    """The model of the items, loaded once and kept while the next item uses the same one."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.key: tuple[Any, ...] | None = None
        self.md: Any = None

    def get(self, scene: Any) -> Any:
        # --model and --controlnet as typed (the only weights --allow-pickle covers), else the line's
        # own (a file under the batch file's folder, or a repo id from the hub; never a pickle)
        model = self.args.model or scene.model or "demo"
        nets = tuple(scene.controlnet or [typed_weights(s) for s in self.args.controlnet or []])
        typed = self.args.model is not None
        named = [] if typed else [(model, "model", "--model FILE")]
        for spec, field, flag in [*named, *((n, "controlnet", "--controlnet FILE") for n in nets)]:
            refusal = named_pickle(self.args, spec, field, flag)
            if refusal:
                raise ValueError(refusal)
        options = {**scene.model_options, **typed_model_options(self.args)}  # a line's, then the flags'
        key = (model, nets, tuple(sorted(options.items(), key=lambda kv: kv[0])))
        if key != self.key:
            self.md = None  # free the previous one first
            pickles = typed and bool(self.args.allow_pickle)
            md = load_model(model, self.args, pickles, list(nets) or None, **options)
            md.set_progress_bar_config(disable=True)  # the batch's bar counts images
            self.md, self.key = md, key
        return self.md


def _agreed(shard: Any, values: list[int]) -> list[int]:
    """Rank 0's ``values`` on every rank (alone: the values)."""
    if shard is None:
        return values
    import torch.distributed as dist

    box = [values]
    dist.broadcast_object_list(box, src=0, group=shard.group)
    return box[0]


def _gathered(shard: Any, outcomes: list[Outcome]) -> list[Outcome]:
    """Every rank's ``outcomes`` (alone: these)."""
    if shard is None:
        return outcomes
    import torch.distributed as dist

    every: list[Any] = [None] * shard.world
    dist.all_gather_object(every, outcomes, group=shard.group)
    return [o for rank in every for o in rank]


def _report(outcome: Outcome, bar: Any = None) -> None:
    """A failed item's one line, on stderr (through the progress bar, if any, so it stays whole)."""
    line = f"error: {outcome.where}: {outcome.error}"
    if bar is not None and not bar.disable:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


def _summary(outcomes: list[Outcome], total: int, seconds: float) -> None:
    count = {s: sum(o.status == s for o in outcomes) for s in ("written", "skipped", "failed")}
    failed = [o.where for o in outcomes if o.status == "failed"]
    print(
        f"batch: {count['written']} written, {count['skipped']} skipped (output exists), {count['failed']} failed, "
        f"of {total} items in {seconds:.1f} s" + (f" (failed: {', '.join(failed)})" if failed else "")
    )
