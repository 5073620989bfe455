"""Views sharded across processes (multidiffusion.engine.distributed): two gloo processes give what
one process gives, and a rank that fails or dies ends the run with an error on every rank."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from multidiffusion.engine.distributed import Shard, shard_jobs
from multidiffusion.engine.fusion import Job
from multidiffusion.engine.views import View

from . import distributed_worker

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def joined(procs: list, folder, timeout: float) -> None:
    """Wait for the rank processes; fail the test when one hung or left a crash report in ``folder``."""
    for p in procs:
        p.join(timeout=timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail("a rank hung")
    for r in range(len(procs)):
        crash = folder / f"crash-{r}.txt"
        assert not crash.exists(), crash.read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """One process group of two gloo processes running every case (distributed_worker.main) and,
    meanwhile, the same calls in this process alone, on one thread as each rank."""
    folder = tmp_path_factory.mktemp("ranks")
    context = multiprocessing.get_context("spawn")
    port = free_port()
    args = (WORLD, port, str(folder), str(tiny_model_dir))
    procs = [context.Process(target=distributed_worker.main, args=(r, *args)) for r in range(WORLD)]
    for p in procs:
        p.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        md = distributed_worker.tiny_md()
        single = {name: call() for name, call in distributed_worker.cases(md).items()}
    finally:
        torch.set_num_threads(threads)
        joined(procs, folder, 300)
    ranks = SimpleNamespace(
        folder=folder,
        results=torch.load(folder / "results.pt", weights_only=False),
        exitcodes=[p.exitcode for p in procs],
    )
    return ranks, single


@pytest.fixture(scope="module")
def two_ranks(runs):
    return runs[0]


@pytest.fixture(scope="module")
def single(runs):
    return runs[1]


@pytest.mark.parametrize("case", ["panorama", "regions", "fast", "upscale", "panorama-batched"])
def test_two_processes_give_the_single_process_result(two_ranks, single, case):
    """With the same model calls, the same bits (float64 Eq. 5 numerators; tiles blended in order);
    with the default batching, the ranks' calls hold fewer views, whose floating-point results
    differ as those of another view_batch_size in one process do."""
    latents, images, stats = two_ranks.results[case]
    ref_latents, ref_images, ref_stats = single[case]
    assert latents.shape == ref_latents.shape
    tolerance = 1e-4 if case.endswith("batched") else 1e-5
    assert float((latents - ref_latents).abs().max()) <= tolerance
    assert np.abs(images.astype(np.float64) - ref_images).max() <= tolerance
    # the work was shared, the total work was the same, and every step all-reduced one numerator
    assert stats.ranks == WORLD and len(stats.rank_latent_pixels) == WORLD
    assert sum(stats.rank_latent_pixels) == stats.latent_pixels == ref_stats.latent_pixels
    assert min(stats.rank_latent_pixels) > 0
    assert stats.jobs == ref_stats.jobs
    canvas = ref_latents.numel() * 8  # float64
    assert stats.bytes_all_reduced_per_step == pytest.approx(canvas + 8 * WORLD, rel=0, abs=0)
    assert stats.vae_bytes > 0  # the VAE's tiles were split too


def test_a_batch_shares_its_images_among_the_ranks(two_ranks):
    codes = [(two_ranks.folder / f"batch-{r}.txt").read_text() for r in range(WORLD)]
    assert all(text.startswith("0\n") for text in codes)
    assert "batch: 3 written, 0 skipped (output exists), 0 failed, of 3 items" in codes[0]
    assert "batch:" not in codes[1]  # rank 0 reports
    assert sorted(p.name for p in two_ranks.folder.glob("batch-*.png")) == [f"batch-{k}.png" for k in range(3)]


def test_a_failing_rank_stops_every_rank_with_its_error(two_ranks):
    for r in range(WORLD):
        text = (two_ranks.folder / f"failure-{r}.txt").read_text()
        assert text.startswith("RankFailed") and "rank 1" in text and "out of memory (simulated on rank 1)" in text


def test_ranks_running_different_calls_are_refused(two_ranks):
    for r in range(WORLD):
        text = (two_ranks.folder / f"disagree-{r}.txt").read_text()
        assert "disagree on the initial noise" in text and "rank 0" in text and "rank 1" in text


def test_a_rank_that_dies_ends_the_run_on_the_others(two_ranks):
    text = (two_ranks.folder / "died-0.txt").read_text()
    assert text.startswith("RankFailed") and "got no answer from the other ranks" in text
    assert two_ranks.exitcodes[1] == 3


def job(left: int, prompt: int = 0, size: int = 4) -> Job:
    return Job(View(0, left, size, size), prompt)


def test_jobs_are_shared_by_cost_with_each_views_prompts_together():
    jobs = [job(0, 0), job(0, 1), job(0, 2), job(4), job(8), job(12), job(16, 0, 8)]
    shares = shard_jobs(jobs, 2)
    assert sorted(j for share in shares for j in map(jobs.index, share)) == list(range(len(jobs)))
    # the 8x8 view (cost 128) first, then the view under three prompts (cost 64) on the other rank
    assert jobs[6] in shares[0] and {jobs[0], jobs[1], jobs[2]} <= set(shares[1])
    for share in shares:  # the plan's order kept
        assert [jobs.index(j) for j in share] == sorted(jobs.index(j) for j in share)
    assert shard_jobs(jobs, 1) == [jobs]
    assert shard_jobs(jobs[:1], 3) == [[jobs[0]], [], []]
    with pytest.raises(ValueError, match="world"):
        shard_jobs(jobs, 0)


def test_no_process_group_means_no_sharding():
    from multidiffusion.engine import distributed

    assert distributed.active() is None and distributed.is_writer()
    assert Shard.__init__ is not None  # the class stays importable without a process group


def cli_env() -> dict[str, str]:
    """The environment of a command-line process: this checkout first, one thread per process."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else ""), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # three processes that each load the model: about 40 s on 2 busy cores
def test_the_cli_under_torchrun_writes_the_single_process_png(tiny_model_dir, tmp_path):
    """`torchrun --nproc-per-node 2 -m multidiffusion panorama ...`: one PNG, the one a single process
    writes (one view per model call, one thread per process, so the calls are the same)."""
    args = ["panorama", "snowy mountains", "--model", str(tiny_model_dir), "--device", "cpu", "--width", "384"]
    args += ["--height", "128", "--steps", "3", "--seed", "1", "--batch-size", "1", "-q"]
    single = subprocess.Popen(
        [sys.executable, "-m", "multidiffusion", *args, "-o", str(tmp_path / "one.png")],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD)]
    shared = subprocess.run(
        [*torchrun, "-m", "multidiffusion", *args, "-o", str(tmp_path / "two.png")],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    _, err = single.communicate(timeout=300)
    assert single.returncode == 0, err
    assert shared.returncode == 0, shared.stderr
    assert shared.stdout.count("wrote ") == 1  # rank 0 reports, rank 0 writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "two.png"]
    one, two = Image.open(tmp_path / "one.png"), Image.open(tmp_path / "two.png")
    assert np.array_equal(np.asarray(one), np.asarray(two))
    assert one.text == two.text
