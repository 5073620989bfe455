"""The distributed and gpu benchmark suites' cheap parts: the speed-up model and the GPU suite's
refusal without CUDA (the suites themselves are run by hand: python -m benchmarks --suites ...)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.distributed_bench import model_rows, numerator_bytes, ring_allreduce_seconds, step_speedup


def test_the_speedup_model():
    # 65 views on 4 ranks: the busiest evaluates 17, so at most 65 / 17 = 3.82x
    assert step_speedup(65, 0.04, 4, 0.0) == pytest.approx(65 / 17)
    assert step_speedup(65, 0.04, 1, 0.0) == 1.0
    assert step_speedup(10, 1.0, 2, 1.0) == pytest.approx(10 / 6)
    assert numerator_bytes(512, 4608) == 4 * 64 * 576 * 8  # float64, one image
    assert ring_allreduce_seconds(10**6, 2, 1e9, 0.0) == pytest.approx(1e-3)
    rows = model_rows()
    assert rows and all(set(r["speedup"]) == {2, 4, 8} for r in rows)
    assert all(1 < r["speedup"][2] <= 2 and r["speedup"][2] <= r["speedup"][8] <= 8 for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_the_gpu_suite_stops_with_a_message_without_cuda(tmp_path, capsys):
    assert main(["--suites", "gpu", "--json", str(tmp_path / "gpu.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the gpu suite needs a CUDA GPU") and err.count("\n") == 1
    assert not (tmp_path / "gpu.json").exists()


def test_the_positions_seam_benchmark_scores_both_modes_on_any_model():
    """The plumbing of benchmarks/positions_seams.py on the tests' tiny FLUX.1 (random weights: the
    scores say nothing about seams; real weights are the point)."""
    from benchmarks.positions_seams import positions_seam_rows

    rows = positions_seam_rows("tiny:flux", seeds=1, steps=1, views_wide=2)
    assert [r["config"].rsplit("=", 1)[1] for r in rows] == ["view", "canvas"]
    assert all(r["seam"] > 0 for r in rows) and rows[1]["ratio"] == pytest.approx(rows[1]["seam"] / rows[0]["seam"])
