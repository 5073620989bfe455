"""The live-fps benchmark suite (issue 29, item 5) on its quick setting: both paths measured, the ratio
to the base step count computed from the same run; the GPU item refuses a CPU model."""

from __future__ import annotations

import pytest
import torch

from benchmarks.live_fps import DEMO_LAYOUT, gpu_live_rows, gpu_skip_row, live_fps_rows, table, turbo_layout


def test_quick_run_measures_both_paths_against_the_base():
    rows = live_fps_rows(quick=True)
    assert [(r["path"], r["steps"]) for r in rows] == [("plain", 1), ("live", 1), ("plain", 2), ("live", 2)]
    for r in rows:
        assert r["seconds"] > 0 and r["fps"] == pytest.approx(1 / r["seconds"])
        base = next(b for b in rows if b["path"] == r["path"] and b["steps"] == r["base_steps"])
        assert r["speedup_vs_base"] == pytest.approx(base["seconds"] / r["seconds"])
    assert "the plain demo" in rows[0]["notes"]  # the default model: demo, not demo-lcm
    assert table(rows).count("\n") == len(rows) + 1


def test_layouts_have_a_background_and_three_boxes():
    assert (DEMO_LAYOUT["height"], DEMO_LAYOUT["width"]) == (64, 128) and len(DEMO_LAYOUT["regions"]) == 3
    big = turbo_layout(512)
    assert big["height"] == big["width"] == 512 and [r.prompt for r in big["regions"]] == [
        r.prompt for r in DEMO_LAYOUT["regions"]
    ]


def test_the_gpu_item_refuses_the_cpu():
    from devtools.components import tiny_sd_pipeline
    from multidiffusion import MultiDiffusion

    with pytest.raises(ValueError, match="gpu_live_rows: md must be on a CUDA device"):
        gpu_live_rows(MultiDiffusion(tiny_sd_pipeline()))
    assert gpu_skip_row(torch.device("cpu"))["notes"].startswith("skipped: runs on a CUDA GPU only")
