"""Where a verb's settings and weights come from, and what each origin may load
(:mod:`multidiffusion.io.trust`): the files typed on the command line (the only ones --allow-pickle
covers), a scene file's names, and the settings --from reads from a PNG (which name no file: inputs,
LoRAs and ControlNets are given again)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from multidiffusion.cli.common import fail, typed_model_options
from multidiffusion.files.metadata import StoredSettings, is_model_name, model_label, read_settings
from multidiffusion.io.trust import TypedPath, pickle_allowed, typed_weights

__all__ = [
    "INPUT_FLAGS",
    "control_net_choice",
    "lora_choice",
    "model_choice",
    "named_pickle",
    "refuse_named_pickle",
    "same_input",
    "stored_data",
    "stored_settings",
]


def lora_choice(args: argparse.Namespace, stored: StoredSettings | None, options: Any, scene: Any = None) -> None:
    """Checks --lora (or a scene's ``loras``) before any model loads: files exist and aren't pickles
    unless allowed, names are unique, every region's ``loras`` names one, and an image made with
    LoRAs (``--from``) gets them again. Leaves ``args.lora`` as (name, typed file, scene file or repo id, weight)."""
    from multidiffusion.models.lora import check_lora_source

    typed = [(name, typed_weights(spec), weight) for name, spec, weight in getattr(args, "lora", None) or []]
    loras = typed or (scene.loras if scene is not None and scene.loras else None) or []
    if stored is not None and stored.loras and not loras:
        made = ", ".join(f"{name} ({file})" for name, file in stored.loras.items())
        fail(
            f"--from {args.from_png}: the image was made with the LoRAs {made}, which the PNG does not store; pass "
            "--lora NAME=FILE[:WEIGHT] again"
        )
    chosen, names = [], set()
    for name, spec, weight in loras:
        if name in names:
            fail(f"--lora: the name {name!r} is given twice; name them apart with NAME=FILE")
        names.add(name)
        try:
            refuse_named_pickle(args, spec, f"loras.{name}", f"--lora {name}=FILE")
            check_lora_source(spec, pickle_allowed(spec, getattr(args, "allow_pickle", False)), f"--lora {name}")
        except ValueError as exc:
            fail(str(exc))
        chosen.append((name, spec, float(weight)))
    for i, region in enumerate(getattr(options, "regions", None) or []):
        for name in region.loras or {}:
            if name not in names:
                given = ", ".join(sorted(names)) or "none"
                fail(f"regions[{i}].loras: {name!r} is not a LoRA given with --lora NAME=FILE (given: {given})")
    args.lora = chosen


def control_net_choice(
    args: argparse.Namespace,
    control_image: Any,
    source: str = "",
    regional: bool = False,
    scene: Any = None,
    needs_image: bool = False,
) -> list[str] | None:
    """The ControlNets to load, checked before any model loads: --controlnet as typed (files as
    absolute :class:`~multidiffusion.io.trust.TypedPath`, the only ones --allow-pickle covers), else
    the ``scene`` file's (under its folder, or repo ids from the hub). One per ``control_image`` (the
    settings' top-level one: None, one, or a list), and some when there is a control image
    (``regional``: a region has one). ``source``: a scene file or ``--from PNG``, for the message (a
    PNG never stores the ControlNet). ``needs_image``: a ControlNet with no control image at all is
    refused (it would run unused; an upscale's Tile ControlNet takes its input instead)."""
    from multidiffusion.models.controlnet import check_controlnet_source

    typed = [typed_weights(spec) for spec in getattr(args, "controlnet", None) or []]
    specs = typed or list(getattr(scene, "controlnet", None) or [])
    if not specs:
        if control_image is None and not regional:
            return None
        if source.startswith("--from"):
            fail(
                f"{source}: the image was made with a ControlNet, which the PNG does not store; pass "
                "--controlnet MODEL again"
            )
        fail(f"{source + ': ' if source else ''}a control image needs a ControlNet: pass --controlnet MODEL")
    if needs_image and control_image is None and not regional:
        fail("--controlnet: a ControlNet needs a control image: give --control-image FILE (one per --controlnet)")
    images = control_image if isinstance(control_image, (list, tuple)) else [control_image]
    if control_image is not None and len(images) != len(specs):
        fail(f"--control-image: give one per --controlnet ({len(specs)}), got {len(images)}")
    for spec in specs:
        refuse_named_pickle(args, spec, "controlnet", "--controlnet FILE")
        try:
            check_controlnet_source(spec, pickle_allowed(spec, args.allow_pickle), "--controlnet")
        except ValueError as exc:
            fail(str(exc))
    return specs


def stored_settings(args: argparse.Namespace, task: str) -> StoredSettings | None:
    """The settings stored in --from's PNG (None without --from); it must have been made by ``task``."""
    if not args.from_png:
        return None
    try:
        return read_settings(args.from_png, task)
    except ValueError as exc:
        fail(f"--from {args.from_png}: {exc}")


INPUT_FLAGS = {"image": "--image", "mask": "--mask", "control_image": "--control-image"}
"""Stored input keys -> the flag that gives the input again."""


def stored_data(args: argparse.Namespace, stored: StoredSettings, given: dict[str, Any]) -> dict[str, Any]:
    """The settings --from's PNG holds, for the scene reader (as stored settings: they name no
    file); an input the PNG records by file name must be given again (it is never read from it)."""
    for key, record in stored.inputs.items():
        if key not in given:
            first = record[0] if isinstance(record, list) else record
            flag = INPUT_FLAGS.get(key, key)
            if isinstance(first, dict) and first.get("path") is None:
                fail(
                    f"--from {args.from_png}: the {key} was given in memory: the PNG does not hold it; pass {flag} FILE"
                )
            shown = f" {Path(first['path']).name!r}" if isinstance(first, dict) else ""
            fail(
                f"--from {args.from_png}: the image was made from the {key}{shown}, which the PNG names but does not "
                f"hold (settings stored in a PNG are never read from disk); pass {flag} FILE again"
            )
    return dict(stored.values)


def same_input(stored: StoredSettings, key: str, value: Any) -> bool:
    """Whether ``value``, an input the user gave again, is the file the PNG recorded under ``key``
    (the same SHA-256): then the stored settings that follow from it (the canvas size) still hold."""
    import hashlib

    record = stored.inputs.get(key)
    if not isinstance(record, dict) or not record.get("sha256") or not isinstance(value, Path) or not value.is_file():
        return False
    digest = hashlib.sha256()
    with value.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == str(record["sha256"]).lower()


def model_choice(
    args: argparse.Namespace, stored: StoredSettings | None, scene: Any = None
) -> tuple[str, bool, dict[str, Any]]:
    """(model, allow_pickle, model options: the families' flags) to load: --model as typed (the only
    model --allow-pickle covers); else a scene file's model (a file under its folder, or a repo id
    from the hub); else the model --from's PNG names, if it is the demo or a repo id (stored
    settings never name files to load, see :mod:`multidiffusion.files.metadata`); else the demo."""
    typed = typed_model_options(args)
    if scene is not None:  # a scene's model options (clip_skip, ...) apply to the model it runs with
        typed = {**scene.model_options, **typed}
    if args.model is not None:  # the stored model's options apply when it is the same model
        same = stored is not None and stored.model == model_label(args.model)
        return args.model, bool(args.allow_pickle), {**(stored.model_options if same else {}), **typed}
    if scene is not None and scene.model is not None:
        refuse_named_pickle(args, scene.model, "model", "--model FILE")
        return scene.model, False, typed
    if stored is None or stored.model is None:
        return "demo", False, typed
    if not is_model_name(stored.model):
        fail(
            f"--from {args.from_png}: the image was made with the model {stored.model!r}, a file; pass --model PATH "
            "to use it (settings stored in a PNG never name files to load)"
        )
    return stored.model, False, {**stored.model_options, **typed}


def named_pickle(args: argparse.Namespace, spec: Any, field: str, flag: str) -> str | None:
    """The refusal of weights a scene or batch file names that are a pickle, when --allow-pickle
    was given (else the loaders' own refusal says it): the flag covers only the files typed on that
    command line, and a scene may come from someone else. None when there is nothing to refuse."""
    from multidiffusion.models.files import is_pickle_path

    if getattr(args, "allow_pickle", False) and not isinstance(spec, TypedPath) and is_pickle_path(str(spec)):
        return (
            f"{field} {Path(str(spec)).name!r} is a pickle named by a scene or batch file: --allow-pickle covers only "
            f"files typed on the command line; pass {flag} --allow-pickle"
        )
    return None


def refuse_named_pickle(args: argparse.Namespace, spec: Any, field: str, flag: str) -> None:
    """:func:`named_pickle` as the command line's one-line error."""
    refusal = named_pickle(args, spec, field, flag)
    if refusal:
        fail(refusal)
