"""Uplift runs: learn the causal effect of recommending from a simulated log; score on the truth.

`causalrec train` routes here when `uplift.method` is set. Per seed, the logging policy
`[policy]` (an epsilon-greedy / uniform policy, whose inclusion probabilities are exact) is
rolled out on the `[env]` world for `env.horizon` steps per user (or a `simlog` folder is read
when `data.format = "simlog"`). The log is aggregated per (user, item) cell over the `T` steps:
`n1` steps the item was shown, `c1` of them it was consumed, `c0` steps it was consumed without
being shown; `P` is the probability that the policy shows it. A matrix factorisation (the
library's `MF`) is fitted full-batch over all cells, on labels and losses built by the single
functions of `causal.uplift` (the ones its unbiasedness tests check):

- `ips`: `uplift_regression_loss` to `ips_uplift_label_from_counts`, the IPS-transformed
  outcome `c1 / (T P) - c0 / (T (1 - P))`, an unbiased label of the per-step effect (Sato et
  al., RecSys 2019/2020);
- `dr`: `uplift_regression_loss` to `dr_uplift_label_from_counts`, with outcome models for
  consumption when shown and when not shown (two logistic MFs fitted first on the binomial
  counts);
- `dlce`: `dlce_pair_loss` (Sato et al., RecSys 2020) on uniformly drawn pairs of each user's
  items, with the time-aggregated weights of `ips_weights_from_counts`;
- `consumption`: the baseline, a logistic MF of P(consume) = `(c1 + c0) / T` (recommends what
  would be consumed, with or without the recommendation).

Propensities. `P` is clipped once per seed by THE clip (`causal.clip.clip_propensities`,
two-sided, into `[uplift.clip, 1 - uplift.clip]`); its report is written to `metrics.json`
under "propensity" (with `clip`, `n_cells_without_overlap`). A cell the policy never shows
(`P = 0`) or always shows (`P = 1`) has no counterfactual arm: its effect is not identified
from the log, so it is masked out of every label, regression loss and DLCE pair (the model
still scores it from its factors); such cells are counted, never silently clipped. The
baseline `consumption` divides by nothing and uses every cell (its run still reports the
clip of the propensities, which it does not use, so every uplift run has the same keys).

Training. Every fit (the uplift model and the outcome models) is the training core's step
scanned over `uplift.epochs` full-batch epochs (`train.full_batch.fit_full_batch_jit`),
compiled once per world size and settings: a second seed or run compiles nothing.
`uplift.learning_rate` and `uplift.weight_decay` mean what `train.learning_rate` and
`train.weight_decay` mean (`train.step.make_optimizer`, with `train.optimizer`,
`train.lr_schedule` and `train.warmup_steps`): for `adam` / `sgd`, `weight_decay * params` is
added to the gradient (L2 regularisation of every parameter); `adamw` decays decoupled. (Before
this, the uplift weight decay was a penalty `weight_decay * sum of squares / n_cells` in the
loss: the old value `w` corresponds to `2 w / (n_users n_items)` now.)

Random streams (`causalrec_jax.streams`): seed `s` (`run.seed + i`) has the root key `key(s)`;
the log, the uplift model and the two outcome models each fold their own `streams.Uplift` id
into it, and each model folds `streams.UpliftModel.INIT` / `FIT` below that, so no model key
serves two roles. The log's users are folded into the log key, one level down, beside the
log's slot-marginal stream `streams.Log.SLOT_PROPENSITIES` (`sim.logs.simulate_log`).

The test is the full ranking of every user's items scored against the simulator's true
uplift (`sim.rollout.uplift_truth`, the mean over the logged episode of the effect of showing
the item at a uniformly random slot): `cp@K` (mean true uplift of the top K) and `cdcg@K`
(`eval.causal_metrics`). Nothing is masked: recommending an item again can have an effect.
`metrics.json` follows the run contract: `test`, `test_std`, `test_ci95`, `per_seed` (each
`{seed, best_epoch, valid, test, propensity}`; `best_epoch` is the last epoch,
`uplift.epochs - 1`: there is no early stopping and no validation, so `valid` is `{}` and there
is no top-level `valid`), `seeds` (`run.seed + i`), `data` (with `data.ideal` the cp/cdcg of
ranking by the true uplift and `data.logging` those of the logging policy's scores), `timing`,
`versions` and `propensity`; `data.n_users`, `n_items`, `slate_size` and `horizon` are those
of the log read, and `data.logging` ranks by the scores of the policy that wrote it, on its
world (a simlog's own `[env]` and `[policy]`, from its manifest, whatever the config says).
`log.jsonl` (written by `runs.train`) has one line per epoch and seed: `seed`, `epoch`, `loss`
(the uplift model's), `seconds` (the seed's training time over `uplift.epochs`: the epochs run
as one compiled scan).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax import streams
from causalrec_jax.causal import clip as the_clip
from causalrec_jax.causal.uplift import (
    dlce_pair_loss,
    dr_uplift_label_from_counts,
    ips_uplift_label_from_counts,
    ips_weights_from_counts,
    uplift_regression_loss,
)
from causalrec_jax.config import Config, EnvConfig, PolicyConfig, config_from_dict, refuse_unused
from causalrec_jax.errors import ConfigError
from causalrec_jax.eval.causal_metrics import causal_dcg, causal_precision
from causalrec_jax.eval.summary import aggregate
from causalrec_jax.models.base import make_scorers, split_model
from causalrec_jax.models.mf import MF
from causalrec_jax.sim.logs import SimLog, env_from_config, policy_scores, simulate_log
from causalrec_jax.sim.simlog import read_manifest, read_simlog
from causalrec_jax.train.full_batch import (
    FullBatchFit,
    check_finite,
    fit_full_batch_jit,
    full_batch_optimizer,
)

_PAIRS_PER_USER = 64


def seed_streams(seed: int) -> dict[str, jax.Array]:
    """The keys of one seed, by role: `log`, and `init` / `fit` of each model.

    Args:
        seed: the seed (`run.seed + i`).

    Returns:
        `{"log", "model_init", "model_fit", "treated_init", "treated_fit", "control_init",
        "control_fit"}` -> typed keys, all distinct.
    """
    root = jax.random.key(seed)
    keys = {"log": streams.derive(root, streams.Uplift.LOG)}
    for name, stream in (("model", streams.Uplift.MODEL),
                         ("treated", streams.Uplift.TREATED_OUTCOME_MODEL),
                         ("control", streams.Uplift.CONTROL_OUTCOME_MODEL)):
        model_key = streams.derive(root, stream)
        keys[f"{name}_init"] = streams.derive(model_key, streams.UpliftModel.INIT)
        keys[f"{name}_fit"] = streams.derive(model_key, streams.UpliftModel.FIT)
    return keys


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


@dataclasses.dataclass(frozen=True)
class _UpliftLoss:
    """`loss_fn(params, batch, key)` of the training core for an MF over all cells.

    A frozen dataclass hashed by its static fields, so every fit of one kind and world size
    shares one compiled program (`fit_full_batch_jit`); the data travel in `batch`.

    Attributes:
        graphdef: the MF's structure.
        kind: "regression" (`uplift_regression_loss` to `batch["label"]`), "binomial" (the
            mean binomial NLL of `batch["successes"]` in `batch["trials"]`) or "dlce"
            (`dlce_pair_loss` on pairs drawn from the epoch's key, weights `batch["w1"]`,
            `batch["w0"]`).
        n_pairs: DLCE pairs per user and epoch.
    """

    graphdef: Any
    kind: str
    n_pairs: int = _PAIRS_PER_USER

    def __call__(self, params, batch, key):
        scores = make_scorers(self.graphdef, batch["constants"]).score_all(
            params, batch["users"])
        valid = batch["valid"]
        if self.kind == "regression":
            loss = uplift_regression_loss(scores, batch["label"], where=valid)
        elif self.kind == "binomial":
            loss = _binomial_nll(scores, batch["successes"], batch["trials"])
        else:
            loss = _dlce_pairs_loss(scores, batch["w1"], batch["w0"], valid, key, self.n_pairs)
        return loss, {}


def _binomial_nll(logits, successes, trials):
    """Mean binomial negative log-likelihood of `[U, I]` logits against counts (per trial)."""
    log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    nll = -(successes * log_p + (trials - successes) * log_not_p)
    return jnp.sum(nll) / jnp.maximum(jnp.sum(trials), 1.0)


def _dlce_pairs_loss(scores, w1, w0, valid, key, n_pairs):
    """`dlce_pair_loss` on `n_pairs` uniformly drawn ordered pairs of each user's items."""
    n_users, n_items = scores.shape
    first = jax.random.randint(streams.derive(key, streams.Pairs.FIRST), (n_users, n_pairs),
                               0, n_items)
    second = jax.random.randint(streams.derive(key, streams.Pairs.SECOND),
                                (n_users, n_pairs), 0, n_items)
    rows = jnp.arange(n_users)[:, None]
    return dlce_pair_loss(
        scores[rows, first] - scores[rows, second], w1[rows, first], w0[rows, first],
        w1[rows, second], w0[rows, second], where=valid[rows, first] & valid[rows, second])


_score_all_jit = jax.jit(
    lambda graphdef, constants, params, users: make_scorers(graphdef, constants).score_all(
        params, users),
    static_argnums=0,
)


def _scores(graphdef, constants, params, n_users):
    """`[n_users, n_items]` scores of a fitted MF (compiled once per model structure)."""
    return _score_all_jit(graphdef, constants, params, jnp.arange(n_users, dtype=jnp.int32))


def fit_cells(config: Config, keys: tuple[jax.Array, jax.Array], kind: str,
              batch: dict[str, Any]) -> tuple[jax.Array, FullBatchFit]:
    """Fits an MF of `uplift.embedding_dim` over every cell; returns `(scores [U, I], fit)`.

    Args:
        config: the run's config (`uplift` and the optimiser of `train`).
        keys: `(init_key, fit_key)` of this model.
        kind: the objective (`_UpliftLoss.kind`).
        batch: the objective's data (`valid` and the kind's arrays, `[n_users, n_items]`).

    Raises:
        TrainingDivergedError: a step was not finite.
    """
    settings = config.uplift
    n_users, n_items = batch["valid"].shape
    parts = split_model(MF(n_users, n_items, embedding_dim=settings.embedding_dim,
                           key=keys[0]))
    optimizer, hparams = full_batch_optimizer(
        dataclasses.replace(config.train, learning_rate=settings.learning_rate,
                            weight_decay=settings.weight_decay), settings.epochs)
    data = {"constants": parts.constants, "users": jnp.arange(n_users, dtype=jnp.int32),
            **batch}
    fit = fit_full_batch_jit(_UpliftLoss(parts.graphdef, kind), parts.params, data, keys[1],
                             hparams, optimizer=optimizer, epochs=settings.epochs)
    check_finite(fit, f"uplift training ({kind})", "lower uplift.learning_rate")
    return _scores(parts.graphdef, parts.constants, fit.state.params, n_users), fit


def train_uplift(config: Config, keys: dict[str, jax.Array], cells: dict,
                 propensity: np.ndarray) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
    """Scores `[n_users, n_items]` of `config.uplift.method`, its `[epochs]` training losses
    and the propensity report (THE clip's `ClipReport` as a dict, plus `clip` and
    `n_cells_without_overlap`).

    Args:
        config: the run's config.
        keys: `seed_streams(seed)`.
        cells: `aggregate_cells` of the log.
        propensity: `[n_users, n_items]` the policy's inclusion probabilities per step.
    """
    settings = config.uplift
    method = settings.method
    if method not in ("ips", "dr", "dlce", "consumption"):
        raise ConfigError(f"key uplift.method: got {method!r}, expected ips, dr, dlce or "
                          "consumption")
    steps = jnp.asarray(cells["steps"])[:, None]
    n1, c1, c0 = (jnp.asarray(cells[name]) for name in ("n1", "c1", "c0"))
    p = jnp.asarray(propensity, jnp.float32)
    # No overlap: a cell shown at every step or at none has one arm only (see the docstring).
    overlap = (p > 0) & (p < 1)
    p, report = the_clip.clip_propensities(p, settings.clip or None, where=overlap,
                                           two_sided=True)
    propensity_report = {"clip": settings.clip, "two_sided": True,
                         "n_cells_without_overlap": int(np.size(propensity)
                                                        - int(jnp.sum(overlap))),
                         **report.to_dict()}
    model_keys = (keys["model_init"], keys["model_fit"])
    if method == "consumption":
        everything = jnp.ones(n1.shape, bool)
        scores, fit = fit_cells(config, model_keys, "binomial", {
            "valid": everything, "successes": c1 + c0,
            "trials": jnp.broadcast_to(steps, n1.shape)})
        return scores, fit.losses, propensity_report
    if method == "dlce":
        w1, w0 = ips_weights_from_counts(c1, c0, steps, p, where=overlap)
        scores, fit = fit_cells(config, model_keys, "dlce", {"valid": overlap, "w1": w1,
                                                              "w0": w0})
        return scores, fit.losses, propensity_report
    if method == "ips":
        label = ips_uplift_label_from_counts(c1, c0, steps, p, where=overlap)
    else:
        everything = jnp.ones(n1.shape, bool)
        logits1, _ = fit_cells(config, (keys["treated_init"], keys["treated_fit"]), "binomial",
                               {"valid": everything, "successes": c1, "trials": n1})
        logits0, _ = fit_cells(config, (keys["control_init"], keys["control_fit"]), "binomial",
                               {"valid": everything, "successes": c0, "trials": steps - n1})
        label = dr_uplift_label_from_counts(
            c1, n1, c0, steps, p, jax.nn.sigmoid(logits1), jax.nn.sigmoid(logits0),
            where=overlap)
    scores, fit = fit_cells(config, model_keys, "regression", {"valid": overlap,
                                                                "label": label})
    return scores, fit.losses, propensity_report


def causal_metrics(scores, true_uplift, ks) -> dict[str, float]:
    """Means over users of `cp@K` and `cdcg@K` of `scores` against the true uplift."""
    scores, true_uplift = jnp.asarray(scores), jnp.asarray(true_uplift)
    result = {}
    for k in ks:
        result[f"cp@{k}"] = float(jnp.mean(causal_precision(scores, true_uplift, k=k)))
        result[f"cdcg@{k}"] = float(jnp.mean(causal_dcg(scores, true_uplift, k=k)))
    return result


def _log_for_seed(config: Config, log_key: jax.Array):
    if config.data.format == "simlog":
        return read_simlog(config.data.path)
    return simulate_log(config.env, config.policy, log_key, marginal_samples=1)


def logged_world(config: Config) -> tuple[EnvConfig, PolicyConfig]:
    """The `[env]` and `[policy]` that wrote the log: a simlog's own (its manifest), else the
    config's (the log is simulated from them)."""
    if config.data.format != "simlog":
        return config.env, config.policy
    manifest = read_manifest(config.data.path)
    logged = config_from_dict({"env": manifest["env"], "policy": manifest["policy"]},
                              f"{config.data.path} (simlog.json)")
    return logged.env, logged.policy


def uplift_seed(config: Config, seed: int) -> dict[str, Any]:
    """One seed (`run.seed + i`): a log, its cells, a model, and cp/cdcg against the truth."""
    started = time.perf_counter()
    keys = seed_streams(seed)
    log, truth = _log_for_seed(config, keys["log"])
    if "inclusion_propensity" not in truth:
        raise ConfigError(
            "key policy.kind: uplift learning needs the logging policy's exact inclusion "
            "probabilities: use epsilon_greedy or uniform (a softmax slate has none)")
    true_uplift = truth["true_uplift"]
    n_users, n_items = true_uplift.shape
    cells = aggregate_cells(log, n_users, n_items)
    # The sizes of the data read (a simlog's own world, not [env]).
    sizes = {"n_users": int(n_users), "n_items": int(n_items),
             "slate_size": int(log.slate.shape[1]),
             "horizon": int(log.step.max()) + 1 if len(log.step) else 0}
    data_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scores, losses, propensity = train_uplift(config, keys, cells,
                                              truth["inclusion_propensity"])
    scores = jax.block_until_ready(scores)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    test = causal_metrics(scores, true_uplift, config.uplift.ks)
    eval_seconds = time.perf_counter() - started
    return {
        "seed": seed,
        "test": test,
        "sizes": sizes,
        "losses": np.asarray(losses).tolist(),
        "propensity": propensity,
        "cells": {"impressions": float(cells["n1"].sum()), "consumed_shown": float(
            cells["c1"].sum()), "consumed_not_shown": float(cells["c0"].sum())},
        "true_uplift": true_uplift,
        "data_seconds": data_seconds, "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
    }


def uplift_metrics(config: Config, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The `metrics.json` of an uplift run from its `uplift_seed` results (see the module
    docstring for the keys)."""

    test = aggregate([{"test": s["test"]} for s in per_seed], "test")
    env, policy = logged_world(config)
    _, env_params = env_from_config(env)
    first_truth = per_seed[0]["true_uplift"]
    data = {
        **per_seed[0]["sizes"],
        "mean_true_uplift": float(np.mean(first_truth)),
        "ideal": causal_metrics(first_truth, first_truth, config.uplift.ks),
        "logging": causal_metrics(policy_scores(policy, env_params)
                                  * jnp.ones(first_truth.shape), first_truth, config.uplift.ks),
        **per_seed[0]["cells"],
    }
    last_epoch = config.uplift.epochs - 1
    train_seconds = float(sum(s["train_seconds"] for s in per_seed))
    return {
        **test,
        "per_seed": [{"seed": s["seed"], "best_epoch": last_epoch, "valid": {},
                      "test": s["test"], "propensity": s["propensity"]} for s in per_seed],
        "seeds": [s["seed"] for s in per_seed],
        "data": data,
        "timing": {"data_seconds": float(sum(s["data_seconds"] for s in per_seed)),
                   "train_seconds": train_seconds,
                   "epoch_seconds": train_seconds / (len(per_seed) * config.uplift.epochs),
                   "eval_seconds": float(sum(s["eval_seconds"] for s in per_seed))},
        # The inclusion probabilities are the policy's on the fixed world: the same for every
        # seed (each seed's own report is in per_seed).
        "propensity": per_seed[0]["propensity"],
    }


def check_uplift_keys(config: Config) -> None:
    """Refuses a key an uplift run would ignore (`config.refuse_unused`): it reads `[env]`,
    `[policy]`, `[uplift]`, `[run]`, `data.format` / `data.path` (a simlog) and, of `[train]`,
    the seeds and the optimiser's form (`uplift.learning_rate` / `weight_decay` are its
    numbers)."""
    refuse_unused(config, {
        "env": None, "policy": None, "uplift": None, "run": None, "data": ("format", "path"),
        "train": ("seeds", "optimizer", "lr_schedule", "warmup_steps"),
    }, f"an uplift run (uplift.method = {config.uplift.method!r})")


