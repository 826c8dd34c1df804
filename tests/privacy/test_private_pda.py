"""PDA under DP: the private step's clipped sum of PDA's objective (the causal objective an
ordinary PDA run trains) equals a brute-force loop over whole tables; a private PDA run
counts item popularity under DP, composes that count into its epsilon, and serves on the
noisy popularity; what it cannot train is one line."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax import streams
from causalrec_jax.causal.training import log_popularity, make_causal_objective
from causalrec_jax.config import CausalConfig, TrainConfig, load_config
from causalrec_jax.data.loader import load_split
from causalrec_jax.errors import ConfigError
from causalrec_jax.models.base import make_scorers
from causalrec_jax.privacy import accounting, dpsgd
from causalrec_jax.runs import load as run_load
from causalrec_jax.runs import train as run_train
from causalrec_jax.tasks import ordinary
from causalrec_jax.train.objectives import seen_items_data
from causalrec_jax.train.step import init_state, make_optimizer

from .test_dpsgd import (
    N_ITEMS,
    N_USERS,
    ROWS,
    _clipped_objective_sum,
    _model,
    _summed_update,
)
from .test_private_run import TINY

GAMMA = 0.2


def test_private_pda_sums_equal_a_brute_force_loop_over_whole_tables():
    parts = _model("mf")
    params = jax.tree.map(lambda leaf: leaf[0], parts.params)
    spec = dpsgd.make_spec("user", clip=0.05, noise_multiplier=0.0, n_units=N_USERS,
                           expected_batch=N_USERS, examples_per_unit=4, user_rows="noised")
    rows = {k: ROWS[k] for k in ("users", "items")}
    units = dpsgd.unit_arrays(rows, N_USERS, "user", 4, jax.random.key(0))
    popularity = jnp.asarray(log_popularity(ROWS["items"], N_ITEMS))
    data = {k: jnp.asarray(v) for k, v in units.items()}
    data["shared_constants"] = parts.constants
    data["shared_log_popularity"] = popularity
    data.update({k: jnp.asarray(v) for k, v in seen_items_data(
        ROWS["users"], ROWS["items"], N_USERS, N_ITEMS).items()})
    optimizer = make_optimizer(TrainConfig(optimizer="sgd", learning_rate=1.0))

    def pda(score_pairs, score_all):  # the run's objective over the scorers it is given
        return make_causal_objective("pda", CausalConfig(), "bpr", score_pairs,
                                     n_users=N_USERS, n_items=N_ITEMS, n_rows=1, n_negatives=3)

    step = dpsgd.make_dp_train_step(parts.graphdef, "bpr", optimizer, spec, n_users=N_USERS,
                                    n_items=N_ITEMS, n_negatives=3, objective=pda)
    state = init_state({"prediction": params}, optimizer, {"pda_gamma": jnp.float32(GAMMA)})
    key = jax.random.key(7)
    got, metrics = _summed_update(step, state, data, key, spec)

    # the causal objective of an ordinary PDA run, on the whole tables, one unit at a time
    scorers = make_scorers(parts.graphdef, parts.constants)
    objective = make_causal_objective("pda", CausalConfig(), "bpr", scorers.score_pairs,
                                      n_users=N_USERS, n_items=N_ITEMS, n_rows=1,
                                      n_negatives=3)
    want = _clipped_objective_sum(objective, {"prediction": params}, data, key, spec,
                                  {"pda_gamma": jnp.float32(GAMMA)}, 4)["prediction"]
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-3, atol=2e-6)
    assert int(metrics["clipped"]) >= 1
    # gamma is read: another gamma gives another sum
    flat = init_state({"prediction": params}, optimizer, {"pda_gamma": jnp.float32(0.0)})
    other, _ = _summed_update(step, flat, data, key, spec)
    assert not np.allclose(np.asarray(other["item_factors"]), np.asarray(got["item_factors"]))


PDA = ['causal.method="pda"', "causal.pda_gamma=0.1", "privacy.noise=1.0",
       "privacy.selection_noise=2.0"]


@pytest.fixture(scope="module")
def pda_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("private_pda") / "run"
    return run_train.train_run(load_config(None, TINY + PDA), out, quiet=True), out


def test_a_private_pda_run_counts_popularity_under_dp_and_accounts_it(pda_run):
    metrics, out = pda_run
    privacy = metrics["privacy"]
    assert privacy["selection_noise"] == 2.0
    sampling = privacy["sampling_rate"]
    without_counts = accounting.epsilon(1.0, sampling, privacy["steps"], privacy["delta"])
    assert privacy["epsilon"] == pytest.approx(accounting.epsilon(
        1.0, sampling, privacy["steps"], privacy["delta"], selection_noise=2.0))
    assert privacy["epsilon"] > without_counts
    # the run serves the popularity it trained on, counted under DP from its seed
    served = np.asarray(run_load.load_run(out).extra["log_popularity"])[0]
    np.testing.assert_array_equal(served, _drawn(load_config(None, TINY + PDA))[0])
    assert 0 <= metrics["test"]["ndcg@5"] <= 1


def _setup(config):
    split, _ = load_split(config.data, config.sim, seed=config.run.seed)
    return ordinary.program_setup(config, split), split


def _drawn(config):
    """`(log popularity, noisy counts)` as a run of `config` draws them from its seed."""
    setup, split = _setup(config)
    counts = dpsgd.item_counts(setup.arrays, split.train.n_items)
    noisy = dpsgd.noisy_counts(
        streams.derive(jax.random.key(config.run.seed), streams.Run.PRIVATE_ITEMS), counts,
        setup.spec.privacy)
    return dpsgd.noisy_log_popularity(noisy), noisy, setup, counts


def test_pda_trains_on_the_noisy_counts_and_selection_reads_the_same_ones():
    popularity, noisy, setup, counts = _drawn(load_config(None, TINY + PDA))
    np.testing.assert_array_equal(np.asarray(setup.constants["log_popularity"]), popularity)
    np.testing.assert_array_equal(np.asarray(setup.data["shared_log_popularity"]), popularity)
    assert not np.allclose(popularity, dpsgd.noisy_log_popularity(counts), atol=1e-3)
    assert np.exp(popularity).sum() == pytest.approx(1.0, rel=1e-4)
    # with DP-FEST's selection too: one draw, read by both
    both, _, both_setup, _ = _drawn(load_config(None, TINY + PDA + ["privacy.item_rows=20"]))
    np.testing.assert_array_equal(both, popularity)
    np.testing.assert_array_equal(np.asarray(both_setup.data[dpsgd.TRAINED_ITEMS]),
                                  dpsgd.top_items(noisy, 20))


def test_without_noise_the_popularity_is_counted_exactly():
    for extra in ([], ["privacy.item_rows=20"]):  # a selection's noise leaves PDA's count
        config = load_config(None, TINY + PDA[:2] + extra)
        setup, split = _setup(config)
        rows, _ = ordinary.training_rows(config, split, None)
        np.testing.assert_array_equal(np.asarray(setup.constants["log_popularity"]),
                                      log_popularity(rows["items"], split.train.n_items))


@pytest.mark.parametrize(("overrides", "named"), [
    (PDA + ['privacy.mechanism="fedavg"'], "causal.method"),
    # without noise nothing is counted under DP, so the counts' noise is not read
    (PDA[:2] + ["privacy.selection_noise=2.0"], "privacy.selection_noise"),
])
def test_what_a_private_pda_cannot_train_is_one_line(tmp_path, overrides, named):
    with pytest.raises(ConfigError, match=f"key {named}"):
        run_train.train_run(load_config(None, TINY + overrides), tmp_path / "bad",
                            quiet=True)
    assert not (tmp_path / "bad").exists()
