"""Evaluation as the `[eval]` config asks: one entry point over the ranking protocols.

`evaluate_split` ranks with the configured protocol (`full`: the whole catalogue with training
items masked; `candidates`: each user's own test items, as the debiasing literature does on
Coat and Yahoo! R3), adds pointwise metrics (`auc`, `mse`, `rmse`, `mae`) on the test pairs and,
when a propensity matrix is given and `ips_*` / `snips_*` names are asked for, IPS-weighted
ranking metrics for evaluation on MNAR logs (`unbiased.py`). Metric names follow DESIGN §2.

A validation split (`evaluate_split(..., validation=True)`) is read to select: there a
per-user ranking metric counts only the users it can tell models apart on. Under the
candidates protocol metric@K averages the users whose list is informative at K (more than K
candidates, a positive and a negative: `ranking.informative_lists`), `auc_per_user` the users
with a positive and a negative, and either is NaN (JSON null) when fewer than
`eval.min_ranked_users` qualify: on Coat's or the simulator's 5% MAR slice (under one rating
per user) no list is longer than 4, so validation recall@5 would otherwise read 1.0 beside a
test recall@5 of 0.58. Every block says how many users each K used (`n_users_ranked@K`;
`n_users_auc`). `check_validation_selection` refuses, before training, to early-stop on such a
metric. Full ranking ranks the catalogue for every user with a positive and is left as it is
(its `n_users_ranked@K` is `n_users_evaluated`); the test split keeps the published protocol
(every user with a positive), adding the counts only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax.config import POINTWISE_METRIC_NAMES, EvalConfig
from causalrec_jax.data.dataset import Dataset
from causalrec_jax.errors import ConfigError
from causalrec_jax.eval import metrics as metrics_lib
from causalrec_jax.eval.ranking import (
    POINTWISE_NAMES,
    _rows_of,
    _user_index,
    candidate_lists,
    evaluate_candidates,
    evaluate_full_ranking,
    evaluate_pointwise,
    informative_lists,
    is_positive,
    labels_are_binary,
)
from causalrec_jax.eval.unbiased import UNBIASED_METRICS, unbiased_ranking_metrics

ScoreUsersFn = Callable[[jax.Array], Any]
ScorePairsFn = Callable[[jax.Array, jax.Array], Any]


def positive_threshold_for(dataset: Dataset, threshold: float) -> float | None:
    """The rating threshold for positives: None (rating > 0) for implicit or binarised data."""
    if labels_are_binary(dataset):
        return None
    return threshold


def pairs_from_users(score_users_fn: ScoreUsersFn, chunk_size: int = 256) -> ScorePairsFn:
    """A pair scorer built from a full-catalogue scorer (scores users, picks their items)."""

    def score_pairs(users: jax.Array, items: jax.Array) -> np.ndarray:
        users, items = np.asarray(users), np.asarray(items)
        unique, row = np.unique(users, return_inverse=True)
        out = np.empty(len(users), np.float32)
        for start in range(0, len(unique), chunk_size):
            block = np.zeros(chunk_size, np.int32)
            part = unique[start : start + chunk_size]
            block[: len(part)] = part
            scores = np.asarray(score_users_fn(jnp.asarray(block)))
            chosen = (row >= start) & (row < start + len(part))
            out[chosen] = scores[row[chosen] - start, items[chosen]]
        return out

    return score_pairs


def evaluate_unbiased_ranking(
    score_fn: ScoreUsersFn,
    train: Dataset,
    test: Dataset,
    propensity: np.ndarray,
    *,
    ks: Sequence[int],
    names: Sequence[str] = ("snips_recall", "snips_ndcg", "ips_dcg"),
    positive_threshold: float | None = None,
    n_relevant: np.ndarray | None = None,
    chunk_size: int = 256,
    mask_train: bool = True,
) -> dict[str, Any]:
    """IPS / SNIPS ranking metrics over the full catalogue from MNAR test positives.

    Args:
        score_fn: `user_ids [chunk_size] -> scores [chunk_size, n_items]`.
        train: training interactions (masked when `mask_train`).
        test: the MNAR held-out interactions; positives by `positive_threshold`.
        propensity: `[n_users, n_items]` P(observed | relevant); used as given (clip upstream).
        ks: cut-offs.
        names: among `unbiased.UNBIASED_METRICS`.
        positive_threshold: rating threshold, None for `rating > 0`.
        n_relevant: `[n_users]` true numbers of relevant items (simulation only), needed by
            `ips_recall` / `ips_ndcg`.
        chunk_size: users per chunk (static shapes; results do not depend on it).
        mask_train: mask each user's training items out of their ranking.

    Returns:
        Means: `snips_*` and `ips_dcg` over users with an observed positive, `ips_recall` /
        `ips_ndcg` over users with `n_relevant > 0` (including users with nothing observed,
        whose estimate is 0); plus `n_users_evaluated`.
    """
    propensity = np.asarray(propensity, np.float32)
    if propensity.shape != (test.n_users, test.n_items):
        raise ValueError(
            f"propensity has shape {propensity.shape}, expected ({test.n_users}, {test.n_items})"
        )
    needs_truth = any(name in ("ips_recall", "ips_ndcg") for name in names)
    if needs_truth and n_relevant is None:
        raise ValueError("ips_recall / ips_ndcg need n_relevant (known in simulation only)")
    positive = is_positive(test.rating, positive_threshold, labels_are_binary(test))
    test_indptr, test_items = _user_index(test.user[positive], test.item[positive], test.n_users)
    train_indptr, train_items = _user_index(train.user, train.item, test.n_users)
    observed_any = np.diff(test_indptr) > 0
    users = np.flatnonzero(observed_any | (np.asarray(n_relevant) > 0 if needs_truth else False))
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for start in range(0, len(users), chunk_size):
        chunk = users[start : start + chunk_size]
        padded = np.zeros(chunk_size, np.int32)
        padded[: len(chunk)] = chunk
        observed = np.zeros((chunk_size, test.n_items), bool)
        row, col = _rows_of(test_indptr, test_items, chunk)
        observed[row, col] = True
        where = np.zeros((chunk_size, test.n_items), bool)
        where[: len(chunk)] = True
        if mask_train:
            row, col = _rows_of(train_indptr, train_items, chunk)
            where[row, col] = False
        truth = None
        if needs_truth:
            truth = np.zeros(chunk_size, np.float32)
            truth[: len(chunk)] = np.asarray(n_relevant)[chunk]
        values = unbiased_ranking_metrics(
            jnp.asarray(score_fn(jnp.asarray(padded))),
            observed,
            np.where(where, propensity[padded], 1.0),
            ks=ks,
            names=tuple(names),
            n_relevant=truth,
            where=where,
        )
        real = np.arange(chunk_size) < len(chunk)
        has_observed = real & np.asarray(metrics_lib.has_positive(observed, where))
        has_truth = real & (truth > 0) if truth is not None else has_observed
        for key, value in values.items():
            keep = has_truth if key.startswith(("ips_recall", "ips_ndcg")) else has_observed
            sums[key] = sums.get(key, 0.0) + float(np.asarray(value, np.float64)[keep].sum())
            counts[key] = counts.get(key, 0) + int(keep.sum())
    out: dict[str, Any] = {
        key: (sums[key] / counts[key] if counts[key] else float("nan")) for key in sums
    }
    out["n_users_evaluated"] = int(observed_any.sum())
    return out


def evaluate_split(
    config: EvalConfig,
    *,
    train: Dataset,
    test: Dataset,
    score_users_fn: ScoreUsersFn | None = None,
    score_pairs_fn: ScorePairsFn | None = None,
    propensity: np.ndarray | None = None,
    literature: bool = False,
    validation: bool = False,
) -> dict[str, Any]:
    """Every metric `config.metrics` names, at `config.ks`, under `config.protocol`.

    Args:
        config: the `[eval]` section.
        train: interactions to mask in full ranking when `config.mask_train`: the training
            split, or train and validation together when evaluating the test split.
        test: the evaluated interactions.
        score_users_fn: `user_ids [chunk] -> scores [chunk, n_items]`; needed by the full
            protocol and the IPS metrics.
        score_pairs_fn: `(users [m], items [m]) -> scores [m]`; built from `score_users_fn`
            when not given.
        propensity: `[n_users, n_items]` for `ips_*` / `snips_*` names.
        literature: also return the literature's convention (`literature_ndcg@K`: users with
            no positive score 1) under its own keys (candidates protocol).
        validation: `test` is a validation split, read to select (see the module docstring):
            under the candidates protocol metric@K averages the users whose list is
            informative at K; there, and for `auc_per_user` under either protocol, a mean over
            fewer than `config.min_ranked_users` users is NaN.

    Returns:
        `{"ndcg@10": ..., "auc": ..., "n_users_evaluated": ..., "n_users_no_positive": ...,
        "n_users_ranked@10": ...}` (`n_users_informative@K` too under the candidates
        protocol, `n_users_auc` with `auc`).
    """
    names = [name.lower() for name in config.metrics]
    unbiased = [name for name in names if name in UNBIASED_METRICS]
    ranking = [name for name in names if name not in unbiased and name not in POINTWISE_NAMES]
    pointwise = [name for name in names if name in POINTWISE_NAMES]
    threshold = positive_threshold_for(test, config.positive_threshold)
    if score_pairs_fn is None and score_users_fn is not None:
        score_pairs_fn = pairs_from_users(score_users_fn, config.chunk_size)
    out: dict[str, Any] = {}
    if ranking:
        if config.protocol == "full":
            if score_users_fn is None:
                raise ValueError("the full ranking protocol needs score_users_fn")
            out.update(
                evaluate_full_ranking(
                    score_users_fn, train, test, ks=config.ks, metrics=ranking,
                    chunk_size=config.chunk_size, mask_train=config.mask_train,
                    positive_threshold=threshold,
                )
            )
            # Every user with a positive ranks the whole catalogue, at every K.
            out.update({f"n_users_ranked@{k}": out["n_users_evaluated"]
                        for k in sorted(set(config.ks))})
        else:
            if score_pairs_fn is None:
                raise ValueError("the candidates protocol needs score_pairs_fn")
            out.update(
                evaluate_candidates(
                    score_pairs_fn, test, ks=config.ks, metrics=ranking,
                    positive_threshold=threshold, literature_ndcg=literature,
                    chunk_size=config.chunk_size, informative_only=validation,
                )
            )
            if validation:
                for k in sorted(set(config.ks)):
                    if out[f"n_users_ranked@{k}"] < config.min_ranked_users:
                        for name in ranking:
                            if f"{name}@{k}" in out:
                                out[f"{name}@{k}"] = math.nan
    if pointwise:
        if score_pairs_fn is None:
            raise ValueError(f"{', '.join(pointwise)} need score_pairs_fn or score_users_fn")
        predictions = np.asarray(score_pairs_fn(jnp.asarray(test.user), jnp.asarray(test.item)))
        values = evaluate_pointwise(
            predictions, test.rating, labels_threshold=threshold, user=test.user
        )
        out.update({name: values[name] for name in pointwise})
        if "auc" in pointwise:
            out["auc_per_user"] = values["auc_per_user"]
            out["n_users_auc"] = values["n_users_auc"]
            if validation and values["n_users_auc"] < config.min_ranked_users:
                out["auc_per_user"] = math.nan
    if unbiased:
        if propensity is None or score_users_fn is None:
            raise ValueError(f"{', '.join(unbiased)} need a propensity matrix and score_users_fn")
        values = evaluate_unbiased_ranking(
            score_users_fn, train, test, propensity, ks=config.ks, names=unbiased,
            positive_threshold=threshold, chunk_size=config.chunk_size,
            mask_train=config.mask_train,
        )
        values.pop("n_users_evaluated")
        out.update(values)
    return out


def validation_ranked_users(config: EvalConfig, valid: Dataset) -> dict[str, int]:
    """How many users each per-user ranking metric of a validation split would average,
    known from the split alone (no scores): `{"ndcg@5": n, ..., "auc_per_user": n}` for the
    metrics `evaluate_split(config, ..., validation=True)` restricts (metric@K under the
    candidates protocol; `auc_per_user` when `auc` is computed)."""
    threshold = positive_threshold_for(valid, config.positive_threshold)
    n_candidates, n_positives = candidate_lists(valid, threshold)
    names = [name.lower() for name in config.metrics]
    out: dict[str, int] = {}
    if config.protocol == "candidates":
        informative = informative_lists(n_candidates, n_positives, config.ks)
        for k in sorted(set(config.ks)):
            for name in names:
                if name not in POINTWISE_METRIC_NAMES and name not in UNBIASED_METRICS:
                    out[f"{name}@{k}"] = int(informative[k].sum())
    if "auc" in names:
        out["auc_per_user"] = int(((n_positives > 0) & (n_candidates > n_positives)).sum())
    return out


# `--metric auto` selects a rating predictor on pooled validation AUC when the AUC of the
# validation split is precise enough to rank trials, else on mse: when its standard error at
# an AUC of 0.75 (Hanley & McNeil, Radiology 1982) is at most this. Coat's 5% slice (about
# 55 positive and 177 negative ratings at >= 4) gives 0.041: mse; Yahoo! R3's (about 240 and
# 2,460) 0.018: AUC. A model that does not predict ratings (train.loss not mse) is always
# selected on AUC: its scores are not on the rating scale.
AUTO_AUC_MAX_STDERR = 0.03


def auc_standard_error(n_positive: int, n_negative: int, auc: float = 0.75) -> float:
    """Hanley & McNeil's (1982) standard error of an AUC estimated from `n_positive` and
    `n_negative` examples; infinite when either is 0."""
    if n_positive < 1 or n_negative < 1:
        return math.inf
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (n_positive - 1) * (q1 - auc * auc)
                + (n_negative - 1) * (q2 - auc * auc)) / (n_positive * n_negative)
    return math.sqrt(variance)


def auto_selection_metric(config: EvalConfig, valid: Dataset, loss: str = "mse"
                          ) -> tuple[str, str]:
    """`("auc" or "mse", why)`: the pointwise criterion `--metric auto` selects on. A rating
    predictor (`loss == "mse"`) gets AUC when the validation split's AUC standard error is at
    most `AUTO_AUC_MAX_STDERR` (positives by `config.positive_threshold`), else mse; any
    other loss gets AUC. Raises ConfigError (naming eval.metrics) when the evaluation does not
    compute the chosen metric."""
    threshold = positive_threshold_for(valid, config.positive_threshold)
    positive = is_positive(valid.rating, threshold, labels_are_binary(valid))
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    stderr = auc_standard_error(n_pos, n_neg)
    counts = f"the validation split has {n_pos} positive and {n_neg} negative ratings"
    if loss != "mse":
        name = "auc"
        why = f"--metric auto: train.loss = {loss!r} does not predict ratings: valid.auc"
    else:
        name = "auc" if stderr <= AUTO_AUC_MAX_STDERR else "mse"
        why = (f"--metric auto: {counts}, so AUC has a standard error of {stderr:.3f} "
               f"({'at most' if name == 'auc' else 'above'} {AUTO_AUC_MAX_STDERR}): "
               f"selecting on valid.{name}")
    computed = [metric.lower() for metric in config.metrics]
    if name not in computed:
        raise ConfigError(f"{why}, which eval.metrics does not compute; add {name!r}")
    return name, why


def check_validation_selection(config: EvalConfig, valid: Dataset, metric: str, key: str
                               ) -> None:
    """Refuses to select on a validation metric that `evaluate_split(validation=True)` would
    report as NaN because fewer than `config.min_ranked_users` users can be ranked on it.

    Raises:
        ConfigError: one line naming `key`, the metric, the count and what to choose instead.
    """
    counts = validation_ranked_users(config, valid)
    name = metric.lower()
    if name not in counts or counts[name] >= config.min_ranked_users:
        return
    _, _, k = name.partition("@")
    if k:
        who = (f"only {counts[name]} validation users have more than {k} candidates, a "
               "positive and a negative")
    else:
        who = f"only {counts[name]} validation users have both a positive and a negative"
    computed = [m.lower() for m in config.metrics]
    pooled = [m for m in ("mse", "auc") if m in computed] or ["mse", "auc"]
    instead = " or ".join(pooled)
    if not any(m in computed for m in ("mse", "auc")):
        instead += " (add it to eval.metrics)"
    raise ConfigError(
        f"{key} = {metric!r}: {who} (eval.min_ranked_users = {config.min_ranked_users}); "
        f"select on {instead}, pooled over all validation ratings, or use a larger "
        "validation split"
    )
