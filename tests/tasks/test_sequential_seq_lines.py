"""The ml-100k sequential configs run on a `seq_lines` dataset (Beauty.txt layout) by changing
only `data.format` and `data.path`."""

import json
from pathlib import Path

import pytest

from causalrec_jax.cli import main


@pytest.fixture
def planted_lines(tmp_path, cycle_walks):
    """50 users walking one 30-cycle (raw ids "i0".."i29"), one `user item item ...` line each."""
    walks, _ = cycle_walks(50, 30, 14, seed=1)
    lines = [f"u{user} " + " ".join(f"i{item}" for item in walk)
             for user, walk in enumerate(walks)]
    path = tmp_path / "Planted.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.slow  # make test-all (see Makefile)
@pytest.mark.parametrize("config", ["ml100k_sasrec.toml", "ml100k_bert4rec.toml"])
def test_the_ml100k_config_runs_on_seq_lines(planted_lines, tmp_path, config):
    out = tmp_path / "run"
    sets = ['data.format="seq_lines"', f'data.path="{planted_lines}"',
            # small and short so the test is quick; the recipe is otherwise the config's
            "model.embedding_dim=16", "model.n_layers=1", "model.n_heads=1", "model.max_len=8",
            "model.dropout=0.0", "train.learning_rate=0.01", "train.batch_size=32",
            "train.epochs=60", "train.patience=60", 'train.early_stopping_metric="hit@1"',
            "eval.ks=[1, 10]", "eval.sampled_negatives=5",
            # overlapping windows whose earliest is short: batches of width 4 and 8
            "model.window_stride=4", "model.length_buckets=[2, 4]"]
    status = main(["train", "--quiet", "--config", str(CONFIGS / config), "--out", str(out),
                   *sum((["--set", s] for s in sets), [])])
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["n_users"] == 50 and metrics["data"]["n_items"] == 30
    assert metrics["data"]["n_test"] == 50
    # the next item is a function of the last one; a 30-cycle walk of 14 steps never repeats,
    # so masking the history hides no target
    floor = 0.9 if "sasrec" in config else 0.5
    assert metrics["test"]["hit@1"] > floor
    assert 0 < metrics["test_sampled"]["sampled_hit@1"] <= 1


@pytest.mark.parametrize(("config", "extra"), [
    # The shipped Amazon configs through a whole run: in make test-all (the sequential runs'
    # code is tested in tests/tasks/test_sequential.py, HSTU's in tests/models/test_hstu.py).
    pytest.param("toys_sasrec.toml", [], marks=pytest.mark.slow),
    pytest.param("sports_sasrec.toml", [], marks=pytest.mark.slow),
    # The variants through a whole run: in make test-all (their options are tested in
    # tests/train/test_sequence_sampling.py and tests/models/test_sasrec.py).
    # the shared negatives by training popularity, logQ-corrected
    pytest.param("toys_sasrec.toml", ['train.negative_sampler="popularity"',
                                      "train.logq_correction=true"], marks=pytest.mark.slow),
    pytest.param("toys_sasrec.toml", ['train.loss="gbce"', "train.n_negatives=8",
                                      'model.block="ligr"'], marks=pytest.mark.slow),
    # per-sequence negatives, the Transformer block with positions from the start
    pytest.param("sports_sasrec.toml", ["train.negatives_per_row=true", "train.n_negatives=64",
                                        'model.block="transformer"',
                                        'model.positions="from_start"'],
                 marks=pytest.mark.slow),
    # HSTU's encoder under the same training (two layers, the cosine head)
    pytest.param("toys_hstu.toml", [], marks=pytest.mark.slow),
])
def test_the_amazon_configs_run_and_learn_the_planted_rule(planted_lines, tmp_path, config,
                                                           extra):
    """The Amazon recipe (SASRec's own block, positions from the newest item, uniform
    position weights, 4,096 shared negatives: here with replacement from 30 items, so a
    target's own copies drop out) learns a successor rule, and so do its variants; sizes are
    the config's but the width, to be quick."""
    out = tmp_path / "run"
    sets = [f'data.path="{planted_lines}"', "model.embedding_dim=16", "model.max_len=8",
            "model.dropout=0.2", "train.learning_rate=0.01", "train.batch_size=16",
            "train.epochs=40", "train.patience=40", 'train.early_stopping_metric="hit@1"',
            "eval.ks=[1, 10]", *extra]
    status = main(["train", "--quiet", "--config", str(CONFIGS / config), "--out", str(out),
                   *sum((["--set", s] for s in sets), [])])
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # chance, with the 14 history items masked: hit@1 1/16; gBCE (a sigmoid per candidate)
    # learns more slowly in 40 epochs
    assert metrics["test"]["hit@1"] > (0.4 if 'train.loss="gbce"' in extra else 0.9)
    assert set(metrics["test"]) >= {"ndcg@10", "recall@10"}


def test_every_shipped_sequential_config_passes_the_sequential_checks():
    from causalrec_jax.config import load_config
    from causalrec_jax.tasks.sequential import SEQUENCE_MODELS, check_sequential_config

    checked = [path.name for path in sorted(CONFIGS.glob("*.toml"))
               if not path.stem.endswith("_space")
               and load_config(path).model.name in SEQUENCE_MODELS
               and check_sequential_config(load_config(path))]
    assert {"toys_sasrec.toml", "sports_sasrec.toml", "ml100k_sasrec.toml", "toys_hstu.toml",
            "sports_hstu.toml"} <= set(checked)
