"""bench/readers.py runs on a few thousand rows, and every reader returns every row."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("readers_bench", ROOT / "bench" / "readers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_on_a_few_rows_and_writes_its_json(tmp_path):
    out = tmp_path / "readers.json"
    report = load_bench().main(["--rows", "3000", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    results = report["results"]
    synthetic = {"synthetic_csv", "synthetic_recbole", "synthetic_u_data",
                 "synthetic_csv_text_ids"}
    assert synthetic <= set(results)
    for name, result in results.items():
        assert result["interactions"] == result["rows"], name
        assert result["rows"] == (3000 if name in synthetic else 100_000)
        assert result["steady_seconds"] > 0 and result["rows_per_second"] > 0
