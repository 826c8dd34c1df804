"""`causalrec ope`: off-policy evaluation on the dynamic simulator against on-policy truth.

A round is one user arriving (uniformly from the population, `env.reset`) and shown one
slate by the logging policy `[policy]`; its reward is the number of clicks. For each of
`train.seeds` seeds (`run.seed + i`, as in every run kind), `ope.n_rounds` rounds are logged,
a reward model is fitted to them (`causal.reward_model`, unless `ope.reward_model =
"oracle"`) with cross-fitting — the reward model of a round is fitted on the other
`ope.reward_model_folds` folds, since a model that has seen a round's click predicts it too
well and cancels the DR correction — and every estimator of
`ope.estimators` (`causal.ope`) estimates the value of the target policy `[target]`. The truth
is the mean expected reward of `ope.truth_rounds` on-policy rounds of the target policy
(`truth`, with its standard error), and, where the slot marginals are exact, the exact
expectation over users (`truth_exact`).

Estimator inputs per round (slate `a_1..a_K` shown to user `u`):
- `ips`, `snips`, `dr`, `sndr`, `switch_dr`, `dros`: slate-level probabilities
  `pi(a_1..a_K | u)` of both policies (exact), reward = clicks of the round; `dr` family uses
  `q_hat(u, slate) = sum_k q_hat(u, a_k, k)` and its target expectation
  `sum_{a,k} P_target(a at k | u) q_hat(u, a, k)`. With `K = 1` these are the textbook
  contextual-bandit estimators.
- `iips`: per-slot clicks weighted by the item-position marginals; `pbm_ips`: by the
  examination-weighted marginals, with the simulator's examination probabilities.

Weights are clipped at `ope.clip` (0: none) by THE clip (`causal.clip.clip_weights`, inside
every estimator); `importance_weights` gives a run the same clip's report for each kind of
weight its estimators use: `slate` (`pi_e(slate) / pi_b(slate)`: ips, snips and the dr
family), `item_position` (iips) and `position_based` (pbm_ips).

Random streams (`causalrec_jax.streams`): seed `s` (`run.seed + i`) has the root key `key(s)`,
into which the log (`Ope.LOG`, then the round index one level down), the slot marginals
(`Ope.MARGINALS`, then `Marginals.TARGET` / `LOGGING`), the fold assignment (`Ope.FOLDS`) and
the reward models (`Ope.REWARD_MODEL`, then the fold index one level down) fold their own ids;
the truth is `derive(key(run.seed), Ope.TRUTH)`, an id no seed stream uses.

`metrics.json` follows the run contract: `test` / `test_std` / `test_ci95` (means over seeds of
`<estimator>_estimate` and `<estimator>_relative_error`, |estimate - truth| / truth),
`per_seed` (each `{seed, best_epoch, valid, test, estimates, weights, click_rate}`;
`best_epoch` is -1: nothing is selected by epoch, and there is no validation, so `valid` is
`{}` and there is no top-level `valid`), `seeds` (`run.seed + i`), `data`, `timing`,
`versions`; and the kind's own blocks: `"ope"` (for each estimator `estimate`, `stderr`
(means over seeds), `truth`, `relative_error` (mean over seeds), its std, `n_eff`, `weights`
(the kind of weight it uses, or None) and per-seed values), `"truth"`, and `"weights"` (for
each kind of weight, THE clip's report, each field the mean over seeds). `log.jsonl` (written
by `runs.train`) has one line per reward-model epoch and seed: `seed`, `epoch`, `loss` (the
mean over the cross-fitting folds), `seconds` (the seed's reward-model time over
`ope.reward_model_epochs`: the epochs run as compiled scans); it is empty for
`ope.reward_model = "oracle"`.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax import streams
from causalrec_jax.causal import ope as estimators
from causalrec_jax.causal.reward_model import fit_reward_model, reward_table
from causalrec_jax.config import Config
from causalrec_jax.eval.summary import aggregate, summarize
from causalrec_jax.sim import policies
from causalrec_jax.sim.env import EnvParams
from causalrec_jax.sim.logs import env_from_config, oracle_scores, policy_from_config
from causalrec_jax.sim.rollout import rollout
from causalrec_jax.tasks.ordinary import seed_list

# Which weights each estimator multiplies rewards by (None: none).
WEIGHT_KINDS = {"ips": "slate", "snips": "slate", "dr": "slate", "sndr": "slate",
                "switch_dr": "slate", "dros": "slate", "dm": None, "iips": "item_position",
                "pbm_ips": "position_based"}
_TRUTH_CHUNK = 65_536
_USER_BLOCK = 128


def _one_round(key, policy, env_params):
    """One round: an arriving user shown one slate (a rollout of one step)."""
    trajectory = rollout(key, policies.slate_policy, policy, env_params, 1)
    info = {name: value[0] for name, value in trajectory.info.items()}
    return info, trajectory.reward[0]


@functools.partial(jax.jit, static_argnums=4)
def _rounds(key, offset, policy, env_params, n_rounds):
    """Rounds `offset .. offset + n_rounds - 1`, round r under `streams.index(key, r)`."""
    keys = jax.vmap(lambda r: streams.index(key, offset + r))(jnp.arange(n_rounds))
    return jax.vmap(_one_round, in_axes=(0, None, None))(keys, policy, env_params)


def log_rounds(key: jax.Array, policy, env_params: EnvParams, n_rounds: int) -> dict:
    """`n_rounds` logged rounds (vmap over `streams.index(key, r)`): the env's `info` plus
    reward."""
    info, reward = _rounds(key, 0, policy, env_params, n_rounds)
    return {**{name: np.asarray(value) for name, value in info.items()},
            "reward": np.asarray(reward)}


def on_policy_value(key: jax.Array, policy, env_params: EnvParams, n_rounds: int):
    """Mean and standard error of the expected reward of `n_rounds` on-policy rounds."""
    chunk = min(n_rounds, _TRUTH_CHUNK)
    total = total_sq = 0.0
    for start in range(0, n_rounds, chunk):
        info, _ = _rounds(key, start, policy, env_params, chunk)
        expected = np.asarray(info["expected_reward"], np.float64)[: n_rounds - start]
        total += float(expected.sum())
        total_sq += float(np.square(expected).sum())
    mean = total / n_rounds
    variance = max(total_sq / n_rounds - mean**2, 0.0)
    return mean, (variance / max(n_rounds - 1, 1)) ** 0.5


def _oracle_table(env_params: EnvParams, users: jax.Array) -> jax.Array:
    values = oracle_scores(env_params)[users]
    attraction = jax.nn.sigmoid(values + env_params.click_offset) * env_params.available
    return attraction[:, :, None] * env_params.examination[None, None, :]


@functools.partial(jax.jit, static_argnames="n_samples")
def _slot_tables(key, target, logging, block, q, *, n_samples):
    """Target and logging slot marginals `[b, n_items, K]` of `block`, and the target's
    expected reward model value `[b]` under `q` `[b, n_items, K]`."""
    target_table = policies.slot_marginal_table(
        target, block, key=streams.derive(key, streams.Marginals.TARGET), n_samples=n_samples)
    logging_table = policies.slot_marginal_table(
        logging, block, key=streams.derive(key, streams.Marginals.LOGGING), n_samples=n_samples)
    return target_table, logging_table, q, jnp.sum(target_table * q, axis=(1, 2))


_slate_log_probs = jax.jit(jax.vmap(policies.slate_log_prob, in_axes=(None, 0, 0)))
_oracle_block = jax.jit(lambda env_params, users: _oracle_table(env_params, users))


def _block_quantities(config: Config, key, logging, target, table_fn, users: np.ndarray,
                      rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-round reward-model values and slot marginals, computed over blocks of users."""
    n_samples = config.ope.marginal_samples
    slate = rows["slate"]
    n, k = slate.shape
    out = {name: np.zeros(shape, np.float32) for name, shape in (
        ("q_logged", (n,)), ("q_target", (n,)), ("target_slot", (n, k, k)),
        ("logging_slot", (n, k, k)), ("exact_value", (len(users),)))}

    def block_tables(block):
        q = table_fn(block)
        return _slot_tables(key, target, logging, block, q, n_samples=n_samples)

    positions = {int(user): index for index, user in enumerate(users)}
    round_user_index = np.array([positions[int(u)] for u in rows["user"]])
    for start in range(0, len(users), _USER_BLOCK):
        block = users[start:start + _USER_BLOCK]
        padded = np.pad(block, (0, _USER_BLOCK - len(block)), mode="edge")
        target_table, logging_table, q, q_target = map(
            np.asarray, block_tables(jnp.asarray(padded, jnp.int32)))
        out["exact_value"][start:start + len(block)] = q_target[: len(block)]
        selected = np.flatnonzero((round_user_index >= start)
                                  & (round_user_index < start + len(block)))
        local = round_user_index[selected] - start
        items = slate[selected]  # [m, K]
        out["q_target"][selected] = q_target[local]
        out["q_logged"][selected] = q[local[:, None], items, np.arange(k)[None, :]].sum(axis=1)
        out["target_slot"][selected] = target_table[local[:, None], items]
        out["logging_slot"][selected] = logging_table[local[:, None], items]
    return out


def _estimate_all(config: Config, rows: dict, quantities: dict, target_probs: np.ndarray,
                  logging_probs: np.ndarray, examination: np.ndarray) -> dict[str, Any]:
    clip = config.ope.clip or None
    rewards = jnp.asarray(rows["reward"])
    slot_rewards = jnp.asarray(rows["clicks"], jnp.float32)
    target_probs, logging_probs = jnp.asarray(target_probs), jnp.asarray(logging_probs)
    q_logged, q_target = jnp.asarray(quantities["q_logged"]), jnp.asarray(quantities["q_target"])
    target_slot = jnp.asarray(quantities["target_slot"])
    logging_slot = jnp.asarray(quantities["logging_slot"])
    diagonal = (jnp.diagonal(target_slot, axis1=1, axis2=2),
                jnp.diagonal(logging_slot, axis1=1, axis2=2))
    dr_args = (rewards, target_probs, logging_probs, q_logged, q_target)
    calls = {
        "ips": lambda: estimators.ips(rewards, target_probs, logging_probs, clip=clip),
        "snips": lambda: estimators.snips(rewards, target_probs, logging_probs, clip=clip),
        "dm": lambda: estimators.dm(q_target),
        "dr": lambda: estimators.dr(*dr_args, clip=clip),
        "sndr": lambda: estimators.sndr(*dr_args, clip=clip),
        "switch_dr": lambda: estimators.switch_dr(
            *dr_args, threshold=config.ope.switch_threshold, clip=clip),
        "dros": lambda: estimators.dros(*dr_args, shrinkage=config.ope.dros_shrinkage, clip=clip),
        "iips": lambda: estimators.iips(slot_rewards, *diagonal, clip=clip),
        "pbm_ips": lambda: estimators.pbm_ips(
            slot_rewards, target_slot, logging_slot, jnp.asarray(examination), clip=clip),
    }
    return {name: calls[name]() for name in config.ope.estimators}


def _reward_table_fn(config: Config, key, env_params: EnvParams, rows: dict, fit_rows):
    """`(users [b] -> [b, n_items, K] predicted clicks, losses [epochs] or None)`: the oracle,
    or MF fitted on `fit_rows` (and its training losses)."""
    if config.ope.reward_model == "oracle":
        return (lambda block: _oracle_block(env_params, block)), None
    slate = rows["slate"][fit_rows]
    n, k = slate.shape
    model, losses = fit_reward_model(
        key, np.repeat(rows["user"][fit_rows], k), slate.reshape(-1), np.tile(np.arange(k), n),
        rows["clicks"][fit_rows].reshape(-1),
        n_users=env_params.user_factors.shape[0], n_items=env_params.item_factors.shape[0],
        slate_size=k, dim=config.ope.reward_model_dim, epochs=config.ope.reward_model_epochs,
        learning_rate=config.ope.reward_model_learning_rate,
        weight_decay=config.ope.reward_model_weight_decay,
    )
    return (lambda block: reward_table(model, block)), np.asarray(losses)


def seed_streams(seed: int) -> dict[str, jax.Array]:
    """The keys of one seed by role: `log`, `marginals`, `folds`, `reward_model` (whose
    fold `f` uses `streams.index(reward_model, f)`).

    Args:
        seed: the seed (`run.seed + i`).
    """
    root = jax.random.key(seed)
    return {name: streams.derive(root, stream) for name, stream in (
        ("log", streams.Ope.LOG), ("marginals", streams.Ope.MARGINALS),
        ("folds", streams.Ope.FOLDS), ("reward_model", streams.Ope.REWARD_MODEL))}


def truth_key(config: Config) -> jax.Array:
    """The key of the on-policy truth rounds: `derive(key(run.seed), streams.Ope.TRUTH)`."""
    return streams.derive(jax.random.key(config.run.seed), streams.Ope.TRUTH)


def weight_reports(config: Config, quantities: dict, target_probs: np.ndarray,
                   logging_probs: np.ndarray, examination: np.ndarray) -> dict[str, dict]:
    """THE clip's report (`ClipReport.to_dict()`) for each kind of weight that
    `ope.estimators` use, clipped at `ope.clip` as the estimators clip them."""
    clip = config.ope.clip or None
    kinds = {WEIGHT_KINDS[name] for name in config.ope.estimators} - {None}
    target_slot = jnp.asarray(quantities["target_slot"])
    logging_slot = jnp.asarray(quantities["logging_slot"])
    inputs = {
        "slate": lambda: (target_probs, logging_probs),
        "item_position": lambda: (jnp.diagonal(target_slot, axis1=1, axis2=2),
                                  jnp.diagonal(logging_slot, axis1=1, axis2=2)),
        "position_based": lambda: (
            estimators.position_based_marginals(target_slot, examination),
            estimators.position_based_marginals(logging_slot, examination)),
    }
    return {kind: estimators.importance_weights(*inputs[kind](), clip=clip)[1].to_dict()
            for kind in sorted(kinds)}


def ope_seed(config: Config, seed: int, env_params: EnvParams, logging, target) -> dict:
    """One seed (`run.seed + i`): log, fit the reward model, estimate; returns per-estimator
    numbers, THE clip's reports of the weights and the reward model's losses."""
    keys = seed_streams(seed)
    rows = log_rounds(keys["log"], logging, env_params, config.ope.n_rounds)
    slate = rows["slate"]
    n, k = slate.shape
    started = time.perf_counter()
    folds = 1 if config.ope.reward_model == "oracle" else config.ope.reward_model_folds
    fold_of = np.asarray(jax.random.permutation(keys["folds"], n)) % folds
    quantities = {}
    fold_losses = []
    for fold in range(folds):
        held_out = fold_of == fold
        fit_rows = ~held_out if folds > 1 else held_out
        table_fn, losses = _reward_table_fn(
            config, streams.index(keys["reward_model"], fold), env_params, rows, fit_rows)
        if losses is not None:
            fold_losses.append(losses)
        part = {name: value[held_out] for name, value in rows.items()}
        values = _block_quantities(config, keys["marginals"], logging, target, table_fn,
                                   np.unique(part["user"]), part)
        for name, value in values.items():
            if name == "exact_value":
                continue
            quantities.setdefault(name, np.zeros((n, *value.shape[1:]), np.float32))
            quantities[name][held_out] = value
    reward_model_seconds = time.perf_counter() - started
    started = time.perf_counter()
    target_probs = np.exp(np.asarray(_slate_log_probs(
        target, jnp.asarray(rows["user"]), jnp.asarray(slate))))
    logging_probs = np.exp(rows["log_prob"])
    examination = np.asarray(env_params.examination)
    estimates = _estimate_all(config, rows, quantities, target_probs, logging_probs,
                              examination)
    weights = weight_reports(config, quantities, target_probs, logging_probs, examination)
    return {
        "seed": seed,
        "estimates": {name: {"estimate": float(e.value), "stderr": float(e.stderr),
                             "n_eff": float(e.n_eff)} for name, e in estimates.items()},
        "weights": weights,
        "click_rate": float(rows["reward"].mean()),
        "reward_model_losses": (np.mean(fold_losses, axis=0).tolist() if fold_losses
                                else None),
        "reward_model_seconds": reward_model_seconds,
        "estimate_seconds": time.perf_counter() - started,
    }


def _summary(values: list[float]) -> tuple[float, float]:
    """(mean, sample std) over seeds, by `eval.summary.summarize` (NaN seeds left out)."""
    summary = summarize(values)
    return summary["mean"], summary["std"]


class OpeSetup(NamedTuple):
    """A world, its logging and target policies, and the target's on-policy truth."""

    sizes: Any
    env_params: EnvParams
    logging: policies.SlatePolicy
    target: policies.SlatePolicy
    truth: float
    truth_stderr: float
    exact: float | None


def exact_value(policy: policies.SlatePolicy, env_params: EnvParams) -> float | None:
    """The exact expected clicks per round of `policy` (None when its marginals are not exact)."""
    if not (policy.flat or policy.top_items.shape[1] == 1 or float(policy.epsilon) == 0.0):
        return None
    users = jnp.arange(env_params.user_factors.shape[0])
    table = policies.slot_marginal_table(policy, users)
    return float(jnp.mean(jnp.sum(table * _oracle_table(env_params, users), axis=(1, 2))))


def ope_setup(config: Config) -> OpeSetup:
    """The `[env]` world, `[policy]` and `[target]` policies and the target's truth."""
    sizes, env_params = env_from_config(config.env)
    logging = policy_from_config(config.policy, env_params, sizes.slate_size)
    target = policy_from_config(config.target, env_params, sizes.slate_size)
    truth, truth_stderr = on_policy_value(truth_key(config), target, env_params,
                                          config.ope.truth_rounds)
    return OpeSetup(sizes, env_params, logging, target, truth, truth_stderr,
                    exact_value(target, env_params))


def _mean_report(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Each field of THE clip's report, the mean over seeds (None where a seed has none)."""
    out = {}
    for field in reports[0]:
        values = [r[field] for r in reports]
        out[field] = None if any(v is None for v in values) else float(np.mean(values))
    return out


def run_ope(config: Config) -> dict[str, Any]:
    """The whole `causalrec ope` computation (no files): truth and estimates over seeds.

    Returns the `metrics.json` of the run (see the module docstring) with, under the private
    key `_reward_model`, each seed's `{seed, losses ([epochs], mean over folds; None for the
    oracle), seconds}` of its reward model.
    """

    started = time.perf_counter()
    setup = ope_setup(config)
    sizes, truth, truth_stderr, exact = setup.sizes, setup.truth, setup.truth_stderr, setup.exact
    truth_seconds = time.perf_counter() - started
    seeds = seed_list(config)
    per_seed = [ope_seed(config, seed, setup.env_params, setup.logging, setup.target)
                for seed in seeds]
    report = {}
    for name in config.ope.estimators:
        values = [seed["estimates"][name] for seed in per_seed]
        estimate, estimate_std = _summary([v["estimate"] for v in values])
        errors = [abs(v["estimate"] - truth) / abs(truth) for v in values]
        error, error_std = _summary(errors)
        report[name] = {
            "estimate": estimate, "estimate_std": estimate_std,
            "stderr": float(np.mean([v["stderr"] for v in values])),
            "truth": truth, "relative_error": error, "relative_error_std": error_std,
            "n_eff": float(np.mean([v["n_eff"] for v in values])),
            "weights": WEIGHT_KINDS[name],
            "per_seed": values,
        }
    per_seed_entries = []
    for seed in per_seed:
        test = {}
        for name, value in seed["estimates"].items():
            test[f"{name}_estimate"] = value["estimate"]
            test[f"{name}_relative_error"] = abs(value["estimate"] - truth) / abs(truth)
        per_seed_entries.append({
            "seed": seed["seed"], "best_epoch": -1, "valid": {}, "test": test,
            "estimates": seed["estimates"], "weights": seed["weights"],
            "click_rate": seed["click_rate"]})
    reward_model_seconds = float(np.sum([s["reward_model_seconds"] for s in per_seed]))
    fitted_epochs = len(seeds) * config.ope.reward_model_folds * config.ope.reward_model_epochs
    fitted = per_seed[0]["reward_model_losses"] is not None
    return {
        **aggregate(per_seed_entries, "test"),
        "per_seed": per_seed_entries,
        "seeds": seeds,
        "ope": report,
        "truth": {"value": truth, "stderr": truth_stderr, "rounds": config.ope.truth_rounds,
                  "exact": exact},
        "weights": {kind: _mean_report([s["weights"][kind] for s in per_seed])
                    for kind in per_seed[0]["weights"]},
        "data": {"n_rounds": config.ope.n_rounds, "n_users": sizes.n_users,
                 "n_items": sizes.n_items, "slate_size": sizes.slate_size,
                 "logging_click_rate": float(np.mean([s["click_rate"] for s in per_seed]))},
        "timing": {"truth_seconds": truth_seconds,
                   "total_seconds": time.perf_counter() - started,
                   "reward_model_seconds": reward_model_seconds,
                   "train_seconds": reward_model_seconds,
                   "epoch_seconds": (reward_model_seconds / fitted_epochs
                                     if fitted else None),
                   "eval_seconds": float(np.sum([s["estimate_seconds"] for s in per_seed]))},
        "_reward_model": [{"seed": s["seed"], "losses": s["reward_model_losses"],
                           "seconds": s["reward_model_seconds"]} for s in per_seed],
    }
