"""bench/serve.py runs on a tiny run folder, writes its JSON, and its file equals `recommend`."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from causalrec_jax.config import load_config
from causalrec_jax.runs import train as run_train

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("serve_bench", ROOT / "bench" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # make test-all (see Makefile)
def test_bench_serves_a_tiny_run_and_writes_its_json(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["user,item"] + [f"u{user},i{item}" for user in range(12)
                            for item in rng.choice(15, size=6, replace=False)]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    config = load_config(None, [
        'data.format="csv"', f'data.path="{tmp_path / "log.csv"}"', 'data.split="random"',
        "train.epochs=1", 'train.loss="bpr"', "model.embedding_dim=4", "eval.ks=[5]",
        'eval.metrics=["recall"]', 'train.early_stopping_metric="recall@5"'])
    run_train.train_run(config, tmp_path / "run", quiet=True)
    out = tmp_path / "serve.json"
    report = load_bench().main(["--run", f"tiny={tmp_path / 'run'}", "--no-cli", "--k", "5",
                                "--repeats", "1", "--sample", "4", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert set(report) == {"machine", "config", "results"}
    result = report["results"]["tiny"]
    assert "error" not in result, result
    assert result["users"] == 12 and result["rows"] == 12 * 5 and result["chunks"] == 1
    assert result["identical_to_recommend"] is True and result["recommend_sample_users"] == 4
    for key in ("load_seconds", "first_call_seconds", "steady_seconds", "users_per_second",
                "recommend_seconds_per_user", "peak_rss_mb"):
        assert result[key] > 0, key
