"""experiments/privacy_utility.py on a small simulated world: one row per mechanism and
epsilon with the accounted budget, the non-private reference, the popularity columns, the
figure; bad input is one line."""

import csv
import json
import math
from pathlib import Path

import pytest

from causalrec_jax.errors import ConfigError

SCRIPT = "experiments/privacy_utility.py"
ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
[data]
format = "simulator"
split = "random"
[sim]
n_users = 60
n_items = 40
mean_exposure = 0.3
[model]
name = "mf"
embedding_dim = 8
[train]
loss = "bpr"
learning_rate = 0.05
batch_size = 16
epochs = 2
early_stopping_metric = "ndcg@10"
[eval]
metrics = ["ndcg", "recall"]
ks = [10]
positive_threshold = 0.0
[privacy]
level = "user"
target_epsilon = 8.0
max_examples_per_user = 8
"""


@pytest.fixture(scope="module")
def table(tmp_path_factory, load_repo_script):
    folder = tmp_path_factory.mktemp("privacy_utility")
    config = folder / "dp.toml"
    config.write_text(CONFIG)
    out = folder / "out"
    rows = load_repo_script(SCRIPT).main(
        ["--config", str(config), "--epsilons", "2,inf", "--seeds", "2",
         "--example-batch", "64", "--out", str(out)])
    return rows, out


@pytest.mark.slow  # make test-all (see Makefile): a smoke run of the script, 6 trainings
def test_one_row_per_mechanism_and_epsilon(table):
    rows, out = table
    assert [(row["mechanism"], row["epsilon"]) for row in rows] == [
        ("not private", math.inf), ("DP-SGD, user level", 2.0),
        ("DP-SGD, example level", 2.0)]
    written = list(csv.DictReader((out / "table.csv").open()))
    assert len(written) == 3
    for row in rows[1:]:
        assert row["accounted_epsilon"] <= 2.0 * 1.001 and row["noise_multiplier"] > 0
        assert row["seeds"] == 2 and 0 <= row["ndcg@10"] <= 1
        assert row["kept"] == pytest.approx(row["ndcg@10"] / rows[0]["ndcg@10"])
        assert row["averagepopularity@10"] > 0 and 0 <= row["giniindex@10"] <= 1
    assert rows[0]["kept"] == pytest.approx(1.0)
    assert json.loads((out / "table.json").read_text())["rows"][0]["epsilon"] is None
    assert "| DP-SGD, user level | 2 |" in (out / "table.md").read_text()
    assert (out / "privacy_utility.png").read_bytes()[:4] == b"\x89PNG"
    # the example level's runs count rows, with the config's per-user cap reset
    config = (out / "example_eps2" / "config.toml").read_text()
    assert "batch_size = 64" in config and "max_examples_per_user = 64" in config  # default
    assert 'user_rows = "noised"' in config and "exclude_seen_negatives = false" in config


@pytest.mark.slow  # make test-all (see Makefile): a smoke run of the script, 3 trainings
def test_dp_fedavg_rows_come_from_their_own_config(tmp_path, load_repo_script):
    dp, federated = tmp_path / "dp.toml", tmp_path / "fedavg.toml"
    dp.write_text(CONFIG)
    # a DP-FedAvg config as a user writes it: its clip set (read only with noise)
    federated.write_text(CONFIG.replace("target_epsilon = 8.0", 'mechanism = "fedavg"\n'
                                        "local_steps = 2\nclient_learning_rate = 0.5\n"
                                        "clip = 2.0"))
    rows = load_repo_script(SCRIPT).main(
        ["--config", str(dp), "--fedavg", str(federated), "--levels", "user",
         "--epsilons", "2,inf", "--seeds", "1", "--out", str(tmp_path / "out")])
    assert [(row["mechanism"], row["epsilon"]) for row in rows] == [
        ("not private", math.inf), ("DP-SGD, user level", 2.0),
        ("FedAvg, no noise", math.inf), ("DP-FedAvg", 2.0)]
    assert 'mechanism = "dp_sgd"' in (tmp_path / "out" / "user_eps2" / "config.toml").read_text()
    assert rows[-1]["accounted_epsilon"] <= 2.0 * 1.001 and rows[-1]["noise_multiplier"] > 0
    assert math.isinf(rows[-2]["accounted_epsilon"])
    written = (tmp_path / "out" / "fedavg_eps2" / "config.toml").read_text()
    assert 'mechanism = "fedavg"' in written and "target_epsilon = 2.0" in written


@pytest.mark.parametrize("args,message", [
    (["--epsilons", "0,inf"], "--epsilons"),
    (["--levels", "user,nobody"], "--levels"),
    # a config that is not federated
    (["--fedavg", str(ROOT / "configs/ml100k_mf_dp.toml")], "key privacy.mechanism"),
])
def test_bad_input_is_one_line(tmp_path, args, message, run_repo_script):
    base = ["--config", str(ROOT / "configs/quickstart.toml"), "--out", str(tmp_path / "o")]
    code, err = run_repo_script(str(SCRIPT), [*base, *args])
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


SEQUENCE_CONFIG = """
[data]
format = "csv"
path = "{path}"
split = "leave_one_out"
columns = {{user = "user", item = "item", timestamp = "time"}}
[model]
name = "sasrec"
embedding_dim = 16
n_layers = 1
n_heads = 1
max_len = 8
[train]
loss = "full_softmax"
learning_rate = 0.02
batch_size = 32
epochs = 3
early_stopping_metric = "ndcg@10"
[eval]
metrics = ["ndcg", "recall"]
ks = [10]
positive_threshold = 0.0
[privacy]
level = "user"
target_epsilon = 8.0
max_examples_per_user = 4
"""


@pytest.mark.slow  # make test-all (see Makefile): a smoke run of the script, 4 trainings
def test_a_sequential_config_gets_every_row(tmp_path, write_walks, load_repo_script):
    """SASRec on the planted walks: DP-SGD at user level and DP-FedAvg beside the run
    without privacy, each with its accounted budget; the example level is refused."""
    path = write_walks(tmp_path)[0]
    dp, federated = tmp_path / "dp.toml", tmp_path / "fedavg.toml"
    dp.write_text(SEQUENCE_CONFIG.format(path=path))
    federated.write_text(SEQUENCE_CONFIG.format(path=path).replace(
        "[privacy]", '[privacy]\nmechanism = "fedavg"\nlocal_steps = 2'))
    out = tmp_path / "out"
    script = load_repo_script(SCRIPT)
    with pytest.raises(ConfigError, match="^--levels user,example: a sequential config"):
        script.main(["--config", str(dp), "--levels", "user,example"])
    rows = script.main(
        ["--config", str(dp), "--fedavg", str(federated), "--epsilons", "8,inf",
         "--seeds", "1", "--out", str(out)])
    assert [(row["mechanism"], row["epsilon"]) for row in rows] == [
        ("not private", math.inf), ("DP-SGD, user level", 8.0),
        ("FedAvg, no noise", math.inf), ("DP-FedAvg", 8.0)]
    for row in rows:
        assert 0 <= row["ndcg@10"] <= 1 and row["averagepopularity@10"] > 0
        if math.isfinite(row["epsilon"]):
            assert 7.9 <= row["accounted_epsilon"] <= 8.0 * 1.001
