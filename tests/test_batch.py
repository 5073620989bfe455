"""``multidiffusion batch``: many images from JSON lines or scene files; bad items reported by line,
the others run; finished outputs skipped on the next run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from multidiffusion.files.metadata import read_parameters

from .test_cli import run

SMALL = {"height": 128, "width": 256, "num_inference_steps": 2}


def write_lines(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")


def test_a_batch_runs_its_good_lines_reports_the_bad_ones_and_resumes(tiny_model_dir, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    write_lines(
        jobs,
        [
            {"task": "panorama", "prompt": "snowy mountains", "seed": 1, "output": "pano.png", **SMALL},
            {"task": "panorama", "prompt": "a lake", "width": 100, "output": "bad.png"},
            "",
            '{"task": "panorama", "prompt": ',
            {
                "task": "regions",
                "background": "a beach",
                "regions": [{"prompt": "a red ball", "box": [0.1, 0.2, 0.5, 0.9]}],
                "seed": 2,
                "output": "beach.png",
                **SMALL,
            },
            {"task": "panorama", "prompt": "no output"},
        ],
    )
    code, out, err = run(["batch", str(jobs), "--model", str(tiny_model_dir), "-q"], capsys)
    assert code == 1
    assert "error: jobs.jsonl:2: width must be a multiple of 8" in err
    assert "error: jobs.jsonl:4: not valid JSON" in err
    assert "error: jobs.jsonl:6: output is required" in err
    assert "batch: 2 written, 0 skipped (output exists), 3 failed, of 5 items" in out
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["beach.png", "pano.png"]
    assert read_parameters(tmp_path / "pano.png")["seed"] == 1
    assert read_parameters(tmp_path / "beach.png")["task"] == "regions"
    # the same image a single verb makes from the same settings
    single = tmp_path / "single.png"
    args = ["panorama", "snowy mountains", "--model", str(tiny_model_dir), "--seed", "1", "--steps", "2"]
    assert run([*args, "--height", "128", "--width", "256", "-q", "-o", str(single)], capsys)[0] == 0
    assert np.array_equal(np.asarray(Image.open(single)), np.asarray(Image.open(tmp_path / "pano.png")))
    # resumed: finished outputs are skipped, the bad lines are still reported
    stamp = (tmp_path / "pano.png").stat().st_mtime_ns
    code, out, err = run(["batch", str(jobs), "--model", str(tiny_model_dir), "-q"], capsys)
    assert code == 1 and "batch: 0 written, 2 skipped (output exists), 3 failed" in out
    assert (tmp_path / "pano.png").stat().st_mtime_ns == stamp


def test_a_folder_of_scene_files_writes_one_png_per_scene(tiny_model_dir, tmp_path, capsys):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    (scenes / "hills.toml").write_text(
        'task = "panorama"\nprompt = "green hills"\nheight = 128\nwidth = 256\nnum_inference_steps = 2\nseed = 4\n'
    )
    (scenes / "broken.json").write_text("{")
    (scenes / "notes.txt").write_text("not a scene")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["batch", str(scenes), "--output-dir", str(out_dir), "--model", str(tiny_model_dir), "-q"]
    code, out, err = run(args, capsys)
    assert code == 1 and "error: broken.json: " in err and "not valid JSON" in err
    assert "batch: 1 written, 0 skipped (output exists), 1 failed, of 2 items" in out
    assert [p.name for p in out_dir.iterdir()] == ["hills.png"]
    assert read_parameters(out_dir / "hills.png")["prompt"] == "green hills"


def test_outputs_stay_in_the_output_folder_and_errors_are_one_line(tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    write_lines(jobs, [{"task": "panorama", "prompt": "x", "output": "../escape.png"}])
    code, _, err = run(["batch", str(jobs), "-q"], capsys)
    assert code == 1 and "error: jobs.jsonl:1: output '../escape.png' is outside the output folder" in err
    assert not (tmp_path.parent / "escape.png").exists()
    code, _, err = run(["batch", str(tmp_path / "missing.jsonl")], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_the_shipped_example_batch_is_valid(tmp_path):
    from multidiffusion.cli.batch import read_items

    folder = Path(__file__).resolve().parents[1] / "examples" / "batch"
    items = read_items(folder / "jobs.jsonl", tmp_path)
    assert len(items) == 3 and all(item.error is None for item in items), [item.error for item in items]
    assert [item.scene.task for item in items] == ["panorama", "panorama", "regions"]
