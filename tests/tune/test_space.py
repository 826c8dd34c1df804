"""Search spaces: parsing, checks, samplers, trial keys, applying trials and grouping."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from causalrec_jax.config import Config
from causalrec_jax.errors import ConfigError
from causalrec_jax.tune.space import (
    DYNAMIC_KEYS,
    OptunaSampler,
    Param,
    SearchSpace,
    apply_trial,
    grid_trials,
    group_trials,
    load_space,
    make_trials,
    random_trials,
    space_from_dict,
    static_signature,
    trial_key,
)

SPACE_TOML = """
[train]
learning_rate = [1e-3, 3e-3, 1e-2]
weight_decay = { low = 1e-6, high = 1e-2, scale = "log" }
loss = { choice = ["bpr", "softmax"] }

[model]
embedding_dim = [32, 64]
hidden_dims = [[64, 32], [128]]
"""


def _write(tmp_path, text: str):
    path = tmp_path / "x_space.toml"
    path.write_text(text)
    return path


def _raises(raw: dict, *fragments: str) -> str:
    """Asserts space_from_dict(raw) raises ConfigError naming the file and each fragment."""
    with pytest.raises(ConfigError) as info:
        space_from_dict(raw, "my_space.toml")
    message = str(info.value)
    assert "my_space.toml" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------------------------- parsing


def test_load_space_parses_each_kind(tmp_path):
    space = load_space(_write(tmp_path, SPACE_TOML))
    assert space.source.endswith("x_space.toml")
    assert space.keys == (
        "train.learning_rate", "train.weight_decay", "train.loss",
        "model.embedding_dim", "model.hidden_dims",
    )
    learning_rate, weight_decay, loss, embedding_dim, hidden_dims = space.params
    assert learning_rate == Param("train.learning_rate", "grid", values=(1e-3, 3e-3, 1e-2))
    assert weight_decay == Param(
        "train.weight_decay", "range", low=1e-6, high=1e-2, scale="log", integer=False
    )
    assert loss == Param("train.loss", "choice", values=("bpr", "softmax"))
    assert embedding_dim.values == (32, 64) and embedding_dim.kind == "grid"
    assert hidden_dims.values == ((64, 32), (128,))
    assert space.dynamic_keys == ("train.learning_rate", "train.weight_decay")
    assert space.static_keys == ("train.loss", "model.embedding_dim", "model.hidden_dims")
    assert learning_rate.dynamic and not loss.dynamic
    assert space.size is None  # a float range is unbounded
    assert DYNAMIC_KEYS == frozenset({
        "train.learning_rate", "train.weight_decay", "model.dropout", "causal.propensity_clip",
        "causal.imputation_value", "causal.dr_mse_lambda", "causal.dynamic_ratio",
        "causal.pda_gamma",
        "causal.macr_alpha", "causal.macr_beta", "causal.macr_c", "causal.pda_inference_gamma",
    })


def test_causal_knobs_take_ranges_and_group_into_one_population(tmp_path):
    space = load_space(_write(tmp_path, """
[causal]
propensity_clip = { low = 0.01, high = 0.2, scale = "log" }
dr_mse_lambda = [0.0, 0.5, 1.0]
"""))
    assert space.dynamic_keys == ("causal.propensity_clip", "causal.dr_mse_lambda")
    assert space.static_keys == ()


def test_values_are_typed_as_the_config_field():
    space = space_from_dict({"train": {"learning_rate": [1, 2], "weight_decay": {
        "low": 0, "high": 1}}})
    assert space.params[0].values == (1.0, 2.0)
    assert all(isinstance(v, float) for v in space.params[0].values)
    assert space.params[1].scale == "linear"
    assert isinstance(space.params[1].low, float)


def test_load_space_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_space(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="x_space.toml: not valid TOML"):
        load_space(_write(tmp_path, "[train\nlearning_rate = [1]"))


# ---------------------------------------------------------------------------------- errors


def test_unknown_section_and_key_have_hints():
    _raises({"trian": {"learning_rate": [1e-3]}}, "[trian]", "did you mean 'train'")
    _raises({"train": {"learning_rat": [1e-3]}}, "train.learning_rat", "'learning_rate'")
    # A key written outside its section points to the section.
    _raises({"learning_rate": [1e-3]}, "[learning_rate]", "[train] learning_rate")


def test_candidate_of_wrong_type_names_the_key():
    _raises({"train": {"epochs": ["a"]}}, "key train.epochs", "'a'", "an integer")
    _raises({"train": {"optimizer": ["adam", "adamm"]}}, "key train.optimizer", "'adamm'")
    _raises({"model": {"hidden_dims": [64, 32]}}, "key model.hidden_dims", "a list of")
    _raises({"train": {"loss": {"choice": ["bpr", 3]}}}, "key train.loss", "candidate 2")


def test_candidate_rejected_by_the_section_checks():
    _raises({"train": {"learning_rate": [0.0]}}, "key train.learning_rate", "> 0")
    _raises({"model": {"dropout": [0.1, 1.5]}}, "key model.dropout", "[0, 1)")


def test_empty_lists_duplicates_and_empty_space():
    _raises({"train": {"learning_rate": []}}, "key train.learning_rate", "empty list")
    _raises({"train": {"loss": {"choice": []}}}, "key train.loss", "empty list")
    _raises({"train": {"epochs": [5, 5]}}, "key train.epochs", "twice")
    _raises({}, "empty search space")
    _raises({"train": {}}, "empty search space")


def test_bad_specs():
    _raises({"train": {"epochs": 5}}, "key train.epochs", "expected a list of values")
    _raises({"train": {"loss": {"choices": ["bpr"]}}}, "key train.loss", "did you mean 'choice'")
    _raises({"train": {"loss": {"choice": "bpr"}}}, "key train.loss", "must be a list")
    _raises({"train": {"loss": {"choice": ["bpr"], "low": 1}}}, "key train.loss", "only")
    _raises({"train": {"loss": {}}}, "key train.loss", "empty table")


def test_bad_ranges():
    key = "key train.learning_rate"
    _raises({"train": {"learning_rate": {"low": 1e-2, "high": 1e-3}}}, key, "low < high")
    _raises({"train": {"learning_rate": {"low": 1e-2, "high": 1e-2}}}, key, "low < high")
    _raises({"train": {"weight_decay": {"low": 0.0, "high": 1.0, "scale": "log"}}},
            "key train.weight_decay", "low > 0")
    _raises({"train": {"learning_rate": {"low": 1e-3, "high": 1.0, "scale": "lg"}}}, key,
            "did you mean 'log'")
    _raises({"train": {"learning_rate": {"low": 1e-3}}}, key, "missing high")
    _raises({"train": {"learning_rate": {"low": "a", "high": 1.0}}}, key, "expected a number")
    _raises({"train": {"learning_rate": {"low": 1e-3, "high": 1.0, "integer": True}}}, key,
            "integer keys only")
    # The low end must itself be a valid value of the key (learning_rate > 0).
    _raises({"train": {"learning_rate": {"low": 0.0, "high": 1.0}}}, key, "> 0")


def test_range_on_static_key_is_rejected():
    message = _raises(
        {"model": {"embedding_dim": {"low": 16, "high": 128, "integer": True}}},
        "key model.embedding_dim: a range needs a dynamic key",
        "give a list or a choice for static keys",
    )
    assert "train.learning_rate" in message


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        ({"data": {"k_core_users": [5, 10]}}, ("key data.k_core_users", "dataset")),
        ({"sim": {"n_users": [10, 20]}}, ("key sim.n_users", "simulated world")),
        ({"run": {"seed": [0, 1]}}, ("key run.seed", "not tunable")),
        ({"eval": {"ks": [[5], [10]]}}, ("key eval.ks", "not tunable")),
        ({"train": {"seeds": [1, 2]}}, ("key train.seeds", "--seeds")),
        ({"train": {"seeds": ["a"]}}, ("key train.seeds",)),
    ],
)
def test_untunable_keys(raw, fragments):
    _raises(raw, *fragments)


# -------------------------------------------------------------------------------- samplers


def _discrete_space() -> SearchSpace:
    return space_from_dict(
        {
            "train": {"learning_rate": [1e-3, 1e-2], "loss": {"choice": ["bpr", "softmax"]}},
            "model": {"embedding_dim": [16, 32, 64]},
        },
        "discrete.toml",
    )


def test_grid_is_the_product_in_file_order():
    trials = grid_trials(_discrete_space())
    assert len(trials) == 12 == _discrete_space().size
    assert trials[0] == {"train.learning_rate": 1e-3, "train.loss": "bpr",
                         "model.embedding_dim": 16}
    assert trials[1] == {"train.learning_rate": 1e-3, "train.loss": "bpr",
                         "model.embedding_dim": 32}
    assert trials[3]["train.loss"] == "softmax"
    assert trials[6]["train.learning_rate"] == 1e-2
    assert len({trial_key(t) for t in trials}) == 12
    assert list(trials[0]) == ["train.learning_rate", "train.loss", "model.embedding_dim"]


def test_grid_gives_lists_for_list_fields():
    trials = grid_trials(space_from_dict({"model": {"hidden_dims": [[64, 32], [128]]}}))
    assert trials == [{"model.hidden_dims": [64, 32]}, {"model.hidden_dims": [128]}]


def test_grid_rejects_ranges():
    space = space_from_dict({"train": {"weight_decay": {"low": 0.0, "high": 1.0}}}, "s.toml")
    with pytest.raises(ConfigError, match=r"s\.toml: key train\.weight_decay.*--sampler random"):
        grid_trials(space)


def test_random_is_deterministic_and_distinct():
    space = load_space_text(SPACE_TOML)
    first = random_trials(space, 20, seed=0)
    assert first == random_trials(space, 20, seed=0)
    assert first != random_trials(space, 20, seed=1)
    assert len({trial_key(t) for t in first}) == 20
    # A longer search with the same seed extends a shorter one.
    assert random_trials(space, 5, seed=0) == first[:5]
    for trial in first:
        assert trial["train.learning_rate"] in (1e-3, 3e-3, 1e-2)
        assert trial["train.loss"] in ("bpr", "softmax")
        assert trial["model.hidden_dims"] in ([64, 32], [128])
        assert 1e-6 <= trial["train.weight_decay"] <= 1e-2


def test_random_discrete_space_without_duplicates():
    space = _discrete_space()
    trials = random_trials(space, 8, seed=3)
    keys = [trial_key(t) for t in trials]
    assert len(set(keys)) == 8
    assert random_trials(space, 4, seed=3) == trials[:4]
    # Asking for more than the space holds gives all of it, in a random order.
    everything = random_trials(space, 100, seed=3)
    assert len(everything) == 12
    assert sorted(map(trial_key, everything)) == sorted(map(trial_key, grid_trials(space)))
    assert everything != grid_trials(space)


def test_random_uniform_over_candidates():
    space = space_from_dict({"train": {"epochs": [1, 2, 3, 4]}, "model": {"n_layers": [0, 1]}})
    counts = np.zeros(4)
    for seed in range(300):
        for trial in random_trials(space, 1, seed=seed):
            counts[trial["train.epochs"] - 1] += 1
    assert counts.min() > 50  # 75 expected each


def test_random_log_range_spreads_over_decades():
    space = space_from_dict({"train": {"weight_decay": {"low": 1e-6, "high": 1e-2,
                                                        "scale": "log"}}})
    values = np.array([t["train.weight_decay"] for t in random_trials(space, 400, seed=0)])
    assert values.min() >= 1e-6 and values.max() <= 1e-2
    decades = np.floor(np.log10(values)).astype(int)
    counts = np.bincount(decades + 6, minlength=4)[:4]
    assert counts.min() > 60  # 100 per decade expected; uniform would put ~90% in the last
    linear = space_from_dict({"train": {"weight_decay": {"low": 1e-6, "high": 1e-2}}})
    values = np.array([t["train.weight_decay"] for t in random_trials(linear, 400, seed=0)])
    assert np.mean(values > 1e-3) > 0.8


def test_random_integer_ranges_are_integral():
    # No dynamic key is an integer today, so build the space directly.
    for scale in ("linear", "log"):
        space = SearchSpace(
            (Param("train.epochs", "range", low=1, high=6, scale=scale, integer=True),), "s"
        )
        assert space.size == 6
        trials = random_trials(space, 6, seed=0)
        values = sorted(t["train.epochs"] for t in trials)
        assert values == [1, 2, 3, 4, 5, 6]
        assert all(type(v) is int for v in values)


def test_random_gives_up_when_no_new_trial_turns_up():
    # A degenerate range (built directly; parsing rejects it) has a single point.
    space = SearchSpace((Param("train.learning_rate", "range", low=1e-3, high=1e-3),), "s.toml")
    with pytest.raises(ConfigError, match=r"s\.toml: found only 1 distinct trials of 2"):
        random_trials(space, 2, seed=0)


def test_make_trials():
    space = _discrete_space()
    assert make_trials(space, "grid", None, seed=0) == grid_trials(space)
    assert make_trials(space, "grid", 12, seed=0) == grid_trials(space)
    assert make_trials(space, "grid", 50, seed=0) == grid_trials(space)
    with pytest.raises(ConfigError, match="12 trials.*--sampler random"):
        make_trials(space, "grid", 5, seed=0)
    assert make_trials(space, "random", 5, seed=2) == random_trials(space, 5, seed=2)
    with pytest.raises(ConfigError, match="needs --trials"):
        make_trials(space, "random", None, seed=0)
    with pytest.raises(ConfigError, match="--trials got 0"):
        make_trials(space, "random", 0, seed=0)
    with pytest.raises(ConfigError, match="OptunaSampler"):
        make_trials(space, "optuna", 5, seed=0)
    with pytest.raises(ConfigError, match="did you mean 'grid'"):
        make_trials(space, "gird", 5, seed=0)


def load_space_text(text: str) -> SearchSpace:
    import tomllib

    return space_from_dict(tomllib.loads(text), "x_space.toml")


# --------------------------------------------------------------------------------- optuna


def test_optuna_ask_tell_round_trip():
    pytest.importorskip("optuna", reason="optuna is an optional dependency")
    space = load_space_text(SPACE_TOML)

    def run(seed: int):
        sampler = OptunaSampler(space, seed=seed, direction="maximize")
        history = []
        for _ in range(4):
            proposals = sampler.ask(4)
            numbers = [number for number, _ in proposals]
            # Objective: larger with the learning rate, and nan (diverged) for "softmax".
            objectives = [
                math.nan if v["train.loss"] == "softmax" else v["train.learning_rate"]
                - 10 * v["train.weight_decay"]
                for _, v in proposals
            ]
            sampler.tell(numbers, objectives)
            history.extend(proposals)
        return sampler, history

    sampler, history = run(seed=0)
    assert [number for number, _ in history] == list(range(16))
    for _, values in history:
        assert list(values) == list(space.keys)
        assert values["train.learning_rate"] in (1e-3, 3e-3, 1e-2)
        assert type(values["train.weight_decay"]) is float
        assert 1e-6 <= values["train.weight_decay"] <= 1e-2
        assert values["train.loss"] in ("bpr", "softmax")
        assert values["model.embedding_dim"] in (32, 64)
        assert type(values["model.embedding_dim"]) is int
        assert values["model.hidden_dims"] in ([64, 32], [128])
        apply_trial(Config(), values)  # every proposal makes a valid config
    states = {t.state.name for t in sampler.study.trials}
    assert states <= {"COMPLETE", "FAIL"} and "COMPLETE" in states
    assert sampler.study.best_value == max(
        v["train.learning_rate"] - 10 * v["train.weight_decay"]
        for _, v in history if v["train.loss"] == "bpr"
    )
    # Same seed, same calls: same proposals.
    assert run(seed=0)[1] == history


def test_optuna_add_registers_finished_trials():
    pytest.importorskip("optuna", reason="optuna is an optional dependency")
    space = load_space_text(SPACE_TOML)
    sampler = OptunaSampler(space, seed=0, direction="minimize")
    finished = random_trials(space, 3, seed=0)
    for index, values in enumerate(finished):
        sampler.add(values, float(index))
    assert sampler.study.best_value == 0.0
    assert sampler.study.best_trial.params["train.loss"] == finished[0]["train.loss"]
    (number, values), = sampler.ask(1)
    assert number == 3 and set(values) == set(space.keys)
    with pytest.raises(ConfigError, match="lacks key"):
        sampler.add({"train.learning_rate": 1e-3}, 0.0)
    with pytest.raises(ConfigError, match="key train.learning_rate"):
        sampler.add({**finished[0], "train.learning_rate": 0.5}, 0.0)
    with pytest.raises(ConfigError, match="direction"):
        OptunaSampler(space, seed=0, direction="up")


def test_optuna_missing_gives_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "optuna" or name.startswith("optuna."):
            raise ImportError("no optuna")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ConfigError, match=re.escape("pip install 'causalrec_jax[tune]'")):
        OptunaSampler(_discrete_space(), seed=0)


# ------------------------------------------------------------------------ keys and configs


def test_trial_key_stable_and_distinct():
    values = {"train.learning_rate": 1e-3, "model.hidden_dims": [64, 32]}
    key = trial_key(values)
    assert re.fullmatch(r"[0-9a-f]{12}", key)
    assert key == trial_key(dict(reversed(list(values.items()))))  # key order does not matter
    assert key == trial_key({"train.learning_rate": np.float64(1e-3),
                             "model.hidden_dims": (64, 32)})
    assert trial_key(values) == trial_key(values)
    assert key != trial_key({**values, "train.learning_rate": 2e-3})
    assert key != trial_key({**values, "model.hidden_dims": [64]})


def test_trial_key_pinned():
    # Resuming a search relies on the key not changing between versions.
    import hashlib
    import json

    values = {"train.learning_rate": 0.001}
    expected = hashlib.sha1(json.dumps(values, separators=(",", ":")).encode()).hexdigest()[:12]
    assert trial_key(values) == expected


def test_apply_trial_sets_values_and_checks_them():
    config = Config()
    trial = {"train.learning_rate": 1e-2, "model.embedding_dim": 16,
             "model.hidden_dims": [8], "train.loss": "bpr"}
    new = apply_trial(config, trial)
    assert new.train.learning_rate == 1e-2 and new.model.embedding_dim == 16
    assert new.model.hidden_dims == (8,) and new.train.loss == "bpr"
    assert new.train.epochs == config.train.epochs
    assert config.train.learning_rate == 1e-3  # the original is untouched
    assert apply_trial(config, {"model.hidden_dims": (8, 4)}).model.hidden_dims == (8, 4)
    # numpy scalars (e.g. read back from a population's arrays) become Python numbers.
    from_numpy = apply_trial(config, {"train.learning_rate": np.float32(0.5),
                                      "model.embedding_dim": np.int64(8)})
    assert type(from_numpy.train.learning_rate) is float
    assert type(from_numpy.model.embedding_dim) is int
    with pytest.raises(ConfigError, match="key train.learning_rate"):
        apply_trial(config, {"train.learning_rate": -1.0})
    with pytest.raises(ConfigError, match="key train.epochs"):
        apply_trial(config, {"train.epochs": "many"})
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        apply_trial(config, {"train.learning_rat": 1e-3})
    with pytest.raises(ConfigError, match="did you mean train.learning_rate"):
        apply_trial(config, {"learning_rate": 1e-3})


# -------------------------------------------------------------------------------- grouping


def test_group_trials_by_static_values():
    space = _discrete_space()  # dynamic: learning_rate; static: loss, embedding_dim
    trials = grid_trials(space)
    groups = group_trials(trials, space)
    assert len(groups) == 6
    assert sorted(i for group in groups for i in group) == list(range(12))
    for group in groups:
        assert len(group) == 2
        signatures = {static_signature(trials[i], space) for i in group}
        assert len(signatures) == 1
        assert {trials[i]["train.learning_rate"] for i in group} == {1e-3, 1e-2}
    # First-appearance order: the grid's first six trials open the six groups.
    assert [group[0] for group in groups] == list(range(6))
    assert static_signature(trials[0], space) == (
        ("train.loss", "bpr"), ("model.embedding_dim", 16)
    )


def test_group_trials_with_list_values_and_only_dynamic_keys():
    space = space_from_dict({"model": {"hidden_dims": [[8], [8, 4]]},
                             "train": {"weight_decay": [0.0, 1e-4]}})
    trials = random_trials(space, 4, seed=0)
    groups = group_trials(trials, space)
    assert len(groups) == 2
    dynamic_only = space_from_dict({"train": {"learning_rate": {"low": 1e-4, "high": 1e-1,
                                                                "scale": "log"}}})
    assert group_trials(random_trials(dynamic_only, 5, seed=0), dynamic_only) == [
        [0, 1, 2, 3, 4]
    ]
