"""`experiments/bench_gpu.py` at its small size on the CPU: every workload runs through the
library's code and reports what the GPU run will (the GPU figures themselves need a GPU)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_repo_script):
    return load_repo_script("experiments/bench_gpu.py")


def test_scoring_and_simulator_at_the_small_size(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = bench.main(["--size", "small", "--only", "scoring", "simulator", "--repeats", "2",
                         "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["device"]["platform"] == "cpu" and report["size"] == "small"
    scoring, simulator = report["workloads"]["scoring"], report["workloads"]["simulator"]
    assert scoring["items"] == 20_000 and scoring["flop_per_second"] > 0
    assert scoring["scores_per_second"] == pytest.approx(
        scoring["users"] * scoring["items"] / scoring["steady_seconds"], rel=1e-3)
    assert simulator["user_steps_per_second"] > 0 and simulator["compile_seconds"] >= 0
    assert "peak_rss_bytes" in report["memory"] or "peak_device_bytes" in report["memory"]
    # a second call never overwrites the first's file
    with pytest.raises(SystemExit):
        bench.main(["--size", "small", "--only", "scoring", "--out", str(out)])
    assert "exists; give a new file" in capsys.readouterr().err


@pytest.mark.slow
def test_every_workload_at_the_small_size(bench):
    report = bench.main(["--size", "small", "--repeats", "1"])
    workloads = report["workloads"]
    assert set(workloads) == set(bench.WORKLOADS)
    assert workloads["mf_seeds"]["eight_over_one"] > 0
    assert workloads["population"]["population_over_separate"] > 0
    assert workloads["dr_jl"]["epoch_seconds"] > 0
