"""Evaluation drivers: full ranking in user chunks, per-user candidate lists, pointwise errors.

Three protocols:

- `evaluate_full_ranking`: every user ranks the whole catalogue with their training items
  masked (the RecBole / "full sort" protocol; Krichene & Rendle, KDD 2020, "On Sampled Metrics
  for Item Recommendation", on why sampled candidates are not used). Users are processed in
  chunks of fixed size (the last one padded and masked), so the metric computation compiles
  once and memory stays at `chunk_size * n_items`.
- `evaluate_candidates`: each user ranks only their own test items, as in the debiasing
  literature on Coat / Yahoo! R3 (Schnabel et al., ICML 2016; Wang et al., ICML 2019,
  "Doubly Robust Joint Learning for Recommendation on Data Missing Not at Random").
- `evaluate_pointwise`: rating errors and AUC over (prediction, rating) pairs.

Metric definitions and the pessimistic tie rule are in `causalrec_jax.eval.metrics`. Users
with no relevant rankable test item are left out of every average and counted
(`n_users_no_positive`); the literature's "no positive scores NDCG = 1" convention is only
reported under separate `literature_` keys (DESIGN §2).

Under the candidates protocol a user's list can be too short to rank: with at most K
candidates every one of them is in the top K, so recall@K and hit@K are 1, precision@K is
fixed and ndcg@K stays high whatever the model does, and a list without a negative is
perfectly ordered by every model. `informative_lists` says which lists are worth ranking at
K (more than K candidates, a positive and a negative); `evaluate_candidates` counts them
(`n_users_informative@K`) and, for a validation split (`informative_only=True`), averages
metric@K over them alone.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax.data.dataset import Dataset
from causalrec_jax.eval import metrics as metrics_lib

# Names evaluate_full_ranking / evaluate_candidates compute; pointwise names are accepted in
# `metrics` (an EvalConfig lists them all) and left to `evaluate_pointwise`.
# Metrics of the recommended lists as a whole, from every user's top-K items (RecBole's
# names): the share of the catalogue recommended to someone, the mean training popularity of
# the recommended items (per list, then over lists), and the Gini index of how often each
# item is recommended (0: every item equally, towards 1: a few items to everyone).
LIST_NAMES: tuple[str, ...] = ("itemcoverage", "averagepopularity", "giniindex")
RANKING_NAMES: tuple[str, ...] = metrics_lib.RANKING_METRICS + LIST_NAMES
POINTWISE_NAMES: tuple[str, ...] = ("auc", "mse", "rmse", "mae")


# ----------------------------------------------------------------------------- helpers


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive integers, got {list(ks)}")
    return tuple(sorted(set(ks)))


def _split_metric_names(metrics: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(per-user ranking metric names, the list metrics asked for: `LIST_NAMES`)."""
    names = []
    lists = []
    for name in metrics:
        name = name.lower()
        if name in LIST_NAMES:
            if name not in lists:
                lists.append(name)
        elif name in metrics_lib.RANKING_METRICS:
            if name not in names:
                names.append(name)
        elif name not in POINTWISE_NAMES:
            valid = ", ".join(RANKING_NAMES + POINTWISE_NAMES)
            raise ValueError(f"unknown metric {name!r}; expected one of {valid}")
    return tuple(names), tuple(name for name in LIST_NAMES if name in lists)


def labels_are_binary(dataset: Dataset) -> bool:
    """True for implicit feedback (all ones) and binarised ratings (0/1 labels), whose
    positives are `rating > 0` whatever rating threshold is configured."""
    return bool(dataset.meta.get("implicit")) or dataset.meta.get("binarized_at") is not None


def is_positive(
    rating: np.ndarray, positive_threshold: float | None, implicit: bool = False
) -> np.ndarray:
    """`[n]` bool: rating >= threshold, or rating > 0 when the threshold is None or the data
    are implicit (labels of 1)."""
    rating = np.asarray(rating)
    if positive_threshold is None or implicit:
        return rating > 0
    return rating >= positive_threshold


def _user_index(user: np.ndarray, item: np.ndarray, n_users: int) -> tuple[np.ndarray, ...]:
    """CSR view of (user, item) pairs: `indptr [n_users + 1]`, `items [n]` grouped by user."""
    order = np.argsort(user, kind="stable")
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=n_users), out=indptr[1:])
    return indptr, np.asarray(item)[order]


def _rows_of(
    indptr: np.ndarray, indices: np.ndarray, users: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(row in `users`, item) for every stored pair of the given users."""
    starts = indptr[users]
    counts = indptr[users + 1] - starts
    row = np.repeat(np.arange(len(users)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return row, indices[np.repeat(starts, counts) + offset]


def informative_lists(
    n_candidates: np.ndarray, n_positives: np.ndarray, ks: Sequence[int]
) -> dict[int, np.ndarray]:
    """Which users' candidate lists a metric@K can tell models apart on.

    A list is informative at K when it has more than K candidates, at least one positive and
    at least one negative. With at most K candidates the whole list is in the top K: recall@K
    and hit@K are 1 and precision@K is fixed by the data, while ndcg@K, mrr@K and map@K only
    reorder a list that lies inside the cut-off, so they stay high whatever the scores (one
    positive among two candidates: ndcg@K >= 1 / log2(3) = 0.63). A list of positives only is
    perfectly ordered by any scorer (every metric at its maximum). Averaged in, such users pull
    a validation mean towards a constant and make a 5% validation slice (under one item per
    user) read `recall@5 1.0` beside a test of 0.58. The negative is required as well as more
    than K candidates because without one no metric depends on the scores; it is also the
    condition `auc_per_user` has. One rule for every metric@K keeps the users behind
    `ndcg@K` and `recall@K` the same (`n_users_ranked@K`).

    Args:
        n_candidates: `[n]` candidates of each user (rankable test rows).
        n_positives: `[n]` positives among them.
        ks: cut-offs.

    Returns:
        `{K: [n] bool}`.
    """
    n_candidates = np.asarray(n_candidates)
    n_positives = np.asarray(n_positives)
    both = (n_positives > 0) & (n_candidates - n_positives > 0)
    return {int(k): both & (n_candidates > int(k)) for k in ks}


def candidate_lists(test: Dataset, positive_threshold: float | None) -> tuple[np.ndarray, ...]:
    """`([n_users] candidates, [n_users] positives)` of each user's test rows (the lists the
    candidates protocol ranks; no scores needed)."""
    positive = is_positive(test.rating, positive_threshold, labels_are_binary(test))
    n_candidates = np.bincount(test.user, minlength=test.n_users)
    n_positives = np.bincount(test.user[positive], minlength=test.n_users)
    return n_candidates, n_positives


@functools.partial(jax.jit, static_argnames=("ks", "names", "coverage"))
def _chunk_metrics(
    scores: jax.Array,
    labels: jax.Array,
    where: jax.Array,
    *,
    ks: tuple[int, ...],
    names: tuple[str, ...],
    coverage: bool,
) -> tuple[dict[str, jax.Array], jax.Array, jax.Array | None]:
    """Per-user metrics at every K, the has-positive mask and (optionally) top-K items."""
    top = metrics_lib.ranked_topk(scores, labels, k=max(ks), where=where)
    values = {}
    for k in ks:
        for name, value in metrics_lib.metrics_from_topk(top, names, k).items():
            values[f"{name}@{k}"] = value
    items = metrics_lib.item_topk(scores, k=max(ks), where=where) if coverage else None
    return values, top.n_relevant > 0, items


class _Accumulator:
    """Collects per-user values of the valid rows of each chunk, and the recommended items
    (how often each item is in a top-K list; the lists' mean popularity)."""

    def __init__(self, ks: tuple[int, ...], n_items: int, lists: tuple[str, ...],
                 popularity: np.ndarray | None = None):
        self.ks = ks
        self.values: dict[str, list[np.ndarray]] = {}
        self.users: list[np.ndarray] = []
        self.lists = lists
        self.counts = np.zeros((len(ks), n_items), dtype=np.int64) if lists else None
        self.popularity = popularity
        self.list_popularity: list[list[np.ndarray]] = [[] for _ in ks]
        self.ranked_only = False  # some rows were not ranked at some K (`add(ranked_at=)`)

    def add(self, users, values, valid, items, item_of=None, ranked_at=None) -> None:
        """`ranked_at`: `{K: [chunk] bool}`, the valid rows whose metric@K counts (the rest
        are kept as NaN in the per-user values and cover no item at K); None: every valid
        row counts at every K."""
        valid = np.asarray(valid)
        self.users.append(np.asarray(users)[valid])
        for name, value in values.items():
            value = np.asarray(value)
            if ranked_at is not None:
                self.ranked_only = True
                value = np.where(ranked_at[int(name.split("@")[1])], value, np.nan)
            self.values.setdefault(name, []).append(value[valid])
        if self.counts is not None:
            for index, k in enumerate(self.ks):
                rows = valid if ranked_at is None else valid & ranked_at[k]
                top = np.asarray(items)[rows][:, :k]
                if item_of is not None:
                    # Candidate positions -> catalogue items (candidates protocol).
                    top = np.where(top >= 0, np.take_along_axis(item_of[rows], top, 1), -1)
                np.add.at(self.counts[index], top[top >= 0], 1)
                if self.popularity is not None:
                    filled = top >= 0
                    popular = np.where(filled, self.popularity[np.maximum(top, 0)], 0.0)
                    self.list_popularity[index].append(
                        popular.sum(1) / np.maximum(filled.sum(1), 1))

    def result(self, names, n_items) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        users = np.concatenate(self.users) if self.users else np.zeros(0, np.int64)
        per_user = {"user": users}
        out: dict[str, Any] = {}
        for name, parts in self.values.items():
            values = np.concatenate(parts).astype(np.float64)
            per_user[name] = values
            # NaN marks a user not ranked at this K (`ranked_at`); none otherwise.
            counted = values[~np.isnan(values)] if self.ranked_only else values
            # float64 host mean: identical whatever the chunking.
            out[name] = float(counted.mean()) if len(counted) else math.nan
        if self.counts is not None:
            for index, k in enumerate(self.ks):
                counts = self.counts[index]
                if "itemcoverage" in self.lists:
                    out[f"itemcoverage@{k}"] = float((counts > 0).sum() / n_items)
                if "averagepopularity" in self.lists:
                    means = (np.concatenate(self.list_popularity[index])
                             if self.list_popularity[index] else np.zeros(0))
                    out[f"averagepopularity@{k}"] = (float(means.mean()) if len(means)
                                                     else math.nan)
                if "giniindex" in self.lists:
                    out[f"giniindex@{k}"] = gini_index(counts)
        ordered = {}
        for k in self.ks:
            for name in names:
                if f"{name}@{k}" in out:
                    ordered[f"{name}@{k}"] = out[f"{name}@{k}"]
        return ordered, per_user


def gini_index(counts: np.ndarray) -> float:
    """The Gini index of how often each item is recommended (`counts [n_items]`, zeros
    included), as RecBole's GiniIndex: `sum_i (2i - n - 1) c_(i) / (n sum c)` over the
    counts sorted ascending (i = 1..n); NaN when nothing was recommended."""
    ordered = np.sort(np.asarray(counts, np.float64))
    n, total = len(ordered), ordered.sum()
    if total == 0:
        return math.nan
    index = np.arange(1, n + 1)
    return float(np.sum((2 * index - n - 1) * ordered) / (n * total))


def _item_popularity(train: Dataset, lists: tuple[str, ...]) -> np.ndarray | None:
    """Training interactions per item, when `averagepopularity` is asked for."""
    if "averagepopularity" not in lists:
        return None
    return np.bincount(train.item, minlength=train.n_items).astype(np.float64)


def _as_scores(scores: Any, shape: tuple[int, ...], what: str) -> jax.Array:
    scores = jnp.asarray(scores)
    if scores.shape != shape:
        raise ValueError(f"{what} returned shape {scores.shape}, expected {shape}")
    return scores


# ----------------------------------------------------------------------------- full ranking


def evaluate_full_ranking(
    score_fn: Callable[[jax.Array], Any],
    train: Dataset,
    test: Dataset,
    *,
    ks: Sequence[int],
    metrics: Sequence[str],
    chunk_size: int = 256,
    mask_train: bool = True,
    positive_threshold: float | None = None,
    return_per_user: bool = False,
) -> dict[str, Any]:
    """Ranks the whole catalogue for every test user and averages ranking metrics.

    Positives are the test rows with `rating >= positive_threshold` (`rating > 0` when the
    threshold is None or `test.meta["implicit"]`). Other test items stay in the ranking as
    ordinary candidates. With `mask_train`, each user's training items are unrankable
    (`where=False`); a test positive that is also a training item is then not a positive.
    When evaluating the test split after validation, pass the union of train and validation
    as `train` (`data.dataset.concatenate`) so that both are masked (RecBole's protocol).

    A user is evaluated when they have at least one rankable test positive; the rest
    (including users absent from the test split) are counted in `n_users_no_positive` and never
    enter an average. Item coverage is the fraction of catalogue items that appear in the top K
    of at least one evaluated user (ties to the lower item index, labels not used).

    Users are scored `chunk_size` at a time; the last chunk is padded (with user 0, results
    dropped), so `score_fn` and the metric computation always see the same shapes. Per-user
    values do not depend on the chunking and means are taken on the host in float64, so no
    metric depends on `chunk_size`.

    Args:
        score_fn: `user_ids [chunk_size] int32 -> scores [chunk_size, n_items]`; any callable
            returning an array (jit it yourself to compile once).
        train: training interactions (masked when `mask_train`).
        test: test interactions; same id maps as `train`.
        ks: cut-offs K.
        metrics: names among `recall, precision, ndcg, hit, mrr, map` and the list metrics
            `itemcoverage, averagepopularity, giniindex` (`LIST_NAMES`); pointwise
            names (`auc, mse, rmse, mae`) are accepted and ignored here.
        chunk_size: users per chunk.
        mask_train: mask each user's training items out of their ranking.
        positive_threshold: rating threshold for positives, or None for `rating > 0`.
        return_per_user: also return `"per_user": {"user": [n_eval], "ndcg@10": [n_eval], ...}`
            (internal user ids of the evaluated users, in increasing order).

    Returns:
        `{"recall@10": mean, ..., "itemcoverage@10": ..., "n_users_evaluated": int,
        "n_users_no_positive": int}`; means are NaN when no user is evaluated.
    """
    ks = _check_ks(ks)
    names, lists = _split_metric_names(metrics)
    coverage = bool(lists)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if train.n_items != test.n_items or train.n_users != test.n_users:
        raise ValueError(
            "train and test must share id maps: got "
            f"{train.n_users} x {train.n_items} and {test.n_users} x {test.n_items}"
        )
    n_users, n_items = test.n_users, test.n_items
    positive = is_positive(test.rating, positive_threshold, labels_are_binary(test))
    test_indptr, test_items = _user_index(test.user[positive], test.item[positive], n_users)
    train_indptr, train_items = _user_index(train.user, train.item, n_users)
    candidates = np.flatnonzero(np.diff(test_indptr) > 0)

    accumulator = _Accumulator(ks, n_items, lists, _item_popularity(train, lists))
    for start in range(0, len(candidates), chunk_size):
        users = candidates[start : start + chunk_size]
        n_real = len(users)
        padded = np.zeros(chunk_size, dtype=np.int32)
        padded[:n_real] = users
        labels = np.zeros((chunk_size, n_items), dtype=bool)
        row, col = _rows_of(test_indptr, test_items, users)
        labels[row, col] = True
        where = np.ones((chunk_size, n_items), dtype=bool)
        if mask_train:
            row, col = _rows_of(train_indptr, train_items, users)
            where[row, col] = False
        scores = _as_scores(
            score_fn(jnp.asarray(padded)), (chunk_size, n_items), "score_fn(user_ids)"
        )
        values, valid, items = _chunk_metrics(
            scores, labels, where, ks=ks, names=names, coverage=coverage
        )
        valid = np.asarray(valid) & (np.arange(chunk_size) < n_real)
        accumulator.add(padded, values, valid, items)

    out, per_user = accumulator.result(names + lists, n_items)
    n_evaluated = len(per_user["user"])
    if n_evaluated == 0:
        warnings.warn(
            "evaluate_full_ranking: no user has a positive test item "
            f"(positive_threshold={positive_threshold}); every metric is NaN",
            stacklevel=2,
        )
    out["n_users_evaluated"] = n_evaluated
    out["n_users_no_positive"] = n_users - n_evaluated
    if return_per_user:
        out["per_user"] = per_user
    return out


# ----------------------------------------------------------------------------- candidates


def _score_pairs(
    score_fn_pairs: Callable[[jax.Array, jax.Array], Any],
    user: np.ndarray,
    item: np.ndarray,
    batch_size: int,
) -> np.ndarray:
    """Scores of all (user, item) pairs, `batch_size` at a time with a padded last batch."""
    n = len(user)
    size = max(1, min(batch_size, n))
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, size):
        stop = min(start + size, n)
        users = np.zeros(size, dtype=np.int32)
        items = np.zeros(size, dtype=np.int32)
        users[: stop - start] = user[start:stop]
        items[: stop - start] = item[start:stop]
        scores = _as_scores(
            score_fn_pairs(jnp.asarray(users), jnp.asarray(items)), (size,),
            "score_fn_pairs(users, items)",
        )
        out[start:stop] = np.asarray(scores)[: stop - start]
    return out


def evaluate_candidates(
    score_fn_pairs: Callable[[jax.Array, jax.Array], Any],
    test: Dataset,
    *,
    ks: Sequence[int],
    metrics: Sequence[str],
    positive_threshold: float | None,
    literature_ndcg: bool = False,
    chunk_size: int = 256,
    batch_size: int = 65536,
    return_per_user: bool = False,
    informative_only: bool = False,
) -> dict[str, Any]:
    """Ranks each user's own test items (e.g. Coat's MAR test ratings) and averages metrics.

    Each user's candidates are exactly their test rows (duplicate rows are separate
    candidates; deduplicate upstream), padded to the largest count with `where=False`.
    Positives are rows with `rating >= positive_threshold` (`> 0` when None or implicit).
    Users with candidates but no positive are left out of every main average and counted in
    `n_users_no_positive`; users with no test row are counted in `n_users_without_candidates`.

    With `literature_ndcg=True`, `literature_ndcg@K` is also returned: the mean over all users
    with candidates where a user with no positive scores NDCG = 1 (the convention of some
    debiasing papers). It is never mixed into `ndcg@K`.

    `n_users_informative@K` counts the evaluated users whose list is informative at K
    (`informative_lists`: more than K candidates, a positive and a negative). By default every
    evaluated user enters metric@K (the published protocol, e.g. Coat's test, where a few
    users have a list of positives only); with `informative_only=True` (a validation split)
    metric@K, item coverage@K included, averages the informative users alone and their
    per-user values elsewhere are NaN. `n_users_ranked@K` is the number of users metric@K
    averages either way.

    Args:
        score_fn_pairs: `(users [m] int32, items [m] int32) -> scores [m]`; called on batches
            of `min(batch_size, n_test)` pairs (the last one padded with pair (0, 0)).
        test: the test interactions.
        ks: cut-offs K.
        metrics: as in `evaluate_full_ranking`.
        positive_threshold: rating threshold, or None for `rating > 0`.
        literature_ndcg: also report `literature_ndcg@K`.
        chunk_size: users per metric chunk.
        batch_size: pairs per `score_fn_pairs` call.
        return_per_user: also return per-user arrays under `"per_user"`.
        informative_only: average metric@K over the users whose list is informative at K.

    Returns:
        `{"ndcg@5": mean, ..., "n_users_evaluated", "n_users_no_positive",
        "n_users_without_candidates", "n_users_informative@K", "n_users_ranked@K"}` plus
        `literature_ndcg@K` when asked (never restricted: the literature's convention).
    """
    ks = _check_ks(ks)
    names, lists = _split_metric_names(metrics)
    coverage = bool(lists)
    n_users, n_items = test.n_users, test.n_items
    order = np.argsort(test.user, kind="stable")
    user = test.user[order].astype(np.int64)
    item = test.item[order].astype(np.int64)
    positive = is_positive(test.rating[order], positive_threshold, labels_are_binary(test))
    scores = _score_pairs(score_fn_pairs, user, item, batch_size)

    counts = np.bincount(user, minlength=n_users)
    candidate_users = np.flatnonzero(counts)
    n_rows = len(candidate_users)
    width = int(counts.max()) if len(user) else 1
    row_of_user = np.full(n_users, -1, dtype=np.int64)
    row_of_user[candidate_users] = np.arange(n_rows)
    row = row_of_user[user]
    column = np.arange(len(user)) - (np.cumsum(counts) - counts)[user]
    # Padded tables; rows are users in increasing id order.
    score_table = np.zeros((n_rows, width), dtype=np.float32)
    label_table = np.zeros((n_rows, width), dtype=bool)
    where_table = np.zeros((n_rows, width), dtype=bool)
    item_table = np.full((n_rows, width), -1, dtype=np.int64)
    score_table[row, column] = scores
    label_table[row, column] = positive
    where_table[row, column] = True
    item_table[row, column] = item
    # Rows are users with candidates: which lists are informative at each K.
    n_candidates, n_positives = candidate_lists(test, positive_threshold)
    informative = informative_lists(n_candidates[candidate_users],
                                    n_positives[candidate_users], ks)

    metric_names = names
    if literature_ndcg and "ndcg" not in metric_names:
        metric_names = metric_names + ("ndcg",)
    if "averagepopularity" in lists:
        raise ValueError("averagepopularity reads the training counts, which the candidates "
                         "protocol does not take; use eval.protocol = 'full'")
    accumulator = _Accumulator(ks, n_items, lists)
    literature: dict[str, list[np.ndarray]] = {f"ndcg@{k}": [] for k in ks}
    size = max(1, min(chunk_size, n_rows))
    for start in range(0, n_rows, size):
        stop = min(start + size, n_rows)
        n_real = stop - start

        def pad(table: np.ndarray, fill: Any, n_real: int = n_real, start: int = start):
            out = np.full((size, width), fill, dtype=table.dtype)
            out[:n_real] = table[start : start + n_real]
            return out

        values, valid, items = _chunk_metrics(
            pad(score_table, 0), pad(label_table, False), pad(where_table, False),
            ks=ks, names=metric_names, coverage=coverage,
        )
        valid = np.asarray(valid)[:n_real]
        for k in ks:
            ndcg = np.asarray(values[f"ndcg@{k}"])[:n_real] if literature_ndcg else None
            if ndcg is not None:
                literature[f"ndcg@{k}"].append(np.where(valid, ndcg, 1.0))
        real = np.zeros(size, dtype=bool)
        real[:n_real] = valid
        values = {key: value for key, value in values.items() if key.split("@")[0] in names}
        users = np.zeros(size, dtype=np.int64)
        users[:n_real] = candidate_users[start:stop]
        ranked_at = None
        if informative_only:
            ranked_at = {}
            for k in ks:
                ranked_at[k] = np.zeros(size, dtype=bool)
                ranked_at[k][:n_real] = informative[k][start:stop]
        accumulator.add(users, values, real, items, item_of=pad(item_table, -1),
                        ranked_at=ranked_at)

    out, per_user = accumulator.result(names + lists, n_items)
    n_evaluated = len(per_user["user"])
    out["n_users_evaluated"] = n_evaluated
    out["n_users_no_positive"] = n_rows - n_evaluated
    out["n_users_without_candidates"] = n_users - n_rows
    for k in ks:
        # Informative lists have a positive, so these users are all evaluated.
        out[f"n_users_informative@{k}"] = int(informative[k].sum())
    for k in ks:
        out[f"n_users_ranked@{k}"] = (out[f"n_users_informative@{k}"] if informative_only
                                      else n_evaluated)
    if literature_ndcg:
        for k in ks:
            parts = literature[f"ndcg@{k}"]
            values = np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)
            out[f"literature_ndcg@{k}"] = float(values.mean()) if len(values) else math.nan
    if return_per_user:
        out["per_user"] = per_user
    return out


# ----------------------------------------------------------------------------- pointwise


def evaluate_pointwise(
    predictions: Any,
    ratings: Any,
    *,
    labels_threshold: float | None,
    user: np.ndarray | None = None,
    where: np.ndarray | None = None,
) -> dict[str, float]:
    """Rating errors and AUC of predictions against observed ratings.

    Args:
        predictions: `[n]` predicted ratings or scores.
        ratings: `[n]` observed ratings.
        labels_threshold: AUC labels are `ratings >= labels_threshold` (`> 0` when None).
        user: `[n]` internal user ids; when given, also `auc_per_user`, the mean of each
            user's AUC over the users with both a positive and a negative, and their count
            `n_users_auc`.
        where: `[n]` bool, which pairs count; None for all.

    Returns:
        `{"mse", "rmse", "mae", "auc"}` (plus `"auc_per_user"`, `"n_users_auc"`).
    """
    predictions = np.asarray(predictions, dtype=np.float32).reshape(-1)
    ratings = np.asarray(ratings, dtype=np.float32).reshape(-1)
    if predictions.shape != ratings.shape:
        raise ValueError(
            f"predictions {predictions.shape} and ratings {ratings.shape} differ in shape"
        )
    keep = np.ones(len(ratings), bool) if where is None else np.asarray(where, bool).reshape(-1)
    labels = is_positive(ratings, labels_threshold)
    out = {
        "mse": float(metrics_lib.mse(predictions, ratings, keep)),
        "rmse": float(metrics_lib.rmse(predictions, ratings, keep)),
        "mae": float(metrics_lib.mae(predictions, ratings, keep)),
        "auc": float(metrics_lib.auc(predictions, labels, keep)),
    }
    if user is not None:
        user = np.asarray(user).reshape(-1)[keep]
        predictions, labels = predictions[keep], labels[keep]
        users, row = np.unique(user, return_inverse=True)
        order = np.argsort(row, kind="stable")
        row = row[order]
        counts = np.bincount(row, minlength=len(users))
        column = np.arange(len(row)) - (np.cumsum(counts) - counts)[row]
        width = int(counts.max()) if len(counts) else 1
        score_table = np.zeros((len(users), width), np.float32)
        label_table = np.zeros((len(users), width), bool)
        where_table = np.zeros((len(users), width), bool)
        score_table[row, column] = predictions[order]
        label_table[row, column] = labels[order]
        where_table[row, column] = True
        per_user = np.asarray(
            metrics_lib.per_user_auc(score_table, label_table, where=where_table)
        )
        defined = ~np.isnan(per_user)
        out["auc_per_user"] = float(per_user[defined].mean()) if defined.any() else math.nan
        out["n_users_auc"] = int(defined.sum())
    return out
