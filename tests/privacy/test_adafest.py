"""DP-AdaFEST (Ghazi et al., NeurIPS 2023), the per-step selection of item rows: the step's
counts equal a brute-force sum of clipped contribution maps (each unit's of L2 norm at most
C_1, masked rows touching nothing), only selected rows move, the selection noise has std
sigma_1 * C_1, the two mechanisms are accounted as one, and bad settings are one line."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from causalrec_jax.config import ModelConfig, PrivacyConfig, TrainConfig, load_config
from causalrec_jax.errors import ConfigError
from causalrec_jax.models.factory import init_params
from causalrec_jax.privacy import accounting, dpsgd
from causalrec_jax.runs import train as run_train
from causalrec_jax.tasks.ordinary import check_ordinary_keys
from causalrec_jax.train.step import init_state, make_optimizer

N_USERS, N_ITEMS, CAP = 6, 12, 4
# items 10 and 11 belong to nobody: their counts are 0
ROWS = {
    "users": np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 3, 4, 5, 5], np.int32),
    "items": np.array([2, 2, 5, 1, 3, 8, 0, 4, 6, 7, 9, 2, 5, 2], np.int32),
    "ratings": np.array([5, 4, 3, 1, 2, 5, 4, 4, 3, 2, 1, 1, 5, 3], np.float32),
}


def _setup(threshold, *, adaptive_noise=1e-6, contribution_clip=1.0, noise=0.0, clip=1e6,
           loss="mse", n_items=N_ITEMS):
    """An MSE step over every user (sampling rate 1; user 3's fifth row past the cap of 4
    is left out by `unit_arrays`' draw), SGD at learning rate 1, so a row's update is its
    summed gradient over the expected batch."""
    parts = init_params(ModelConfig(name="mf", embedding_dim=3), n_users=N_USERS,
                        n_items=n_items, keys=jax.random.key(1)[None])
    params = jax.tree.map(lambda leaf: leaf[0], parts.params)
    spec = dpsgd.make_spec("user", clip=clip, noise_multiplier=noise, n_units=N_USERS,
                           expected_batch=N_USERS, examples_per_unit=CAP, user_rows="local",
                           adaptive_threshold=threshold, adaptive_noise=adaptive_noise,
                           contribution_clip=contribution_clip)
    units = dpsgd.unit_arrays(ROWS, N_USERS, "user", CAP, jax.random.key(0))
    data = {k: jnp.asarray(v) for k, v in units.items()}
    data["shared_constants"] = parts.constants
    optimizer = make_optimizer(TrainConfig(optimizer="sgd", learning_rate=1.0))
    step = dpsgd.make_dp_train_step(parts.graphdef, loss, optimizer, spec, n_users=N_USERS,
                                    n_items=n_items, n_negatives=3)
    return spec, units, data, step, init_state({"prediction": params}, optimizer)


def _brute_force_counts(units, contribution_clip=1.0):
    """Each unit's distinct items among its kept rows, weighted min(1, C_1 / sqrt(m))."""
    counts = np.zeros(N_ITEMS)
    for unit in range(N_USERS):
        items = np.unique(units["items"][unit][units["unit_mask"][unit]])
        if len(items):
            weight = min(1.0, contribution_clip / np.sqrt(len(items)))
            assert np.sqrt(len(items)) * weight <= contribution_clip + 1e-9  # norm <= C_1
            counts[items] += weight
    return counts


def _moved_items(state, new_state):
    delta = np.abs(np.asarray(new_state.params["prediction"]["item_factors"]
                              - state.params["prediction"]["item_factors"])).sum(1)
    return set(np.flatnonzero(delta > 0).tolist())


def test_the_selection_is_the_clipped_contribution_counts_at_the_threshold():
    _, units, _, _, _ = _setup(0.5)
    counts = _brute_force_counts(units)
    assert counts[10] == counts[11] == 0 and counts[2] > counts[1] > 0
    levels = np.unique(counts[counts > 0])
    plain_spec, _, plain_data, plain_step, plain_state = _setup(0.0)
    plain_state, _ = jax.jit(plain_step)(plain_state, plain_data, jax.random.key(3))
    for tau in (levels[:-1] + levels[1:]) / 2:  # between each pair of distinct counts
        spec, _, data, step, state = _setup(float(tau))
        new_state, metrics = jax.jit(step)(state, data, jax.random.key(3))
        expected = set(np.flatnonzero(counts >= tau).tolist())
        assert _moved_items(state, new_state) == expected, tau
        assert int(metrics["selected"]) == len(expected)
        # the selected rows move exactly as without the selection (no noise here)
        rows = sorted(expected)
        np.testing.assert_allclose(
            np.asarray(new_state.params["prediction"]["item_factors"])[rows],
            np.asarray(plain_state.params["prediction"]["item_factors"])[rows], rtol=1e-6)
    # C_1 scales every unit's map below its cap: with C_1 = 0.5 the counts halve where capped
    half = _brute_force_counts(units, 0.5)
    spec, _, data, step, state = _setup(float(half[5]) - 1e-6, contribution_clip=0.5)
    new_state, _ = jax.jit(step)(state, data, jax.random.key(3))
    assert _moved_items(state, new_state) == set(np.flatnonzero(half >= half[5] - 1e-6))


def test_sampled_negatives_count_and_padding_rows_do_not():
    """With BPR each unit's map holds its items and the negatives its kept rows drew (their
    gradients are not zero), not what its padding rows would have drawn: at a threshold just
    above 0 the rows selected are exactly the rows the step without selection moves (200
    items, so the 10 padding rows' 30 negatives mostly fall outside them)."""
    _, _, plain_data, plain_step, plain_state = _setup(0.0, loss="bpr", n_items=200)
    moved, _ = jax.jit(plain_step)(plain_state, plain_data, jax.random.key(5))
    expected = _moved_items(plain_state, moved)
    own = set(ROWS["items"].tolist())
    assert expected - own  # some negatives outside the users' own items moved
    _, _, data, step, state = _setup(1e-3, loss="bpr", n_items=200)
    new_state, metrics = jax.jit(step)(state, data, jax.random.key(5))
    assert _moved_items(state, new_state) == expected
    assert int(metrics["selected"]) == len(expected)


def test_the_selection_noise_has_std_sigma_1_times_c_1():
    """Items nobody holds (count 0) are selected with probability 1 - Phi(tau / (s1 C1))."""
    sigma_1, c_1, tau = 2.0, 0.5, 1.0
    # an empty row has no gradient: it moves iff it is selected, by the gradients' noise
    spec, _, data, step, state = _setup(tau, adaptive_noise=sigma_1, contribution_clip=c_1,
                                        noise=1.0, clip=1.0)
    keys = jax.random.split(jax.random.key(4), 400)
    new_states, _ = jax.jit(jax.vmap(lambda k: step(state, data, k)))(keys)
    delta = np.abs(np.asarray(new_states.params["prediction"]["item_factors"]
                              - state.params["prediction"]["item_factors"][None])).sum(2)
    chosen = (delta[:, [10, 11]] > 0).reshape(-1)
    rate = 1 - stats.norm.cdf(tau / (sigma_1 * c_1))  # 0.1587
    stderr = np.sqrt(rate * (1 - rate) / len(chosen))
    assert abs(chosen.mean() - rate) < 4 * stderr, (chosen.mean(), rate)


def test_the_two_mechanisms_are_accounted_as_one():
    assert accounting.combined_noise_multiplier(1.0, 1.0) == pytest.approx(2 ** -0.5)
    assert accounting.combined_noise_multiplier(2.0, 0.0) == 0.0
    combined = accounting.combined_noise_multiplier(0.9, 10.0)
    assert accounting.gradient_noise_for(combined, 10.0) == pytest.approx(0.9)
    with pytest.raises(ConfigError, match="^key privacy.adaptive_noise: 0.5 leaves nothing"):
        accounting.gradient_noise_for(0.8, 0.5)
    spec, *_ = _setup(1.0, adaptive_noise=10.0, noise=0.9, clip=1.0)
    assert spec.accounted_noise_multiplier == pytest.approx(combined)
    assert spec.accounted_noise_multiplier < spec.noise_multiplier  # it costs budget


def test_bad_settings_are_one_line_naming_the_key():
    cases = [
        (dict(adaptive_threshold=-1.0), "privacy.adaptive_threshold"),
        (dict(adaptive_threshold=1.0, adaptive_noise=0.0), "privacy.adaptive_noise"),
        (dict(adaptive_threshold=1.0, contribution_clip=0.0), "privacy.contribution_clip"),
        (dict(adaptive_threshold=1.0, item_rows=5), "privacy.adaptive_threshold"),
        (dict(adaptive_threshold=1.0, mechanism="fedavg"), "privacy.adaptive_threshold"),
    ]
    for values, key in cases:
        with pytest.raises(ConfigError, match=f"^key {key}:") as error:
            PrivacyConfig(level="user", noise=1.0, **values)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="^key privacy.adaptive_noise:"):
        dpsgd.make_spec("user", clip=1.0, noise_multiplier=1.0, n_units=4, expected_batch=2,
                        examples_per_unit=2, adaptive_threshold=1.0, adaptive_noise=0.0)
    # a key the run would not read is refused, not ignored: the selection's noise without a
    # threshold, and a threshold in a run without noise (nothing private to select for)
    for extra in (["privacy.noise=1.0", "privacy.adaptive_noise=3.0"],
                  ["privacy.adaptive_threshold=2.0"]):
        with pytest.raises(ConfigError, match="privacy.adaptive_") as error:
            check_ordinary_keys(load_config(None, ['privacy.level="user"', *extra]))
        assert "\n" not in str(error.value)


TINY = [
    "sim.n_users=60", "sim.n_items=40", "sim.mean_exposure=0.3", 'data.split="random"',
    "train.epochs=2", "train.batch_size=16", 'train.loss="bpr"', "train.learning_rate=0.05",
    "model.embedding_dim=8", "eval.ks=[5]", "eval.positive_threshold=0",
    'eval.metrics=["ndcg", "recall"]', 'train.early_stopping_metric="ndcg@5"',
    "train.patience=10", 'privacy.level="user"', "privacy.max_examples_per_user=8",
    "privacy.adaptive_threshold=2.0", "privacy.adaptive_noise=4.0",
]


def test_a_run_selects_rows_each_step_and_reports_its_budget(tmp_path):
    out = tmp_path / "run"
    run_train.train_run(load_config(None, TINY + ["privacy.noise=1.5"]), out, quiet=True)
    privacy = json.loads((out / "metrics.json").read_text())["privacy"]
    assert privacy["adaptive_threshold"] == 2.0 and privacy["adaptive_noise"] == 4.0
    assert privacy["noise_multiplier"] == 1.5
    assert privacy["accounted_noise_multiplier"] == pytest.approx(
        accounting.combined_noise_multiplier(1.5, 4.0))
    assert privacy["epsilon"] == pytest.approx(accounting.epsilon(
        privacy["accounted_noise_multiplier"], privacy["sampling_rate"], privacy["steps"],
        privacy["delta"]))
    assert privacy["epsilon"] > accounting.epsilon(1.5, privacy["sampling_rate"],
                                                   privacy["steps"], privacy["delta"])
    (selected,) = privacy["selected_rows_per_step"]  # one seed: the mean over its epochs
    assert 0 < selected <= 40
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and set(lines[0]) == {"seed", "epoch", "loss", "seconds", "valid"}


def test_a_target_epsilon_leaves_the_gradients_what_the_selection_does_not_spend():
    from causalrec_jax.tasks.ordinary import private_spec

    rdp = ["privacy.target_epsilon=4.0", 'privacy.accountant="rdp"']  # RDP calibrates fast
    config = load_config(None, TINY + rdp)
    graphdef = init_params(config.model, n_users=60, n_items=40,
                           keys=jax.random.key(0)[None]).graphdef
    spec = private_spec(config, graphdef, n_users=60, n_rows=400)
    steps = spec.steps_per_epoch * config.train.epochs
    spent = accounting.epsilon(spec.accounted_noise_multiplier, spec.sampling_rate, steps,
                               1 / 60, "rdp")
    assert 4.0 * 0.99 <= spent <= 4.0 * 1.001  # the calibrated combination meets the target
    assert spec.noise_multiplier > spec.accounted_noise_multiplier
    # a selection noise too small for the target leaves the gradients nothing: one line
    small = load_config(None, TINY + rdp + ["privacy.adaptive_noise=0.5"])
    with pytest.raises(ConfigError, match="^key privacy.adaptive_noise:") as error:
        private_spec(small, graphdef, n_users=60, n_rows=400)
    assert "\n" not in str(error.value)
