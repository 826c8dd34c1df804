"""Config loading: defaults, TOML files, --set overrides, errors with hints, round trip."""

import dataclasses
import tomllib
from pathlib import Path

import pytest

from causalrec_jax.config import (
    Config,
    config_from_dict,
    dump_config,
    dumps_config,
    load_config,
    parse_override,
)
from causalrec_jax.errors import ConfigError


def test_defaults_without_file():
    config = load_config()
    assert config == Config()
    assert config.data.format == "simulator"
    assert config.run.seed == 0


def test_file_then_overrides(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('[data]\nformat = "coat"\npath = "a"\n[train]\nseeds = 3\nlearning_rate = 1\n')
    config = load_config(path, ["train.seeds=5", 'data.path="runs/x"', "eval.ks=[1, 2]"])
    assert config.data.format == "coat"
    assert config.data.path == "runs/x"
    assert config.train.seeds == 5
    # An integer is accepted where a float is expected, and converted.
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.eval.ks == (1, 2)


def test_override_value_not_toml_is_plain_string():
    assert parse_override("data.path=runs/x") == ("data", "path", "runs/x")
    assert parse_override("train.seeds=5") == ("train", "seeds", 5)
    assert parse_override('data.columns={user = "u"}') == ("data", "columns", {"user": "u"})
    assert load_config(None, ["data.path=runs/x"]).data.path == "runs/x"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.fromat=1", "did you mean 'format'"),
        ("trian.seeds=1", "did you mean 'train'"),
        ('train.seeds="five"', "key train.seeds: got 'five'"),
        ("train.seeds=1.5", "expected an integer"),
        ("eval.ks=[1, \"a\"]", "eval.ks[1]"),
        ("run.quiet=1", "true or false"),
        ("seeds=1", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=None) as error:
        load_config(None, [override])
    assert expected in str(error.value)


def test_unknown_section_in_file_names_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[modle]\nname = 'mf'\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "bad.toml" in str(error.value) and "did you mean 'model'" in str(error.value)


def test_invalid_toml_and_missing_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[data\nformat = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


def test_config_is_frozen():
    config = Config()
    with pytest.raises(AttributeError):
        config.run.seed = 3  # type: ignore[misc]


def test_round_trip_through_file(tmp_path):
    config = load_config(
        None,
        [
            'data.format="csv"',
            'data.columns={user = "uid", item = "item id"}',
            "data.binarize_threshold=4",
            'run.name="quote \\" and \\\\ slash"',
        ],
    )
    path = tmp_path / "effective.toml"
    dump_config(config, path)
    assert load_config(path) == config
    assert "binarize_threshold = 4.0" in dumps_config(config)
    # None values are left out (TOML has no null) and load back as None.
    assert "rating_min" not in dumps_config(config)
    assert load_config(path).data.rating_min is None


def test_config_from_dict_rejects_non_table():
    with pytest.raises(ConfigError, match=r"\[data\] must be a table"):
        config_from_dict({"data": 3})


@pytest.mark.parametrize(
    "override, key",
    [
        ("eval.ks=[]", "eval.ks"),
        ('eval.metrics=["ndcg@10"]', "eval.metrics"),
        ("data.split_ratios=[0.5, 0.2]", "data.split_ratios"),
        ("data.mar_train_fraction=0.96", "data.mar_train_fraction"),
        ("data.k_core_users=-1", "data.k_core_users"),
        ("data.binarize_threshold=nan", "data.binarize_threshold"),
        ('data.columns={usr = "a"}', "data.columns"),
        ("train.cv_folds=1", "train.cv_folds"),
        ("train.learning_rate=0", "train.learning_rate"),
        ("model.dropout=1.0", "model.dropout"),
        ("model.window_stride=51", "model.window_stride"),
        ("model.max_len=0", "model.max_len"),
        ('model.window_targets="some"', "model.window_targets"),
        ("model.length_buckets=[8, 0]", "model.length_buckets"),
        ("causal.propensity_clip=1.5", "causal.propensity_clip"),
    ],
)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert f"key {key}" in str(error.value)


def test_metric_names_agree_with_the_eval_package():
    from causalrec_jax.config import METRIC_NAMES
    from causalrec_jax.eval import POINTWISE_NAMES, RANKING_NAMES, UNBIASED_METRICS

    assert set(METRIC_NAMES) == set(RANKING_NAMES) | set(POINTWISE_NAMES) | set(
        UNBIASED_METRICS
    )


@pytest.mark.parametrize("name", ["ips_recall", "IPS_NDCG"])
def test_metrics_a_run_cannot_compute_are_refused_at_load(name):
    # They need the true number of relevant items per user; a run would crash after an epoch.
    with pytest.raises(ConfigError, match=rf"key eval.metrics: '{name}' needs each user's true"):
        load_config(None, [f'eval.metrics=["ndcg", "{name}"]'])
    assert load_config(None, ['eval.metrics=["snips_recall", "snips_ndcg", "ips_dcg"]'])


def test_a_literal_string_that_toml_reads_as_a_boolean_is_accepted():
    config = load_config(None, ["causal.propensity=true"])
    assert config.causal.propensity == "true"


def test_a_world_without_a_mar_test_sample_is_refused_at_load():
    with pytest.raises(ConfigError, match="sim.mar_items_per_user"):
        load_config(None, ["sim.mar_items_per_user=0"])


def test_sections_are_frozen_and_hashable():
    config = load_config(overrides=["eval.ks=[5, 10]", 'data.columns={user = "u"}'])
    assert config.eval.ks == (5, 10) and isinstance(config.model.hidden_dims, tuple)
    # Hashable: a section (or the whole config) can key a cache of compiled programs.
    assert hash(config) == hash(load_config(overrides=["eval.ks=[5, 10]",
                                                       'data.columns={user = "u"}']))
    assert {config.eval: 1}[config.eval] == 1
    with pytest.raises(TypeError, match="read-only"):
        config.data.columns["item"] = "i"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.eval.ks = (1,)


@pytest.mark.parametrize("name", ["plain", "quote\"and\\backslash", "tab\there", "bell\x07",
                                  "unicode é 中", "line\nbreak"])
def test_written_config_loads_back_identical(tmp_path, name):
    config = config_from_dict({"run": {"name": name}, "eval": {"ks": [1, 3]},
                               "data": {"columns": {"user": "a b", "item": "c"}}})
    dump_config(config, tmp_path / "config.toml")
    again = load_config(tmp_path / "config.toml")
    assert again == config and again.run.name == name


def test_a_key_the_run_does_not_read_is_refused_naming_it():
    from causalrec_jax.tasks.ordinary import check_ordinary_keys

    def refused(*overrides):
        with pytest.raises(ConfigError) as error:
            check_ordinary_keys(load_config(overrides=list(overrides)))
        return str(error.value)

    message = refused("ope.estimators=['ips']")
    assert message.startswith("key ope.estimators:") and "does not read [ope]" in message
    assert "key causal.propensity_clip" in refused("causal.propensity_clip=0.1")  # naive
    assert "key causal.macr_c" in refused("causal.method='ips'", "causal.propensity='true'",
                                          "causal.macr_c=0.5")
    assert "key model.hidden_dims" in refused("model.hidden_dims=[8]")  # mf has no MLP
    assert "key sim.n_users" in refused("data.format='coat'", "data.path='x'",
                                        "sim.n_users=10")
    # What the run reads passes.
    check_ordinary_keys(load_config(overrides=[
        "causal.method='dr_mse'", "causal.propensity='true'", "causal.dr_mse_lambda=0.3",
        "causal.propensity_clip=0.05", "sim.n_users=10", "model.embedding_dim=8"]))


def test_every_shipped_config_of_an_ordinary_run_reads_all_its_keys():
    from pathlib import Path

    from causalrec_jax.tasks.ordinary import check_ordinary_keys

    configs = Path(__file__).resolve().parents[1] / "configs"
    checked = 0
    for path in sorted(configs.glob("*.toml")):
        config = load_config(path) if not path.stem.endswith("_space") else None
        if (config is None or config.model.name in ("sasrec", "bert4rec", "hstu")
                or config.uplift.method
                or path.stem.startswith(("sim_ope", "sim_log", "sim_seq_log"))
                and config.data.format != "simlog"):
            continue
        check_ordinary_keys(config)
        checked += 1
    assert checked >= 38  # coat, sim, yahoo x 12 methods, ml100k and the simlog MF


def test_uplift_ope_and_simulate_refuse_keys_they_do_not_read(tmp_path, capsys):
    from causalrec_jax.cli import main
    from causalrec_jax.runs.train import ope_run
    from causalrec_jax.tasks.uplift import check_uplift_keys

    configs = Path(__file__).resolve().parents[1] / "configs"
    check_uplift_keys(load_config(configs / "sim_uplift.toml"))
    with pytest.raises(ConfigError, match="key train.learning_rate: .* uplift run"):
        check_uplift_keys(load_config(configs / "sim_uplift.toml", ["train.learning_rate=0.5"]))
    with pytest.raises(ConfigError, match=r"key model.embedding_dim: .* not read \[model\]"):
        ope_run(load_config(configs / "sim_ope.toml", ["model.embedding_dim=8"]),
                tmp_path / "o")
    assert not (tmp_path / "o").exists()
    assert main(["simulate", "--config", str(configs / "sim_log.toml"), "--set",
                 "train.epochs=3", "--out", str(tmp_path / "s")]) == 2
    assert "key train.epochs: set to 3, but causalrec simulate" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_ope_reward_model_epochs_must_be_positive():
    with pytest.raises(ConfigError, match="key ope.reward_model_epochs: got 0"):
        load_config(overrides=["ope.reward_model_epochs=0"])


def test_a_command_prints_only_what_differs_from_the_defaults():
    from causalrec_jax.config import dumps_changes

    text = dumps_changes(load_config(overrides=["train.epochs=3", "eval.ks=[5, 10]"]))
    assert tomllib.loads(text) == {"train": {"epochs": 3}, "eval": {"ks": [5, 10]}}
    assert dumps_changes(load_config()) == ""


def test_configs_selecting_on_a_small_validation_slice_say_why_that_metric():
    import re

    configs = Path(__file__).resolve().parents[1] / "configs"
    checked = 0
    for path in sorted(configs.glob("*.toml")):
        if path.stem.endswith("_space"):
            continue
        config = load_config(path)
        if config.data.split != "mar_slice":
            continue
        metric = config.train.early_stopping_metric
        # A per-user ranking metric is null on a slice with under one rating per user.
        assert metric in ("mse", "auc"), path.name
        header = [line for line in path.read_text().splitlines() if line.startswith("#")]
        reason = [line for line in header
                  if re.match(rf"# (Why {metric}|Early stopping on validation {metric}): ", line)]
        assert len(reason) == 1, f"{path.name}: no one-line reason for early stopping on {metric}"
        assert "too few to rank" in reason[0] and f"{metric} pools them" in reason[0]
        checked += 1
    assert checked >= 31  # coat, sim, yahoo x 10 methods and the quickstart


def test_mar_slice_keys_are_refused_under_another_split():
    """`data.mar_test` (and the slice fractions) act only under data.split = "mar_slice":
    set under another split they are refused in one line rather than ignored."""
    from causalrec_jax.tasks.ordinary import check_ordinary_keys

    config = load_config(None, ['data.split="random"', 'data.mar_test="all"'])
    with pytest.raises(ConfigError, match="key data.mar_test: set to 'all'"):
        check_ordinary_keys(config)
    check_ordinary_keys(load_config(None, ['data.split="mar_slice"', 'data.mar_test="all"']))
    # A sequential run (leave-one-out) refuses them the same way, through the same key list.
    from causalrec_jax.tasks.sequential import check_sequential_config

    sequential = load_config(None, ['model.name="sasrec"', 'data.split="leave_one_out"',
                                    "data.mar_valid_fraction=0.1"])
    with pytest.raises(ConfigError, match="key data.mar_valid_fraction: set to 0.1, but a "
                       "sequential run does not read it"):
        check_sequential_config(sequential)


def test_a_bad_value_given_by_set_is_named_by_its_set_not_by_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[train]\nepochs = 3\nlearning_rate = 0.5\n")
    for override, key in (("train.epochs=two", "train.epochs"),
                          ("train.epocs=2", "train.epocs"),
                          ("privacy.clip=0", "privacy.clip"),
                          # no epoch to train: refused before any folder is made
                          ("train.epochs=0", "train.epochs")):
        with pytest.raises(ConfigError) as error:
            load_config(path, [override])
        message = str(error.value)
        assert message.startswith(f"--set '{override}'") and key in message
        assert str(path) not in message
    path.write_text("[train]\nepochs = 'three'\n")  # the file's own value: the file is named
    with pytest.raises(ConfigError, match=f"^{path}: key train.epochs"):
        load_config(path, ["train.learning_rate=0.1"])
