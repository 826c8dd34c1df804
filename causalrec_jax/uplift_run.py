"""Uplift runs: learn the causal effect of recommending from a simulated log; score on the truth.

`causalrec train` routes here when `uplift.method` is set. Per seed, the logging policy
`[policy]` (an epsilon-greedy / uniform policy, whose inclusion probabilities are exact) is
rolled out on the `[env]` world for `env.horizon` steps per user (or a `simlog` folder is read
when `data.format = "simlog"`). The log is aggregated per (user, item) cell over the `T` steps:
`n1` steps the item was shown, `c1` of them it was consumed, `c0` steps it was consumed without
being shown; `P` is the probability that the policy shows it. A matrix factorisation (the
library's `MF`) is fitted full-batch over all cells:

- `ips`: squared error to the IPS-transformed outcome `c1 / (T P) - c0 / (T (1 - P))`, an
  unbiased label of the per-step effect (Sato et al., RecSys 2019/2020);
- `dr`: squared error to the doubly robust label, with outcome models for consumption when
  shown and when not shown (two logistic MFs fitted first on the binomial counts);
- `dlce`: the pairwise DLCE objective (Sato et al., RecSys 2020) on uniformly drawn pairs of
  each user's items, with the time-aggregated IPS weights;
- `consumption`: the baseline, a logistic MF of P(consume) = `(c1 + c0) / T` (recommends what
  would be consumed, with or without the recommendation).

The test is the full ranking of every user's items scored against the simulator's true
uplift (`sim.rollout.uplift_truth`, the mean over the logged episode of the effect of showing
the item at a uniformly random slot): `cp@K` (mean true uplift of the top K) and `cdcg@K`
(`eval.causal_metrics`). Nothing is masked: recommending an item again can have an effect.
`metrics.json` follows the train contract (`test`, `test_std`, `per_seed`, `seeds`, `data`,
`timing`, `versions`) with `data.ideal` the cp/cdcg of ranking by the true uplift and
`data.logging` those of the logging policy's scores.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from causalrec_jax.causal.uplift import dlce_pair_loss
from causalrec_jax.config import Config
from causalrec_jax.errors import ConfigError
from causalrec_jax.eval.causal_metrics import causal_dcg, causal_precision
from causalrec_jax.models.base import make_scorers, split_model
from causalrec_jax.models.mf import MF
from causalrec_jax.sim.logs import SimLog, env_from_config, policy_scores, simulate_log
from causalrec_jax.train.full_batch import fit_full_batch
from causalrec_jax.train.loop import TrainingDivergedError

STREAM_MODEL = 50
STREAM_PAIRS = 51
_PAIRS_PER_USER = 64


def aggregate_cells(log: SimLog, n_users: int, n_items: int) -> dict[str, np.ndarray]:
    """`[n_users, n_items]` counts of a log: shown `n1`, consumed when shown `c1`, consumed
    when not shown `c0`, and `steps` `[n_users]` (rounds per user)."""
    shown = np.zeros((n_users, n_items), np.float32)
    consumed_shown = np.zeros((n_users, n_items), np.float32)
    consumed_not_shown = np.zeros((n_users, n_items), np.float32)
    users = np.repeat(log.user[:, None], log.slate.shape[1], axis=1)
    np.add.at(shown, (users, log.slate), 1.0)
    np.add.at(consumed_shown, (users, log.slate), log.consumed_if_shown.astype(np.float32))
    organic = log.organic_item
    outside = (organic >= 0) & ~np.any(log.slate == organic[:, None], axis=1)
    np.add.at(consumed_not_shown, (log.user[outside], organic[outside]), 1.0)
    steps = np.bincount(log.user, minlength=n_users).astype(np.float32)
    return {"n1": shown, "c1": consumed_shown, "c0": consumed_not_shown, "steps": steps}


def _mf_fit(key, n_users, n_items, dim, epochs, learning_rate, weight_decay, loss_of_scores):
    """Full-batch Adam on `loss_of_scores(scores [U, I], key) + L2`; returns (scores, losses)."""
    parts = split_model(MF(n_users, n_items, embedding_dim=dim, key=key))
    scorers = make_scorers(parts.graphdef, parts.constants)
    users = jnp.arange(n_users, dtype=jnp.int32)
    optimizer = optax.adam(learning_rate)
    n_cells = n_users * n_items

    def loss_fn(params, step_key):
        scores = scorers.score_all(params, users)
        penalty = sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(params)
                      if leaf.ndim > 0)
        return loss_of_scores(scores, step_key) + weight_decay * penalty / n_cells

    @jax.jit
    def fit(params):
        params, losses = fit_full_batch(loss_fn, params, optimizer, epochs, key)
        return scorers.score_all(params, users), losses

    scores, losses = fit(parts.params)
    if not bool(jnp.all(jnp.isfinite(losses))):
        raise TrainingDivergedError(
            "uplift training: the loss became NaN/Inf; lower uplift.learning_rate")
    return scores, losses


def _binomial(successes, trials):
    """Mean binomial negative log-likelihood of logits against counts (per trial)."""
    def loss(logits, _key):
        log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
        nll = -(successes * log_p + (trials - successes) * log_not_p)
        return jnp.sum(nll) / jnp.maximum(jnp.sum(trials), 1.0)
    return loss


def train_uplift(config: Config, key: jax.Array, cells: dict, propensity: np.ndarray):
    """Scores `[n_users, n_items]` of `config.uplift.method` and its training losses."""
    settings = config.uplift
    n_users, n_items = propensity.shape
    steps = jnp.asarray(cells["steps"])[:, None]
    n1, c1, c0 = (jnp.asarray(cells[name]) for name in ("n1", "c1", "c0"))
    n0 = steps - n1
    p = jnp.clip(jnp.asarray(propensity), settings.clip, 1.0 - settings.clip)
    p = jnp.clip(p, 1e-6, 1.0 - 1e-6)  # a cell the policy never (or always) shows
    fit = lambda fit_key, loss: _mf_fit(  # noqa: E731
        fit_key, n_users, n_items, settings.embedding_dim, settings.epochs,
        settings.learning_rate, settings.weight_decay, loss)
    method = settings.method
    if method == "consumption":
        return fit(key, _binomial(c1 + c0, jnp.broadcast_to(steps, n1.shape)))
    w1 = c1 / (steps * p)
    w0 = c0 / (steps * (1.0 - p))
    if method == "ips":
        label = w1 - w0
    elif method == "dr":
        logits1, _ = fit(jax.random.fold_in(key, 1), _binomial(c1, n1))
        logits0, _ = fit(jax.random.fold_in(key, 2), _binomial(c0, n0))
        mu1, mu0 = jax.nn.sigmoid(logits1), jax.nn.sigmoid(logits0)
        label = mu1 - mu0 + (c1 - n1 * mu1) / (steps * p) - (c0 - n0 * mu0) / (
            steps * (1.0 - p))
    elif method == "dlce":
        def pairs_loss(scores, pair_key):
            first = jax.random.randint(pair_key, (n_users, _PAIRS_PER_USER), 0, n_items)
            second = jax.random.randint(jax.random.fold_in(pair_key, 1),
                                        (n_users, _PAIRS_PER_USER), 0, n_items)
            rows = jnp.arange(n_users)[:, None]
            return dlce_pair_loss(
                scores[rows, first] - scores[rows, second], w1[rows, first], w0[rows, first],
                w1[rows, second], w0[rows, second])
        return fit(key, pairs_loss)
    else:
        raise ConfigError(f"key uplift.method: got {method!r}, expected ips, dr, dlce or "
                          "consumption")
    return fit(key, lambda scores, _key: jnp.mean(jnp.square(scores - label)))


def causal_metrics(scores, true_uplift, ks) -> dict[str, float]:
    """Means over users of `cp@K` and `cdcg@K` of `scores` against the true uplift."""
    scores, true_uplift = jnp.asarray(scores), jnp.asarray(true_uplift)
    result = {}
    for k in ks:
        result[f"cp@{k}"] = float(jnp.mean(causal_precision(scores, true_uplift, k=k)))
        result[f"cdcg@{k}"] = float(jnp.mean(causal_dcg(scores, true_uplift, k=k)))
    return result


def _log_for_seed(config: Config, seed: int):
    if config.data.format == "simlog":
        from causalrec_jax.sim.simlog import read_simlog

        return read_simlog(config.data.path)
    key = jax.random.key(config.run.seed + seed)
    return simulate_log(config, key, marginal_samples=1)


def uplift_seed(config: Config, seed: int) -> dict[str, Any]:
    """One seed: a log, its cells, a model, and cp/cdcg against the true uplift."""
    started = time.perf_counter()
    log, truth = _log_for_seed(config, seed)
    if "inclusion_propensity" not in truth:
        raise ConfigError(
            "key policy.kind: uplift learning needs the logging policy's exact inclusion "
            "probabilities: use epsilon_greedy or uniform (a softmax slate has none)")
    true_uplift = truth["true_uplift"]
    n_users, n_items = true_uplift.shape
    cells = aggregate_cells(log, n_users, n_items)
    data_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scores, losses = train_uplift(config, jax.random.fold_in(jax.random.key(config.run.seed + seed),
                                                             STREAM_MODEL),
                                  cells, truth["inclusion_propensity"])
    scores = jax.block_until_ready(scores)
    train_seconds = time.perf_counter() - started
    return {
        "test": causal_metrics(scores, true_uplift, config.uplift.ks),
        "losses": np.asarray(losses).tolist(),
        "cells": {"impressions": float(cells["n1"].sum()), "consumed_shown": float(
            cells["c1"].sum()), "consumed_not_shown": float(cells["c0"].sum())},
        "true_uplift": true_uplift,
        "data_seconds": data_seconds, "train_seconds": train_seconds,
    }


def uplift_run(config: Config, out: str | Path, *, quiet: bool = True) -> dict[str, Any]:
    """Runs every seed and writes `config.toml`, `metrics.json`, `log.jsonl` into `out`."""
    from causalrec_jax.runner import aggregate, write_run_folder

    out = Path(out)
    seeds = list(range(config.train.seeds))
    per_seed = []
    for seed in seeds:
        per_seed.append(uplift_seed(config, seed))
        if not quiet:
            print(f"seed {seed}: " + ", ".join(
                f"{name} {value:.4f}" for name, value in per_seed[-1]["test"].items()))
    test = aggregate([{"test": s["test"]} for s in per_seed], "test")
    _, env_params = env_from_config(config.env)
    first_truth = per_seed[0]["true_uplift"]
    data = {
        "n_users": config.env.n_users, "n_items": config.env.n_items,
        "slate_size": config.env.slate_size, "horizon": config.env.horizon,
        "mean_true_uplift": float(np.mean(first_truth)),
        "ideal": causal_metrics(first_truth, first_truth, config.uplift.ks),
        "logging": causal_metrics(policy_scores(config.policy, env_params)
                                  * jnp.ones(first_truth.shape), first_truth, config.uplift.ks),
        **per_seed[0]["cells"],
    }
    metrics = {
        **test, "per_seed": [s["test"] for s in per_seed], "seeds": seeds, "data": data,
        "timing": {"data_seconds": float(sum(s["data_seconds"] for s in per_seed)),
                   "train_seconds": float(sum(s["train_seconds"] for s in per_seed))},
    }
    log = [{"epoch": epoch, "seed": 0, "loss": loss}
           for epoch, loss in enumerate(per_seed[0]["losses"])]
    write_run_folder(out, config, metrics, log)
    return metrics
