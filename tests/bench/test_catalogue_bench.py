"""bench/catalogue.py runs on a tiny catalogue, and its chunked top-K equals the dense one."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("catalogue_bench",
                                                  ROOT / "bench" / "catalogue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # make test-all (see Makefile)
def test_bench_runs_on_a_tiny_catalogue_and_writes_its_json(tmp_path):
    bench = load_bench()
    out = tmp_path / "catalogue.json"
    report = bench.main(["--items", "3000", "--dim", "8", "--k", "5", "--chunk", "512",
                         "--seen", "10", "--batches", "8", "--dense-batches", "8",
                         "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert set(report) == {"machine", "config", "results", "comparison"}
    config = report["config"]
    assert config["chunk_scores_mb"] == {"b8": round(8 * 512 * 4 / 2**20, 1)}
    assert config["table_mb"] == round(3000 * 8 * 4 / 2**20, 1)

    results = report["results"]
    assert set(results) == {"chunked_top_k_b8", "chunked_target_rank_b8", "dense_top_k_b8"}
    for name, result in results.items():
        assert "error" not in result, (name, result)
        for key in ("compile_seconds", "first_call_seconds", "steady_seconds",
                    "users_per_second", "items_scored_per_second", "peak_rss_mb",
                    "peak_rss_setup_mb", "peak_rss_compile_mb", "rss_before_scoring_mb"):
            assert result[key] > 0, (name, key)
        assert result["xla_temp_mb"] is not None
        if result["peak_rss_scoring_mb"] is not None:  # Linux: the scoring's own peak
            assert result["rss_before_scoring_mb"] <= result["peak_rss_scoring_mb"]
            assert result["peak_rss_scoring_mb"] <= result["peak_rss_mb"]
        assert "load_average_1min_at_end" in result and "timestamp" in result
        assert "_items" not in result and "_scores" not in result
    assert 0 <= results["chunked_target_rank_b8"]["mean_rank"] < 3000

    comparison = report["comparison"]["b8"]
    assert comparison["items_equal"] is True
    assert comparison["max_abs_score_difference"] < 1e-4
    assert set(comparison["peak_rss_mb"]) == {"chunked", "dense"}
