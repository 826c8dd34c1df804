"""MACR under DP: the private step's clipped sum of MACR's objective (the model with its user
and item modules, the objective an ordinary MACR run trains) equals a brute-force loop of
per-user `jax.grad` over whole tables and whole modules; a private MACR run trains both
modules, accounts its steps and serves; federated MACR is one line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.causal.training import make_causal_objective
from causalrec_jax.config import CausalConfig, TrainConfig, load_config
from causalrec_jax.errors import ConfigError
from causalrec_jax.models.base import make_scorers
from causalrec_jax.privacy import accounting, dpsgd
from causalrec_jax.runs import load as run_load
from causalrec_jax.runs import train as run_train
from causalrec_jax.train.objectives import seen_items_data
from causalrec_jax.train.step import init_state, make_optimizer

from .test_dpsgd import N_ITEMS, N_USERS, ROWS, _clipped_objective_sum, _model
from .test_private_run import TINY

HPARAMS = {"macr_alpha": jnp.float32(0.5), "macr_beta": jnp.float32(0.3)}


def _macr(score_pairs, score_all=None):
    return make_causal_objective("macr", CausalConfig(), "bce", score_pairs, n_users=N_USERS,
                                 n_items=N_ITEMS, n_rows=1, n_negatives=3)


def test_private_macr_sums_equal_a_brute_force_loop_over_whole_tables_and_modules():
    parts = _model("mf")
    rng = np.random.default_rng(2)
    params = {"prediction": jax.tree.map(lambda leaf: leaf[0], parts.params),
              "user_logit": jnp.asarray(rng.normal(size=N_USERS), jnp.float32),
              "item_logit": jnp.asarray(rng.normal(size=N_ITEMS), jnp.float32)}
    spec = dpsgd.make_spec("user", clip=0.05, noise_multiplier=0.0, n_units=N_USERS,
                           expected_batch=N_USERS, examples_per_unit=4, user_rows="noised")
    units = dpsgd.unit_arrays({k: ROWS[k] for k in ("users", "items")}, N_USERS, "user", 4,
                              jax.random.key(0))
    data = {k: jnp.asarray(v) for k, v in units.items()}
    data["shared_constants"] = parts.constants
    data.update({k: jnp.asarray(v) for k, v in seen_items_data(
        ROWS["users"], ROWS["items"], N_USERS, N_ITEMS).items()})
    optimizer = make_optimizer(TrainConfig(optimizer="sgd", learning_rate=1.0))
    step = dpsgd.make_dp_train_step(parts.graphdef, "bce", optimizer, spec, n_users=N_USERS,
                                    n_items=N_ITEMS, n_negatives=3, objective=_macr,
                                    samples_negatives=True)
    state = init_state(params, optimizer, HPARAMS)
    key = jax.random.key(7)
    new_state, metrics = jax.jit(step)(state, data, key)
    got = jax.tree.map(lambda old, new: (old - new) * spec.expected_batch, params,
                       new_state.params)

    # MACR's objective of an ordinary run, on the whole tables and modules, unit by unit
    objective = _macr(make_scorers(parts.graphdef, parts.constants).score_pairs)
    want = _clipped_objective_sum(objective, params, data, key, spec, HPARAMS, 4)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-3, atol=2e-6)
    assert int(metrics["clipped"]) >= 1
    # both modules move
    assert np.abs(np.asarray(got["item_logit"])).max() > 1e-4
    assert np.abs(np.asarray(got["user_logit"])).max() > 1e-4


MACR = ['causal.method="macr"', 'train.loss="bce"', "privacy.noise=1.0",
        'privacy.user_rows="noised"']


def test_a_private_macr_run_trains_both_modules_accounts_and_serves(tmp_path, capsys):
    out = tmp_path / "run"
    metrics = run_train.train_run(load_config(None, TINY + MACR), out, quiet=True)
    privacy = metrics["privacy"]
    assert privacy["epsilon"] == pytest.approx(accounting.epsilon(
        1.0, privacy["sampling_rate"], privacy["steps"], privacy["delta"]))
    extra = run_load.load_run(out).extra
    for name in ("user_logit", "item_logit"):  # trained from their zeros
        assert np.abs(np.asarray(extra[name])).max() > 1e-3
    from causalrec_jax.cli import main  # (the CLI, for this test alone)

    assert main(["evaluate", "--run", str(out)]) == 0
    assert f"ndcg@5 {metrics['test']['ndcg@5']:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "named"), [
    (['privacy.mechanism="fedavg"'], "causal.method"),
    # MACR samples negatives whatever its loss: away from the user's items, one row's
    # negatives would depend on the user's other rows
    (['privacy.level="example"', 'privacy.user_rows="noised"'], "train.exclude_seen_negatives"),
])
def test_what_a_private_macr_cannot_train_is_one_line(tmp_path, extra, named):
    with pytest.raises(ConfigError, match=f"key {named}"):
        base = [s for s in TINY if "max_examples_per_user" not in s or "fedavg" in str(extra)]
        run_train.train_run(load_config(None, base + MACR[:3] + extra), tmp_path / "bad",
                            quiet=True)
    assert not (tmp_path / "bad").exists()
