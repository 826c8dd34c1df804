"""Evaluation as the `[eval]` config asks: one entry point over the ranking protocols.

`evaluate_split` ranks with the configured protocol (`full`: the whole catalogue with training
items masked; `candidates`: each user's own test items, as the debiasing literature does on
Coat and Yahoo! R3), adds pointwise metrics (`auc`, `mse`, `rmse`, `mae`) on the test pairs and,
when a propensity matrix is given and `ips_*` / `snips_*` names are asked for, IPS-weighted
ranking metrics for evaluation on MNAR logs (`unbiased.py`). Metric names follow DESIGN §2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax.config import EvalConfig
from causalrec_jax.data.dataset import Dataset
from causalrec_jax.eval import metrics as metrics_lib
from causalrec_jax.eval.ranking import (
    POINTWISE_NAMES,
    _rows_of,
    _user_index,
    evaluate_candidates,
    evaluate_full_ranking,
    evaluate_pointwise,
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

    Returns:
        `{"ndcg@10": ..., "auc": ..., "n_users_evaluated": ..., "n_users_no_positive": ...}`.
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
        else:
            if score_pairs_fn is None:
                raise ValueError("the candidates protocol needs score_pairs_fn")
            out.update(
                evaluate_candidates(
                    score_pairs_fn, test, ks=config.ks, metrics=ranking,
                    positive_threshold=threshold, literature_ndcg=literature,
                    chunk_size=config.chunk_size,
                )
            )
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
