"""One run contract for every run kind (DESIGN §2): the same metrics.json top-level keys,
`seeds` = run.seed + i, every per_seed entry `{seed, best_epoch, valid, test, ...}`, and
log.jsonl with one line per (epoch, seed) with the same keys, whatever trained the run; and
the same folder rules: a non-empty --out is refused unless the run resumes its own, and a run
that cannot resume writes its folder whole or not at all."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from causalrec_jax import errors
from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.report.runs import read_run
from causalrec_jax.runs import folder as run_folder
from causalrec_jax.runs import train as run_train
from causalrec_jax.tasks import ope as ope_task
from causalrec_jax.train.loop import lower_is_better
from causalrec_jax.tune.search import tune
from causalrec_jax.tune.space import space_from_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TOP_LEVEL = {"test", "test_std", "test_ci95", "per_seed", "seeds", "data", "timing",
             "versions"}
PER_SEED = {"seed", "best_epoch", "valid", "test"}
# The keys of every log.jsonl line; `valid` where the kind validates every epoch.
LOG_KEYS = {"seed", "epoch", "loss", "seconds"}

ORDINARY = ["sim.n_users=60", "sim.n_items=40", "sim.mean_exposure=0.3", 'data.split="random"',
            "train.epochs=3", "train.batch_size=64", 'train.loss="bpr"', "train.seeds=2",
            "model.embedding_dim=8", "eval.ks=[5]", "eval.positive_threshold=0",
            'train.early_stopping_metric="ndcg@5"', "run.seed=3"]
CAUSAL = ["sim.n_users=60", "sim.n_items=40", "train.epochs=3", "train.seeds=2", "run.seed=3",
          "train.batch_size=256"]
UPLIFT = ["env.n_users=40", "env.n_items=20", "env.latent_dim=4", "env.slate_size=3",
          "env.horizon=10", "uplift.epochs=5", "train.seeds=2", "run.seed=3"]
OPE = ["env.n_users=40", "env.n_items=25", "env.latent_dim=4", "train.seeds=2", "run.seed=3",
       "ope.n_rounds=500", "ope.truth_rounds=2000", "ope.reward_model_epochs=5"]
SEQUENTIAL = ['data.format="csv"', 'data.split="leave_one_out"',
              'data.columns={user = "user", item = "item", timestamp = "time"}',
              'model.name="sasrec"', "model.embedding_dim=8", "model.n_layers=1",
              "model.n_heads=1", "model.max_len=6", 'train.loss="full_softmax"',
              "train.epochs=2", "train.patience=2", "train.seeds=2", "run.seed=3",
              'eval.metrics=["hit", "ndcg"]', "eval.ks=[5]", "eval.positive_threshold=0.0",
              'train.early_stopping_metric="hit@5"']


def _sets(overrides):
    return sum((["--set", item] for item in overrides), [])


def _walks(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = [(user, int(rng.integers(15)), step) for user in range(30) for step in range(8)]
    path = folder / "walks.csv"
    pd.DataFrame(rows, columns=["user", "item", "time"]).to_csv(path, index=False)
    return path


def _cli_run(command, config, overrides):
    def run(tmp_path: Path, extra: list[str] = ()) -> Path:
        out = tmp_path / "run"
        config_args = [] if config is None else ["--config", str(CONFIGS / config)]
        quiet = ["--quiet"] if command == "train" else []
        assert main([command, *config_args, *quiet, "--out", str(out),
                     *_sets([*overrides, *extra])]) == 0
        return out
    return run


def _sequential_run(tmp_path: Path, extra: list[str] = ()) -> Path:
    path = _walks(tmp_path)
    return _cli_run("train", None, [*SEQUENTIAL, f'data.path="{path}"'])(tmp_path, extra)


def _tunings_best_run(tmp_path: Path, extra: list[str] = ()) -> Path:
    config = load_config(None, [*ORDINARY, *extra])
    space = space_from_dict({"train": {"learning_rate": [0.01, 0.03]}}, "space.toml")
    tune(config, space, tmp_path / "tune", metric="valid.ndcg@5", seeds=2)
    return tmp_path / "tune" / "best"


# kind: (writes its folder (tmp_path, extra --set values), seeds, epochs logged per seed,
# validates every epoch)
KINDS = {
    "ordinary": (_cli_run("train", None, ORDINARY), [3, 4], 3, True),
    "causal": (_cli_run("train", "sim_dr_jl.toml", CAUSAL), [3, 4], 3, True),
    "sequential": (_sequential_run, [3, 4], 2, True),
    "uplift": (_cli_run("train", "sim_uplift.toml", UPLIFT), [3, 4], 5, False),
    "ope": (_cli_run("ope", "sim_ope.toml", OPE), [3, 4], 5, False),
    # tune's best run is an ordinary run of the chosen trial, with --seeds 2 seeds
    "tune_best": (_tunings_best_run, [3, 4], 3, True),
}


# kind: (what `report.runs.read_run` tells the folder is, whether it is a search's best run)
REPORT_KINDS = {"ordinary": ("ordinary", False), "causal": ("causal", False),
                "sequential": ("sequential", False), "uplift": ("uplift", False),
                "ope": ("ope", False), "tune_best": ("ordinary", True)}


def check_contract(folder: Path, seeds: list[int], epochs: int, validates: bool) -> dict:
    """Asserts the contract on a run folder; returns its metrics."""
    metrics = json.loads((folder / "metrics.json").read_text())
    assert TOP_LEVEL <= set(metrics), TOP_LEVEL - set(metrics)
    assert metrics["seeds"] == seeds
    assert [entry["seed"] for entry in metrics["per_seed"]] == metrics["seeds"]
    for entry in metrics["per_seed"]:
        assert PER_SEED <= set(entry), PER_SEED - set(entry)
        assert isinstance(entry["best_epoch"], int) and isinstance(entry["valid"], dict)
        assert set(metrics["test"]) <= set(entry["test"])  # per seed also counts users
    lines = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    expected_keys = LOG_KEYS | ({"valid"} if validates else set())
    for line in lines:
        assert set(line) == expected_keys, set(line) ^ expected_keys
        assert isinstance(line["loss"], float) and line["seconds"] >= 0
        if validates:
            # numbers (NaN, e.g. auc without negatives, written as null)
            assert line["valid"] and all(isinstance(v, float) or v is None
                                         for v in line["valid"].values())
    # one line per (epoch, seed), the seeds being the values metrics.json lists
    pairs = [(line["epoch"], line["seed"]) for line in lines]
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == {(epoch, seed) for epoch in range(epochs) for seed in seeds}
    # each seed trains its own model: two seeds, two loss curves
    by_seed = {seed: [line["loss"] for line in lines if line["seed"] == seed] for seed in seeds}
    assert by_seed[seeds[0]] != by_seed[seeds[1]]
    assert (folder / "config.toml").exists()
    return metrics


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_run_kind_writes_the_same_contract(tmp_path, kind, check_tracked):
    write, seeds, epochs, validates = KINDS[kind]
    # every kind exported to both trackers at its end (runs.track, from the folder)
    store = tmp_path / "mlruns"
    folder = write(tmp_path, ["run.tensorboard=true", f'run.mlflow="{store}"'])
    metrics = check_contract(folder, seeds, epochs, validates)
    check_tracked(folder, store.as_uri())
    if validates:
        # the best epoch of each seed is the epoch of that seed's best validation line
        metric = load_config(folder / "config.toml").train.early_stopping_metric
        best = min if lower_is_better(metric) else max
        lines = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        for entry in metrics["per_seed"]:
            own = {line["epoch"]: line["valid"][metric] for line in lines
                   if line["seed"] == entry["seed"]}
            assert own[entry["best_epoch"]] == best(own.values())
            assert entry["valid"][metric] == pytest.approx(own[entry["best_epoch"]])
    assert not list(tmp_path.glob(".*.partial"))  # no staging folder left behind
    # `causalrec report` reads the folder as the kind it is
    run = read_run(folder)
    assert (run.kind, run.tuned) == REPORT_KINDS[kind]
    if kind == "causal":  # the propensities the clip acts on, kept as a histogram of the rows
        assert sum(metrics["propensity"]["histogram"]["counts"]) == metrics["propensity"]["n"]


def test_fit_log_lines_split_a_record_by_seed_and_follow_the_members_training():
    record = {"epoch": 4, "loss": 0.5, "loss_per_seed": [0.4, 0.6], "seconds": 1.25,
              "valid": {"ndcg@5": 0.3}, "valid_per_seed": [{"ndcg@5": 0.2}, {"ndcg@5": 0.4}],
              "alive": [0, 2]}
    lines = run_folder.fit_log_lines(record, [7, 8, 9], fold=1)
    assert lines == [
        {"seed": 7, "epoch": 4, "loss": 0.4, "seconds": 1.25, "valid": {"ndcg@5": 0.2},
         "fold": 1},
        {"seed": 9, "epoch": 4, "loss": 0.6, "seconds": 1.25, "valid": {"ndcg@5": 0.4},
         "fold": 1},
    ]
    lines = run_folder.epoch_log_lines(5, [3.0, 2.0], seconds=1.0)
    assert lines == [{"seed": 5, "epoch": 0, "loss": 3.0, "seconds": 0.5},
                     {"seed": 5, "epoch": 1, "loss": 2.0, "seconds": 0.5}]


def test_start_log_keeps_each_lines_checkpointed_epochs_only(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    lines = [{"seed": seed, "epoch": epoch} for seed in (0, 1) for epoch in range(4)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    newest = {tmp_path / "seed0": 3, tmp_path / "seed1": 1}
    monkeypatch.setattr(run_folder.checkpoints, "set_aside_unreadable",
                        lambda folder: newest[folder])
    run_folder.start_log(path, resume=True,
                         checkpoint_of=lambda line: tmp_path / f"seed{line['seed']}")
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["seed"], line["epoch"]) for line in kept] == [
        (0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    run_folder.start_log(path, resume=False, checkpoint_of=lambda line: tmp_path)
    assert path.read_text() == ""


def _occupied(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "mine"
    out.mkdir()
    precious = out / "notes.txt"
    precious.write_text("the user's own file\n")
    return out, precious


@pytest.mark.parametrize("command", [
    ["train", "--config", str(CONFIGS / "sim_uplift.toml"), "--quiet", *_sets(UPLIFT)],
    ["ope", "--config", str(CONFIGS / "sim_ope.toml"), *_sets(OPE)],
], ids=["uplift", "ope"])
def test_uplift_and_ope_refuse_a_non_empty_out_and_leave_it_untouched(tmp_path, capsys,
                                                                      command):
    out, precious = _occupied(tmp_path)
    assert main([*command, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "already holds files but no run" in error
    assert str(out) in error
    assert precious.read_text() == "the user's own file\n"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging left either


def test_an_uplift_run_refuses_resume(tmp_path):
    config = load_config(CONFIGS / "sim_uplift.toml", UPLIFT)
    with pytest.raises(errors.RunError, match="--resume: an uplift run .* no checkpoints"):
        run_train.uplift_run(config, tmp_path / "new", resume=True)
    assert not (tmp_path / "new").exists()


def test_the_library_functions_refuse_an_occupied_out_too(tmp_path):
    out, precious = _occupied(tmp_path)
    with pytest.raises(errors.RunError, match="already holds files but no run"):
        run_train.uplift_run(load_config(CONFIGS / "sim_uplift.toml", UPLIFT), out)
    with pytest.raises(errors.RunError, match="already holds files but no run"):
        run_train.ope_run(load_config(CONFIGS / "sim_ope.toml", OPE), out)
    with pytest.raises(errors.RunError, match="is a file, not a folder"):
        run_train.ope_run(load_config(CONFIGS / "sim_ope.toml", OPE), precious)
    assert precious.read_text() == "the user's own file\n"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("kind", ["uplift", "ope"])
def test_a_failure_mid_write_leaves_no_partial_folder(tmp_path, monkeypatch, kind):
    # The failure comes after config.toml and log.jsonl are written, at metrics.json.
    def failing_write_metrics(folder, metrics):
        assert (folder / "config.toml").exists() and (folder / "log.jsonl").exists()
        raise OSError("disk full")

    monkeypatch.setattr(run_train, "write_metrics", failing_write_metrics)
    out = tmp_path / "run"
    if kind == "uplift":
        config = load_config(CONFIGS / "sim_uplift.toml", [*UPLIFT, "train.seeds=1"])
        with pytest.raises(OSError, match="disk full"):
            run_train.uplift_run(config, out)
    else:
        config = load_config(CONFIGS / "sim_ope.toml", [*OPE, "train.seeds=1"])
        with pytest.raises(OSError, match="disk full"):
            run_train.ope_run(config, out)
    assert list(tmp_path.iterdir()) == []  # neither the run nor its staging folder
    # an empty --out (made by the user beforehand) is kept empty on failure too
    out.mkdir()
    with pytest.raises(OSError, match="disk full"):
        (run_train.uplift_run if kind == "uplift" else run_train.ope_run)(config, out)
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and not any(out.iterdir())


def test_an_interrupted_ope_run_leaves_no_partial_folder(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ope_task, "ope_seed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_train.ope_run(load_config(CONFIGS / "sim_ope.toml", OPE), tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_ope_reads_its_seeds_from_train_seeds_and_refuses_ope_seeds(tmp_path, capsys):
    from causalrec_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="key ope.seeds: .* use train.seeds instead"):
        load_config(None, ["ope.seeds=2"])
    status = main(["ope", "--config", str(CONFIGS / "sim_ope.toml"), *_sets(OPE),
                   "--set", "ope.seeds=3", "--out", str(tmp_path / "never")])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "train.seeds" in error
    assert not (tmp_path / "never").exists()
    # seed_list is the one definition: the OPE run's seeds are run.seed + i, i < train.seeds
    config = load_config(CONFIGS / "sim_ope.toml", [*OPE, "train.seeds=3", "run.seed=7",
                                                    'ope.reward_model="oracle"'])
    metrics = run_train.ope_run(config, tmp_path / "three")
    assert metrics["seeds"] == [7, 8, 9]
    assert [entry["seed"] for entry in metrics["per_seed"]] == [7, 8, 9]
    assert (tmp_path / "three" / "log.jsonl").read_text() == ""  # the oracle fits nothing


@pytest.mark.slow  # make test-all (see Makefile)
def test_an_uplift_run_on_a_simlog_reports_the_sizes_of_the_log(tmp_path):
    simlog = tmp_path / "log"
    world = ["env.n_users=30", "env.n_items=12", "env.latent_dim=4", "env.slate_size=2",
             "env.horizon=6", 'policy.kind="epsilon_greedy"', 'policy.scores="noisy_oracle"',
             "policy.epsilon=0.5", "run.seed=1"]
    assert main(["simulate", "--quiet", "--out", str(simlog), *_sets(world)]) == 0
    # [env] of sim_uplift.toml (1000 users x 200 items, slates of 10, 100 steps) is not the
    # log's world
    config = load_config(CONFIGS / "sim_uplift.toml", [
        'data.format="simlog"', f'data.path="{simlog}"', "uplift.epochs=5", "train.seeds=1"])
    metrics = run_train.uplift_run(config, tmp_path / "run")
    data = metrics["data"]
    assert (data["n_users"], data["n_items"], data["slate_size"], data["horizon"]) == (
        30, 12, 2, 6)
    assert data["impressions"] == 30 * 6 * 2
    assert set(data["logging"]) == {"cp@10", "cdcg@10"}


def test_seed_curves_follow_each_member_and_the_plot_is_written(tmp_path):
    history = [
        {"epoch": 0, "loss": 2.0, "loss_per_seed": [1.0, 3.0], "seconds": 0.1,
         "valid_per_seed": [{"ndcg@5": 0.1}, {"ndcg@5": 0.3}]},
        {"epoch": 1, "loss": 2.5, "loss_per_seed": [2.5], "alive": [1], "seconds": 0.1,
         "valid_per_seed": [{"ndcg@5": 0.4}]},
    ]
    curves = run_folder.seed_curves(history, "ndcg@5")
    assert curves == [{"epoch": [0], "loss": [1.0], "valid": [0.1]},
                      {"epoch": [0, 1], "loss": [3.0, 2.5], "valid": [0.3, 0.4]}]
    without_validation = run_folder.seed_curves([{"epoch": 0, "loss": 1.0, "seconds": 0.1}],
                                                "ndcg@5")
    assert without_validation[0]["loss"] == [1.0] and math.isnan(without_validation[0]["valid"][0])
    path = tmp_path / "curve.png"
    run_folder.plot_learning_curve(path, curves, "ndcg@5", title="a run", best_epochs=[0, 1])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_start_log_drops_a_line_cut_off_by_a_kill_and_names_a_damaged_one(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    monkeypatch.setattr(run_folder.checkpoints, "set_aside_unreadable", lambda folder: 5)
    path.write_text('{"seed": 0, "epoch": 0}\n{"seed": 0, "epoch": 1}\n{"seed": 0, "ep')
    run_folder.start_log(path, resume=True, checkpoint_of=lambda line: tmp_path)
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [0, 1]
    path.write_text('{"seed": 0, "epoch": 0}\nnot json\n{"seed": 0, "epoch": 1}\n')
    with pytest.raises(errors.RunError, match=r"log.jsonl, line 2: not a JSON line"):
        run_folder.start_log(path, resume=True, checkpoint_of=lambda line: tmp_path)
    for damaged in ('{"loss": 1}', "[1]", '{"epoch": "1"}'):  # JSON, but not a log line
        path.write_text(f'{{"seed": 0, "epoch": 0}}\n{damaged}\n{{"seed": 0, "epoch": 1}}\n')
        with pytest.raises(errors.RunError, match=r"log.jsonl, line 2: expected an object "
                           "with an integer 'epoch'"):
            run_folder.start_log(path, resume=True, checkpoint_of=lambda line: tmp_path)


def test_write_run_refuses_to_resume_into_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(errors.RunError, match="is not a run folder"):
        run_folder.write_run(tmp_path, load_config(None), lambda config, folder: {},
                             kind="a run", resume=True)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
