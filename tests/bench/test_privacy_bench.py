"""bench/privacy.py runs a few steps of each case, side by side, and writes its json."""

import json

import pytest


@pytest.mark.slow  # make test-all (see Makefile)
def test_bench_runs_a_few_steps_and_writes_its_json(tmp_path, load_repo_script, monkeypatch):
    bench = load_repo_script("bench/privacy.py")
    out = tmp_path / "privacy.json"
    monkeypatch.setattr("sys.argv", ["privacy.py", "--steps", "2", "--repeats", "1",
                                     "--out", str(out)])
    bench.main()
    written = json.loads(out.read_text())
    assert set(written["results"]) == {"ordinary", "dp_example", "dp_user"}
    for name in ("dp_example", "dp_user"):
        case = written["results"][name]
        assert case["ratio_to_ordinary"] > 0 and case["capacity"] >= case["expected_units"]
        assert case["expected_rows_per_step"] == pytest.approx(2048, rel=0.01)
    assert isinstance(written["met"], bool)
    assert set(written["unrolled_threefry"]) == {"ordinary", "dp_example", "dp_user"}
    assert all(case["speedup"] > 0 for case in written["unrolled_threefry"].values())
