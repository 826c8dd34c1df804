"""bench/seq_eval.py runs at a tiny size, and its two validation paths give the same numbers."""

import json

import pytest


@pytest.mark.slow  # make test-all (see Makefile)
def test_bench_runs_small_and_both_paths_agree(tmp_path, load_repo_script):
    bench = load_repo_script("bench/seq_eval.py")
    out = tmp_path / "seq_eval.json"
    assert bench.main(["--out", str(out), "--users", "300", "--items", "97", "--max-len", "20",
                       "--dim", "8", "--repeats", "1"]) == 0
    result = json.loads(out.read_text())
    assert result["same_numbers"] is True
    assert result["dense"]["median_seconds"] > 0 and result["target_rank"]["median_seconds"] > 0
    assert 0 < result["valid_ndcg@10_masked"] < 1
    assert result["config"]["mean_history"] > 5
