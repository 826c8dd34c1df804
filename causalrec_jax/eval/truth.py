r"""Evaluation against the simulator's ground truth, over every (user, item) cell.

On the simulator the true relevance `r_ui = P(relevant)` and the expected rating `E[Y_ui]` of
every cell are known (`causalrec_jax.sim.world`), so a model can be scored on the whole
`[n_users, n_items]` matrix instead of a held-out sample: the error against the truth on all
pairs, and ranking metrics on the true relevance. `evaluate_against_truth` walks over users in
chunks of fixed size (the last one padded and dropped), so the per-chunk computation compiles
once and memory stays at `chunk_size * n_items` on the device. The world comes in as a
`TruthRows` (its shape and a function of its rows), so eval never imports the simulator:
`sim.world.truth_rows` builds one from the dense `GroundTruth` or from the `SparseGroundTruth` of
large worlds (rows recomputed block by block).

Definitions (`where` = the cells a user can be ranked on: every item, less the user's training
items when `train` is given; labels `y_ui = 1[r_ui >= relevance_threshold]`; ranking positions
j = 1..K of the user's list over the rankable items, ordered by score):

    truth_mse            = mean over ALL cells of (score_ui - E[Y_ui])^2   (training cells too)
    truth_auc            = Mann-Whitney AUC of scores against y over all rankable cells of all
                           users together, ties counted 1/2 (exact: sorts and integer counts
                           on the host)
    truth_auc_per_user   = mean over users with both classes of that user's AUC
    truth_ndcg@K         = sum_j r_(j) / log2(j + 1)  /  the same sum for the rankable items
                           sorted by true relevance (graded gains r_ui)
    truth_recall@K       = #{j <= K : y_(j) = 1} / #{rankable i : y_ui = 1}
    truth_precision@K    = #{j <= K : y_(j) = 1} / K

Ties in scores are broken pessimistically, as in `causalrec_jax.eval.metrics`: among items of
equal score, the one with the LOWER true relevance is ranked first (so with binary gains the
relevant item loses every tie). A constant scorer therefore gets the worst graded NDCG, not an
average one. NaN scores rank last (as -inf).

Averages are over users (DESIGN §2): NDCG over users with at least one rankable item
(`truth_n_users`); recall and precision over users with at least one rankable relevant item
(the others are counted in `truth_n_users_no_relevant`); per-user AUC over users with both a
relevant and a non-relevant rankable item. Per-user values are computed row by row and averaged
in float64 on the host, so the results do not depend on `chunk_size`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax.data.dataset import Dataset
from causalrec_jax.eval.ranking import _check_ks, _rows_of, _user_index


def rank_auc(scores: Any, labels: Any) -> float:
    """Exact AUC of `scores` against binary `labels`, ties counted 1/2 (Mann-Whitney U / n+ n-).

    Computed on the host with `numpy` sorts and integer counts, so it is exact for any number
    of cells that fits in memory. NaN scores count as -inf.

    Args:
        scores: `[n]` scores (any shape; flattened).
        labels: `[n]` bool or numbers; positive where > 0.

    Returns:
        The AUC, or NaN when there is no positive or no negative.
    """
    scores = np.asarray(scores).reshape(-1)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    labels = np.asarray(labels).reshape(-1) > 0
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    n_positive = int(labels.sum())
    n_negative = len(scores) - n_positive
    if n_positive == 0 or n_negative == 0:
        return math.nan
    scores = np.where(np.isnan(scores), -np.inf, scores)
    # For each positive, #negatives below + #negatives tied = left + right insertion points
    # (2x its wins); sorting both sides makes the searches sequential. Integer sums: exact.
    negatives = np.sort(scores[~labels])
    positives = np.sort(scores[labels])
    below = np.searchsorted(negatives, positives, side="left")
    at_or_below = np.searchsorted(negatives, positives, side="right")
    doubled_wins = int(below.sum(dtype=np.int64)) + int(at_or_below.sum(dtype=np.int64))
    return doubled_wins / (2.0 * float(n_positive) * float(n_negative))


def _clean(scores: jax.Array) -> jax.Array:
    # As metrics._clean_scores: NaN ranks last, -0.0 ties with 0.0.
    scores = jnp.asarray(scores, jnp.float32)
    return jnp.where(jnp.isnan(scores), -jnp.inf, jnp.where(scores == 0, 0.0, scores))


def _sorted_auc(negated: jax.Array, positive: jax.Array, rankable: jax.Array) -> jax.Array:
    """Per-row AUC (ties 1/2) of rows already sorted by score, descending (`negated` = -score).

    Saves a second sort: a positive at a position of tie group [start, end] beats the
    negatives after the group and half of those within it, i.e. `n- - (C[end] + C[start-1]) / 2`
    with `C` the running count of negatives. Unrankable entries count as neither class.
    """
    n = negated.shape[-1]
    negative = rankable & ~positive
    inclusive = jnp.cumsum(negative, axis=-1, dtype=jnp.int32)
    exclusive = inclusive - negative
    position = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), negated.shape)
    differs = negated[:, 1:] != negated[:, :-1]
    edge = jnp.ones((negated.shape[0], 1), bool)
    first = jnp.concatenate([edge, differs], axis=-1)
    last = jnp.concatenate([differs, edge], axis=-1)
    start = jax.lax.cummax(jnp.where(first, position, 0), axis=1)
    end = jax.lax.cummin(jnp.where(last, position, n - 1), axis=1, reverse=True)
    n_negative = inclusive[:, -1:]
    tied_and_below = (
        jnp.take_along_axis(inclusive, end, axis=-1)
        + jnp.take_along_axis(exclusive, start, axis=-1)
    )
    doubled_wins = jnp.where(positive, 2 * n_negative - tied_and_below, 0).astype(jnp.float32)
    n_positive = jnp.sum(positive, axis=-1, dtype=jnp.int32).astype(jnp.float32)
    pairs = n_positive * n_negative[:, 0].astype(jnp.float32)
    wins = 0.5 * jnp.sum(doubled_wins, axis=-1)
    return jnp.where(pairs > 0, wins / jnp.where(pairs > 0, pairs, 1.0), jnp.nan)


def _orderable(values: np.ndarray) -> np.ndarray:
    """float32 -> uint32 with the same order (-0.0 below +0.0; no NaN expected)."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))


def pessimistic_order(scores: Any, relevance: Any, where: Any | None) -> np.ndarray:
    """Each row's items in the order `truth_chunk_metrics` sorts them, computed on the host.

    The order: rankable first, then score descending (NaN as -inf, -0.0 tied with 0.0), then
    relevance ascending. One NumPy argsort of a 64-bit key per row: the rankable cells'
    negated score, cleaned by the device's own `_clean` (so a denormal score flushed to zero
    there is zero here too), in the high 32 bits and the relevance in the low 32. Unrankable
    cells come last ordered by relevance alone, not by score: no metric reads their order
    (they are neither class of the AUC, carry no gain and follow every rankable cell), so the
    metrics equal those of the device sort exactly (tested).

    Why: XLA's CPU sort calls a comparator per comparison; on a block of 256 users × 1,000
    items its 3-key sort takes about 58 ms against 4.5 ms here (2-core CPU), the bulk of a
    simulator run's truth evaluation. `evaluate_against_truth` uses it on CPU devices only
    (`sorts_on_host`).

    Args:
        scores: `[batch, n_items]` model scores.
        relevance: `[batch, n_items]` true relevance (no NaN).
        where: `[batch, n_items]` bool rankable cells, or None for all.

    Returns:
        `[batch, n_items]` int32 item positions, each row a permutation.
    """
    negated = np.asarray(_negated_clean(jnp.asarray(scores)), np.float32)
    high = _orderable(negated)
    if where is not None:
        high = np.where(np.asarray(where, bool), high, np.uint32(0xFFFFFFFF))
    key = (high.astype(np.uint64) << np.uint64(32)) | _orderable(
        np.asarray(relevance, np.float32)).astype(np.uint64)
    return np.argsort(key, axis=-1).astype(np.int32)


@jax.jit
def _negated_clean(scores: jax.Array) -> jax.Array:
    return -_clean(scores)


def sorts_on_host(scores: jax.Array) -> bool:
    """Whether `evaluate_against_truth` orders a block on the host (`pessimistic_order`):
    when its scores live on a CPU device."""
    devices = getattr(scores, "devices", None)
    return devices is not None and all(d.platform == "cpu" for d in devices())


@functools.partial(jax.jit, static_argnames=("ks",))
def truth_chunk_metrics(
    scores: jax.Array,
    relevance: jax.Array,
    expected_rating: jax.Array,
    where: jax.Array | None,
    threshold: jax.typing.ArrayLike,
    *,
    ks: tuple[int, ...],
    order: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Per-user truth metrics of a block of users (jit-able; one row per user).

    Args:
        scores: `[batch, n_items]` model scores.
        relevance: `[batch, n_items]` true relevance `r_ui` (the graded gains).
        expected_rating: `[batch, n_items]` true `E[Y_ui]`.
        where: `[batch, n_items]` bool rankable cells (False for masked training items), or
            None for all.
        threshold: binary labels are `relevance >= threshold`.
        ks: cut-offs (static).
        order: `[batch, n_items]` the rows' pessimistic order (`pessimistic_order`, sorted
            on the host), or None to sort here.

    Returns:
        `{"squared_error": [batch] sum over all cells, "n_rankable", "n_relevant",
        "auc": [batch] (NaN without both classes), "labels": [batch, n_items] bool,
        "ndcg@K", "recall@K", "precision@K": [batch]}`; ranking values are 0 for users
        without rankable (relevant) items and must be left out of averages.
    """
    scores = _clean(scores)
    relevance = jnp.asarray(relevance, jnp.float32)
    expected_rating = jnp.asarray(expected_rating, jnp.float32)
    batch, n_items = scores.shape
    rankable = (
        jnp.ones(scores.shape, bool) if where is None else jnp.asarray(where, bool)
    )
    labels = (relevance >= threshold) & rankable
    n_rankable = jnp.sum(rankable, axis=-1, dtype=jnp.int32)
    n_relevant = jnp.sum(labels, axis=-1, dtype=jnp.int32)

    # The pessimistic order: rankable first, then score descending, then relevance ascending.
    if order is None:
        _, negated, sorted_relevance, sorted_rankable = jax.lax.sort(
            ((~rankable).astype(jnp.int32), -scores, relevance, rankable),
            dimension=-1,
            num_keys=3,
        )
    else:
        negated, sorted_relevance, sorted_rankable = (
            jnp.take_along_axis(values, order, axis=-1)
            for values in (-scores, relevance, rankable))
    auc = _sorted_auc(negated, (sorted_relevance >= threshold) & sorted_rankable, sorted_rankable)
    k_max = max(ks)
    if k_max > n_items:
        pad = ((0, 0), (0, k_max - n_items))
        sorted_relevance = jnp.pad(sorted_relevance, pad)
        sorted_rankable = jnp.pad(sorted_rankable, pad)
    top_relevance = sorted_relevance[:, :k_max]
    top_rankable = sorted_rankable[:, :k_max]
    gains = jnp.where(top_rankable, top_relevance, 0.0)
    hits = (top_relevance >= threshold) & top_rankable
    ideal_gains, _ = jax.lax.top_k(
        jnp.pad(jnp.where(rankable, relevance, 0.0), ((0, 0), (0, max(0, k_max - n_items)))),
        k_max,
    )
    discounts = 1.0 / jnp.log2(jnp.arange(2, k_max + 2, dtype=jnp.float32))

    out = {
        "squared_error": jnp.sum((scores - expected_rating) ** 2, axis=-1),
        "n_rankable": n_rankable,
        "n_relevant": n_relevant,
        "auc": auc,
        "labels": labels,
    }
    for k in ks:
        dcg = jnp.sum(gains[:, :k] * discounts[:k], axis=-1)
        ideal = jnp.sum(ideal_gains[:, :k] * discounts[:k], axis=-1)
        n_hits = jnp.sum(hits[:, :k], axis=-1, dtype=jnp.int32).astype(jnp.float32)
        out[f"ndcg@{k}"] = jnp.where(ideal > 0, dcg / jnp.where(ideal > 0, ideal, 1.0), 0.0)
        out[f"recall@{k}"] = jnp.where(
            n_relevant > 0, n_hits / jnp.maximum(n_relevant, 1).astype(jnp.float32), 0.0
        )
        out[f"precision@{k}"] = n_hits / k
    return out


class TruthRows(NamedTuple):
    """What the truth metrics read of a world: its shape and its rows, as arrays (eval never
    sees a simulator type; `sim.world.truth_rows(world)` builds one for a dense or a sparse
    world).

    Attributes:
        n_users, n_items: the world's shape.
        rows: `users [b] int32 -> (relevance [b, n_items], expected_rating [b, n_items])`,
            jit-compiled by its builder (called once per chunk of fixed size).
    """

    n_users: int
    n_items: int
    rows: Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def _world_shape(truth: TruthRows) -> tuple[int, int]:
    if not isinstance(truth, TruthRows):
        raise TypeError(
            f"truth must be a TruthRows (sim.world.truth_rows(world)), got {type(truth).__name__}"
        )
    return int(truth.n_users), int(truth.n_items)


def _mean(parts: list[np.ndarray]) -> float:
    values = np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)
    return float(values.mean()) if len(values) else math.nan


def evaluate_against_truth(
    score_users_fn: Callable[[jax.Array], Any],
    truth: TruthRows,
    *,
    ks: Sequence[int] = (5, 10),
    train: Dataset | None = None,
    chunk_size: int = 256,
    relevance_threshold: float = 0.5,
    rating_scale: bool = True,
) -> dict[str, Any]:
    """A model's error and ranking quality against the simulator's truth on ALL cells.

    See the module docstring for the definitions and the tie rule. Users are scored
    `chunk_size` at a time (the last chunk padded with user 0 and its rows dropped), so
    `score_users_fn` and the metric computation always see the same shapes. The global AUC
    keeps every rankable cell's score on the host (about 25 bytes per cell while it is sorted:
    ~400 MB for 15M cells).

    Args:
        score_users_fn: `user_ids [chunk_size] int32 -> scores [chunk_size, n_items]` (as in
            `eval.protocol`); jit it yourself to compile once.
        truth: the world's shape and rows (`sim.world.truth_rows(world)`).
        ks: cut-offs K.
        train: interactions (internal ids of this world) masked out of each user's ranking, of
            the ideal list and of both AUCs; None masks nothing. `truth_mse` always covers every
            cell.
        chunk_size: users per chunk.
        relevance_threshold: binary labels (recall, precision, AUC) are
            `relevance >= relevance_threshold`.
        rating_scale: the scores are predicted ratings on the world's 1..5 scale, so that
            `truth_mse` (against `E[Y]`) is meaningful; when False it is left out.

    Returns:
        `{"truth_mse", "truth_auc", "truth_auc_per_user", "truth_ndcg@K", "truth_recall@K",
        "truth_precision@K" (for every K), "truth_n_users", "truth_n_users_no_relevant"}` as
        Python floats / ints; a mean with no user to average is NaN.
    """
    ks = _check_ks(ks)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_users, n_items = _world_shape(truth)
    if train is not None:
        if train.n_users != n_users or train.n_items != n_items:
            raise ValueError(
                f"train has {train.n_users} users x {train.n_items} items, the world "
                f"{n_users} x {n_items}"
            )
        train_indptr, train_items = _user_index(train.user, train.item, n_users)
    threshold = jnp.float32(relevance_threshold)

    per_user: dict[str, list[np.ndarray]] = {}
    auc_scores: list[np.ndarray] = []
    auc_labels: list[np.ndarray] = []
    n_evaluated = n_no_relevant = 0
    for start in range(0, n_users, chunk_size):
        users = np.arange(start, min(start + chunk_size, n_users), dtype=np.int32)
        n_real = len(users)
        padded = np.zeros(chunk_size, dtype=np.int32)
        padded[:n_real] = users
        where = None
        if train is not None:
            where = np.ones((chunk_size, n_items), dtype=bool)
            row, col = _rows_of(train_indptr, train_items, users)
            where[row, col] = False
        scores = jnp.asarray(score_users_fn(jnp.asarray(padded)))
        if scores.shape != (chunk_size, n_items):
            raise ValueError(
                f"score_users_fn(user_ids) returned shape {scores.shape}, expected "
                f"{(chunk_size, n_items)}"
            )
        relevance, expected = truth.rows(jnp.asarray(padded))
        order = pessimistic_order(scores, relevance, where) if sorts_on_host(scores) else None
        values = jax.device_get(
            truth_chunk_metrics(scores, relevance, expected, where, threshold, ks=ks,
                                order=order)
        )
        real = np.arange(chunk_size) < n_real
        per_user.setdefault("squared_error", []).append(values["squared_error"][real])
        evaluated = real & (values["n_rankable"] > 0)
        with_relevant = real & (values["n_relevant"] > 0)
        both = real & ~np.isnan(values["auc"])
        n_evaluated += int(evaluated.sum())
        n_no_relevant += int((evaluated & ~with_relevant).sum())
        per_user.setdefault("auc_per_user", []).append(values["auc"][both])
        for k in ks:
            per_user.setdefault(f"ndcg@{k}", []).append(values[f"ndcg@{k}"][evaluated])
            for name in ("recall", "precision"):
                per_user.setdefault(f"{name}@{k}", []).append(
                    values[f"{name}@{k}"][with_relevant]
                )
        # Global AUC: the rankable cells of the real rows, row-major (chunking-independent).
        cells = slice(None) if where is None else where[:n_real].reshape(-1)
        auc_scores.append(np.asarray(scores, np.float32)[:n_real].reshape(-1)[cells])
        auc_labels.append(values["labels"][:n_real].reshape(-1)[cells])

    out: dict[str, Any] = {}
    if rating_scale:
        # Per-user sums, added in float64 in user order: identical whatever the chunking.
        squared_error = np.concatenate(per_user["squared_error"]).astype(np.float64)
        out["truth_mse"] = float(squared_error.sum() / (n_users * n_items))
    out["truth_auc"] = rank_auc(
        np.concatenate(auc_scores) if auc_scores else np.zeros(0, np.float32),
        np.concatenate(auc_labels) if auc_labels else np.zeros(0, bool),
    )
    out["truth_auc_per_user"] = _mean(per_user.get("auc_per_user", []))
    for k in ks:
        for name in ("ndcg", "recall", "precision"):
            out[f"truth_{name}@{k}"] = _mean(per_user.get(f"{name}@{k}", []))
    out["truth_n_users"] = n_evaluated
    out["truth_n_users_no_relevant"] = n_no_relevant
    return out
