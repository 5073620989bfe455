"""The command line as a new user meets it (issue 26): `--help` without loading torch, a misspelled
flag refused by its name, the package import light (PEP 562 lazy exports) and quiet, the layout
preview written before the model loads, its labels neither overlapping nor cut off."""

from __future__ import annotations

import subprocess
import sys

import pytest

import multidiffusion
from multidiffusion.cli import VERBS, build_parser, main


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def test_top_level_help_and_the_package_import_load_no_torch():
    code = (
        "import sys, contextlib, io\n"
        "import multidiffusion\n"
        "from multidiffusion.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "print('panorama' in out.getvalue(), *(m in sys.modules for m in ('torch', 'diffusers', 'transformers')))\n"
    )
    assert _python(code).split() == ["True", "False", "False", "False"]


def test_the_lazy_exports_are_the_public_names():
    assert sorted(multidiffusion.__all__) == sorted([*multidiffusion._EXPORTS, "__version__"])
    for name in multidiffusion.__all__:
        assert getattr(multidiffusion, name) is not None
    from multidiffusion.pipeline import MultiDiffusion

    assert multidiffusion.MultiDiffusion is MultiDiffusion
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        multidiffusion.Nope  # noqa: B018


def test_the_whole_parser_has_every_verb_filled():
    parser = build_parser()
    (verbs,) = [a for a in parser._actions if a.dest == "command"]
    assert list(verbs.choices) == list(VERBS)
    for name, p in verbs.choices.items():
        assert p.get_default("run") is not None and "examples:" in (p.description or ""), name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["panorama", "--stepz", "5", "a lake"], "error: unknown flag --stepz (did you mean --steps?)"),
        (
            ["regions", "--backgrund=a sea", "--region", "a boat"],
            "error: unknown flag --backgrund (did you mean --background?)",
        ),
        (["img2img", "--xyzzy", "a lake"], "error: unknown flag --xyzzy (see `multidiffusion img2img --help`)"),
        (
            ["--steps", "5", "panorama"],
            "error: unknown flag --steps: flags go after the command (`multidiffusion COMMAND --help`)",
        ),
    ],
)
def test_a_misspelled_flag_is_refused_by_its_name_not_taken_as_the_prompt(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "-o", str(tmp_path / "out.png")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == message
    assert not (tmp_path / "out.png").exists()


def test_abbreviations_and_values_after_a_double_dash_still_parse(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["panorama", "--see", "5", "-o", str(tmp_path / "a.png"), "--", "--not-a-flag"])
    assert args.seed == 5 and args.prompt == "--not-a-flag"
    with pytest.raises(SystemExit):  # --step could be --steps or one of the --step-cache flags
        parser.parse_args(["panorama", "--step", "5", "a lake"])


def test_the_package_import_silences_only_transformers_torchvision_fallback_notes():
    import logging

    logger = logging.getLogger("transformers.utils.import_utils")
    note = "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil` ..."
    assert not logger.filter(logging.LogRecord(logger.name, logging.WARNING, "", 0, note, None, None))
    assert logger.filter(logging.LogRecord(logger.name, logging.WARNING, "", 0, "something else", None, None))


def test_the_layout_preview_is_written_before_the_model_loads(tmp_path, capsys):
    out = tmp_path / "out.png"
    argv = ["regions", "--background", "a meadow", "--region", "a red house", "--box", "0.1,0.5,0.4,0.9"]
    argv += ["--width", "128", "--height", "64", "--preview", "-o", str(out), "--model", str(tmp_path / "missing")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code != 0  # the model is not there: the layout was written before looking
    assert (tmp_path / "out-layout.png").is_file() and not out.exists()
    assert "wrote" in capsys.readouterr().out


def test_labels_are_placed_on_the_canvas_over_no_other_label():
    import torch

    from multidiffusion.regions.preview import _fit, _place

    area = torch.zeros(64, 128, dtype=torch.bool)
    area[40:64, 0:40] = True  # a small region in a corner: its labels cannot all fit inside it
    taken = []
    for _ in range(3):
        x, y = _place(area, (70, 12), taken, step=4)
        assert 0 <= x <= 128 - 70 and 0 <= y <= 64 - 12  # wholly on the canvas
        for x0, y0, x1, y1 in taken:
            assert x + 70 <= x0 or x >= x1 or y + 12 <= y0 or y >= y1, (x, y, taken)
        taken.append((x, y, x + 70, y + 12))
    assert _place(area, (30, 12), [], step=4) == (4, 44)  # inside its area, nearest its centre
    text = "background: a green meadow under a clear blue sky"
    fitted = _fit(text, 60, lambda t: 6 * len(t))  # 6 px a character: at most 10 fit
    assert fitted.endswith("…") and len(fitted) == 10 and text.startswith(fitted[:-1])
    assert _fit("a red house", 600, lambda t: 6 * len(t)) == "a red house"
