"""bench/stream.py runs on a small log: every stage in its own process, the log written in
several files and row groups, its statistics and one streamed epoch over every row."""

import json
import math

import pytest


@pytest.mark.slow  # make test-all (see Makefile)
def test_bench_streams_a_small_log_and_writes_its_json(tmp_path, load_repo_script):
    out = tmp_path / "stream.json"
    report = load_repo_script("bench/stream.py").main([
        "--rows", "20000", "--users", "300", "--items", "120", "--batch", "1024",
        "--window-batches", "4", "--dim", "8", "--rows-per-file", "6000", "--row-group",
        "2500", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    stats = report["ids"]["statistics"]
    assert stats["n_interactions"] == 20000 and stats["n_items"] <= 120
    assert stats["n_users"] <= 300 and stats["partitioned"]["files"] == 4
    assert stats["partitioned"]["row_groups"] == 3 + 3 + 3 + 1  # 6000 = 2500 + 2500 + 1000
    assert stats["partitioned"]["id_maps"] == "stored"
    train = report["train"]
    assert train["rows"] == 20000 and train["steps"] == 20  # ceil(20000 / 1024)
    assert train["windows"] == 5 and train["window_rows"] == 4096
    assert 0 < train["loss"] < math.log(2)  # BPR's loss at equal scores is log 2
    for stage in ("write", "ids", "train"):
        assert report[stage]["peak_rss_mb"] > 0
