"""Serving every user of a run at once: top-K lists streamed to a parquet file.

`recommend_all(run, k, out=...)` gives each user of the run the list `runs.load.recommend`
gives that user — same items, same order, same scores, ties to the lower item index — in one
process, a chunk of users at a time:

1. the users are taken `chunk_users` at a time (the last chunk padded with a real user whose
   rows are dropped), so every chunk has one static shape and one program compiles;
2. each chunk is scored by the run's own `score_all_fn(seed_index)` (the program training
   evaluated with: ordinary and causal runs, LightGCN, MLP, NeuMF; a sequential run scores
   the item after each user's `next_history`), giving `[chunk_users, n_items]` on the device;
3. one compiled program (`_top_k_of_chunk`) masks what each user is known to have (every
   split's items, sent as the chunk's padded `(row, item)` pairs of a CSR table and scattered
   to -inf) unless `include_seen`, swaps in the training popularity for the users the fallback
   serves, counts the items left and takes `jax.lax.top_k`;
4. the `[chunk_users, k]` result is written as one parquet row group while the next chunk is
   already being scored (JAX dispatches asynchronously).

Memory is bounded by the chunk, never by the number of users: the device holds one
`[chunk_users, n_items]` float32 score block (`chunk_users` defaults to what fits
`SCORE_BUDGET` scores, at most `MAX_CHUNK_USERS`) and the host one `[chunk_users, k]` block
plus the run's own arrays (`data.npz`, and the CSR table of known items, as large as the
interactions). The catalogue is not split into item chunks (`eval.catalogue.chunked_top_k`
needs a model's user and item tables, which MLP, NeuMF, the causal methods' inference rules
and the sequential encoders do not factor into): scoring with `score_all_fn` is what makes
the lists identical to `recommend`'s. With `mesh`, a model with row tables (MF, MLP, NeuMF)
scores over its tables split by rows over the mesh's `model` devices: each device holds
`[chunk_users, n_items / model]` scores and its own top-K, and the shards' lists are merged
(`parallel.sharded_rows_top_k`), so a user's row over a catalogue larger than one device is
served too.

The file has the columns `user` (external id, string), `rank` (1..K, int32), `item`
(external id, string), `score` (float32; the training count for a fallback user) and
`fallback` (bool: served by popularity), in user order then rank; users with fewer than K
items left have fewer rows, users with none have none. It is written to a hidden temporary
file beside `out` and linked into place at the end: an existing `out` is refused, before any
work and again at the end, never overwritten.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from causalrec_jax.errors import RunError
from causalrec_jax.parallel import sharded_rows_top_k
from causalrec_jax.tasks.ordinary import LoadedRun, seed_list

FALLBACKS = ("popularity",)
# The parts of a run's split whose items a user is known to have (`data.npz`).
KNOWN_PARTS = ("train", "valid", "test")
# The default chunk holds at most this many scores (float32: 128 MB on the device) ...
SCORE_BUDGET = 1 << 25
# ... and at most this many users (a single `recommend` scores a whole chunk too).
MAX_CHUNK_USERS = 256
COLUMNS = ("user", "rank", "item", "score", "fallback")


# ----------------------------------------------------------------------------- what a run knows


def known_items(run: LoadedRun, user: int) -> np.ndarray:
    """The item indices user `user` is known to have interacted with in any split of the
    run (`data.npz`: training, validation and test pairs), sorted, each once."""
    parts = [run.data[f"{part}_item"][run.data[f"{part}_user"] == user]
             for part in KNOWN_PARTS if f"{part}_user" in run.data]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def known_item_lists(run: LoadedRun, users: np.ndarray | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """`known_items` of every user at once, as a CSR table: `(indptr [n_users + 1] int64,
    items [n_known] int32)`, user `u`'s items being `items[indptr[u]:indptr[u + 1]]`.

    With `users` (internal ids), only their lists are filled (the others are empty): a few
    users then cost a pass over the pairs, not a sort of all of them.
    """
    n_users, n_items = len(run.user_ids), len(run.item_ids)
    parts = [part for part in KNOWN_PARTS if f"{part}_user" in run.data]
    owners = np.concatenate([run.data[f"{part}_user"] for part in parts] or [[]]).astype(np.int64)
    items = np.concatenate([run.data[f"{part}_item"] for part in parts] or [[]]).astype(np.int64)
    if users is not None:
        keep = np.isin(owners, users)
        owners, items = owners[keep], items[keep]
    pairs = np.unique(owners * n_items + items)
    indptr = np.searchsorted(pairs // n_items, np.arange(n_users + 1), side="left")
    return indptr.astype(np.int64), (pairs % n_items).astype(np.int32)


def represented_users(run: LoadedRun) -> np.ndarray:
    """`[n_users]` bool: whether the run learned something of each user, a training
    interaction, or for a sequential model a history to read (the others are cold)."""
    if "next_history" in run.data:
        return (run.data["next_history"] != 0).any(axis=1)
    return np.bincount(run.data["train_user"], minlength=len(run.user_ids)) > 0


def lookup_user(run: LoadedRun, user_id: str) -> tuple[int | None, str | None]:
    """`(index, cold)` of an external user id: its internal index (None when the run's data
    has no such user) and, for a user the run holds no learned representation of
    (`represented_users`), why, as a phrase (None for a served user)."""
    user_id = str(user_id)
    matches = np.flatnonzero(run.user_ids == user_id)
    if not len(matches):
        return None, (f"unknown user id {user_id!r}: the run's data has {len(run.user_ids)} "
                      f"users (e.g. {', '.join(map(str, run.user_ids[:3]))})")
    user = int(matches[0])
    if not represented_users(run)[user]:
        return user, (f"user {user_id!r} has no training interactions, so the run learned "
                      "nothing about them")
    return user, None


def served_seeds(run: LoadedRun) -> list[int]:
    """The seeds whose parameters the run's `model/` holds, in order (`seed_index` indexes
    them)."""
    return list(run.seeds) if run.seeds is not None else seed_list(run.config)


def check_seed_index(run: LoadedRun, seed_index: int) -> None:
    """Refuses a `seed_index` that names none of the run's seeds (indexing the stacked
    parameters would clamp it to the last seed silently)."""
    seeds = served_seeds(run)
    if not 0 <= seed_index < len(seeds):
        raise RunError(f"--seed-index {seed_index}: the run holds {len(seeds)} seed(s) "
                       f"({', '.join(map(str, seeds))}); expected 0 to {len(seeds) - 1}")


def _check_request(run: LoadedRun, k: int, seed_index: int, fallback: str | None) -> None:
    if k < 1:
        raise RunError(f"--k {k}: expected at least 1 item")
    if fallback is not None and fallback not in FALLBACKS:
        raise RunError(f"--fallback {fallback!r}: expected one of {', '.join(FALLBACKS)}")
    check_seed_index(run, seed_index)


# ----------------------------------------------------------------------------- ranking chunks


@dataclasses.dataclass(frozen=True)
class ServeSummary:
    """What `recommend_all` wrote.

    Attributes:
        path: the parquet file.
        users: users with at least one row.
        rows: rows written.
        fallback_users: users served by popularity (`fallback="popularity"`).
        skipped_users: users the run learned nothing about, left out (no fallback asked).
        short_users: users with fewer than K rows (fewer items left), at least one.
        empty_users: users with nothing left to recommend (every item known), no rows.
        seconds: wall-clock time of the whole call.
        first_chunk_seconds: the first chunk alone (scored, ranked and written; includes
            compiling the programs when they were not compiled yet).
        chunks: chunks of `chunk_users` users.
        chunk_users: users per chunk.
        seed: the seed whose parameters served.
    """

    path: Path
    users: int
    rows: int
    fallback_users: int
    skipped_users: int
    short_users: int
    empty_users: int
    seconds: float
    first_chunk_seconds: float
    chunks: int
    chunk_users: int
    seed: int


def default_chunk_users(n_items: int) -> int:
    """Users per chunk: as many as keep `[chunk, n_items]` within `SCORE_BUDGET` scores,
    between 1 and `MAX_CHUNK_USERS`."""
    return int(min(MAX_CHUNK_USERS, max(1, SCORE_BUDGET // max(n_items, 1))))


def check_out(out: str | Path) -> Path:
    """`out` as a Path, refused when something exists there (a file, folder or link)."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise RunError(f"--out {out} exists: refusing to overwrite it; give a new path")
    return out


@functools.partial(jax.jit, static_argnames=("k", "mesh", "n_items"))
def _top_k_of_chunk(scores, popularity, use_popularity, exclude_rows, exclude_items, *, k,
                    mesh=None, n_items=None):
    """Top-`k` of one chunk of score rows, after exclusions.

    Args:
        scores: `[b, n_items]` the model's scores.
        popularity: `[n_items]` training counts, the scores of fallback rows.
        use_popularity: `[b]` bool, rows served by popularity.
        exclude_rows, exclude_items: `[m]` int32 `(row, item)` pairs to mask (-inf); padding
            has row `b` (out of bounds, dropped). None: nothing is masked.
        k: list length (static), at most n_items.
        mesh: None, or the mesh whose `model` axis splits the items of `scores` (padded past
            the catalogue: `popularity` is -inf there): each shard's top-`k`, merged
            (`parallel.sharded_rows_top_k`).
        n_items: the catalogue's size: columns past it (a sharded table's padding) are never
            served.

    Returns:
        `(top_scores [b, k] float32, top_items [b, k] int32, n_left [b] int32)`: best first,
        ties to the lower item index (-0.0 ties +0.0, as in `recommend`); `n_left` counts the
        finite scores left, so a row's list is its first `min(k, n_left)` entries.
    """
    scores = jnp.where(use_popularity[:, None], popularity[None, :], scores.astype(jnp.float32))
    if n_items is not None and n_items < scores.shape[1]:
        scores = jnp.where(jnp.arange(scores.shape[1]) < n_items, scores, -jnp.inf)
    scores = jnp.where(scores == 0, jnp.zeros_like(scores), scores)
    if exclude_rows is not None:
        scores = scores.at[exclude_rows, exclude_items].set(-jnp.inf, mode="drop")
    n_left = jnp.sum(jnp.isfinite(scores), axis=1, dtype=jnp.int32)
    # NaN ranks with the masked items (never served: not counted in n_left).
    scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    if mesh is None:
        top_scores, top_items = jax.lax.top_k(scores, k)
    else:
        top_scores, top_items = sharded_rows_top_k(scores, k, mesh)
    return top_scores, top_items.astype(jnp.int32), n_left


def _chunk_pairs(indptr: np.ndarray, items: np.ndarray, users: np.ndarray, capacity: int,
                 pad_row: int) -> tuple[np.ndarray, np.ndarray]:
    """The `(row, item)` pairs of the known items of `users` (row = position in the chunk),
    padded to `capacity` with row `pad_row`: `([capacity], [capacity])` int32."""
    starts, counts = indptr[users], indptr[users + 1] - indptr[users]
    total = int(counts.sum())
    rows = np.full(capacity, pad_row, np.int32)
    columns = np.zeros(capacity, np.int32)
    rows[:total] = np.repeat(np.arange(len(users), dtype=np.int32), counts)
    offsets = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    columns[:total] = items[np.arange(total) + offsets]
    return rows, columns


def _capacity(counts: np.ndarray, chunk_users: int) -> int:
    """The static number of exclusion pairs per chunk: the largest chunk's total, rounded up
    to a power of two (a similar run then reuses the compiled program)."""
    if not len(counts):
        return 1
    sums = np.add.reduceat(counts, np.arange(0, len(counts), chunk_users))
    return 1 << max(0, int(sums.max()) - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class _Chunk:
    users: np.ndarray  # [n] internal ids served (n <= chunk_users)
    fallback: np.ndarray  # [n] bool
    outputs: tuple  # device arrays of _top_k_of_chunk


def serve_chunks(run: LoadedRun, k: int, *, users: np.ndarray | None = None,
                 seed_index: int = 0, include_seen: bool = False, fallback: str | None = None,
                 chunk_users: int | None = None, counts: dict[str, int] | None = None,
                 mesh: Mesh | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Each chunk's rows as numpy columns (`COLUMNS`), users in the order given.

    Args:
        run, k, seed_index, include_seen, fallback, chunk_users: as for `recommend_all`
            (checked here, before the first chunk).
        users: internal user ids to serve; None: every user of the run. Cold ones (see
            `represented_users`) are skipped unless `fallback`.
        counts: when given, filled with `users`, `rows`, `fallback_users`, `skipped_users`,
            `short_users`, `empty_users`, `chunks`, `chunk_users` as the chunks go.
        mesh: None (one device), or a mesh whose `model` axis splits the item table and the
            scores by item (`LoadedRun.sharded_score_fn`): each shard keeps its top-`k` and
            the lists are merged, so no device holds a user's scores over the catalogue.

    Returns:
        An iterator of `{column: [rows] array}`, one per chunk of `chunk_users` users.
    """
    k = int(k)
    _check_request(run, k, seed_index, fallback)
    n_items = len(run.item_ids)
    chunk_users = default_chunk_users(n_items) if chunk_users is None else int(chunk_users)
    if chunk_users < 1:
        raise RunError(f"chunk_users {chunk_users}: expected at least 1")
    represented = represented_users(run)
    asked = (np.arange(len(represented)) if users is None
             else np.asarray(users, np.int64).reshape(-1))
    served = asked if fallback else asked[represented[asked]]
    counts = {} if counts is None else counts
    counts.update(users=0, rows=0, fallback_users=0, short_users=0, empty_users=0,
                  skipped_users=len(asked) - len(served),
                  chunks=-(-len(served) // chunk_users), chunk_users=chunk_users)
    if not len(served):
        return iter(())
    if not include_seen:
        indptr, known = known_item_lists(run, None if users is None else served)
        capacity = _capacity(indptr[served + 1] - indptr[served], chunk_users)
    popularity = np.asarray(run.data["item_counts"], np.float32)
    list_length = min(k, n_items)
    if mesh is None:
        score_fn = run.score_all_fn(seed_index)
    else:
        score_fn, n_padded = run.sharded_score_fn(seed_index, mesh)
        if list_length > n_padded // mesh.shape["model"]:
            raise RunError(f"--k {k}: more than one shard's {n_padded // mesh.shape['model']} "
                           f"items on a mesh of {mesh.shape['model']} model shards")
        popularity = np.concatenate([popularity, np.full(n_padded - n_items, -np.inf,
                                                         np.float32)])
    popularity = jnp.asarray(popularity)

    def dispatch(start: int) -> _Chunk:
        users = served[start:start + chunk_users]
        padded = np.full(chunk_users, users[0], np.int32)
        padded[:len(users)] = users
        cold = np.zeros(chunk_users, bool)
        cold[:len(users)] = ~represented[users]
        rows = items = None
        if not include_seen:
            rows, items = _chunk_pairs(indptr, known, padded[:len(users)], capacity,
                                       chunk_users)
        outputs = _top_k_of_chunk(score_fn(jnp.asarray(padded)), popularity,
                                  jnp.asarray(cold), rows, items, k=list_length, mesh=mesh,
                                  n_items=n_items)
        return _Chunk(users=users, fallback=cold[:len(users)], outputs=outputs)

    def collect(chunk: _Chunk) -> dict[str, np.ndarray]:
        n = len(chunk.users)
        top_scores, top_items, n_left = (np.asarray(value)[:n] for value in chunk.outputs)
        lengths = np.minimum(n_left, k)
        keep = np.arange(list_length)[None, :] < lengths[:, None]
        counts["users"] += int((lengths > 0).sum())
        counts["rows"] += int(lengths.sum())
        counts["fallback_users"] += int((chunk.fallback & (lengths > 0)).sum())
        counts["short_users"] += int(((lengths > 0) & (lengths < k)).sum())
        counts["empty_users"] += int((lengths == 0).sum())
        return {
            "user": np.repeat(run.user_ids[chunk.users], lengths),
            "rank": np.broadcast_to(np.arange(1, list_length + 1, dtype=np.int32),
                                    keep.shape)[keep],
            "item": run.item_ids[top_items[keep]],
            "score": top_scores[keep].astype(np.float32),
            "fallback": np.repeat(chunk.fallback, lengths),
        }

    def chunks() -> Iterator[dict[str, np.ndarray]]:
        pending = dispatch(0)
        for start in range(chunk_users, len(served), chunk_users):
            # The next chunk is dispatched before this one is read back: the device scores
            # it while the host converts and writes.
            following = dispatch(start)
            yield collect(pending)
            pending = following
        yield collect(pending)

    return chunks()


def recommend(run: LoadedRun, user_id: str, k: int = 10, seed_index: int = 0, *,
              include_seen: bool = False, fallback: str | None = None) -> list[tuple]:
    """Top-`k` `(item_id, score)` for an external user id.

    Everything the user is known to have interacted with — the training, validation and test
    items of the run's split — is excluded unless `include_seen`. Scores come from the seed at
    `seed_index` (the run's first seed by default); ties go to the lower item index. The user
    is scored in a chunk of `recommend_all`'s default size (`serve_chunks`), so the list is
    the one `recommend_all` writes for them, to the last bit of each score.

    A user the run holds no learned representation of (an id not in its data, or a user with
    no training interactions; for a sequential model, no history at all) is refused, unless
    `fallback = "popularity"`: then the items are ranked by their training counts (the score
    is the count), never by an untrained embedding.

    Raises:
        RunError: `k` < 1, an unknown or cold user without a fallback, an unknown fallback
            or seed index, or a user with nothing left to recommend.
    """
    user_id = str(user_id)
    _check_request(run, k, seed_index, fallback)
    user, cold = lookup_user(run, user_id)
    if fallback is None and cold:
        raise RunError(f"{cold}; pass --fallback popularity to serve the most popular "
                       "items instead")
    if user is None:  # unknown: the whole catalogue by training counts, nothing to exclude
        counts = run.data["item_counts"].astype(np.float32)
        top = np.argsort(-counts, kind="stable")[:k]
        return [(str(run.item_ids[i]), float(counts[i])) for i in top]
    rows = next(serve_chunks(run, k, users=np.asarray([user]), seed_index=seed_index,
                             include_seen=include_seen, fallback=fallback))
    if not len(rows["item"]):
        raise RunError(
            f"user {user_id!r} has interacted with all {len(run.item_ids)} items of the run: "
            "nothing is left to recommend (--include-seen ranks them all)")
    return [(str(item), float(score)) for item, score in zip(rows["item"], rows["score"],
                                                             strict=True)]


def recommend_all(run: LoadedRun, k: int = 10, *, out: str | Path, seed_index: int = 0,
                  include_seen: bool = False, fallback: str | None = None,
                  chunk_users: int | None = None, mesh: Mesh | None = None) -> ServeSummary:
    """Writes the top-`k` list of every user of `run` to the parquet file `out`.

    Each user's rows are exactly `runs.load.recommend(run, user, k, seed_index,
    include_seen=..., fallback=...)`: every split's items excluded unless `include_seen`,
    ties to the lower item index; to the last bit of each score at the default
    `chunk_users` (the shape `recommend` scores in: a matmul of another shape may round
    differently on some backends, e.g. one of a single row on the CPU). Users the run learned
    nothing about (no training interactions; for a sequential run, no history) are skipped
    and counted, or with `fallback="popularity"` ranked by training counts (`fallback`
    column True). A user with fewer than `k` items left gets fewer rows, one with none gets
    none (both counted).

    Args:
        run: from `runs.load.load_run`.
        k: list length.
        out: the parquet file to write; refused when it exists.
        seed_index: which of the run's seeds serves (0: the first).
        include_seen: rank the items users already have too.
        fallback: None or "popularity".
        chunk_users: users scored per chunk (None: `default_chunk_users`).
        mesh: score over the item table split by rows over the mesh's `model` axis, each
            shard's top-`k` merged (`serve_chunks`); None: one device.

    Returns:
        A `ServeSummary`.

    Raises:
        RunError: `out` exists, `k` < 1, an unknown fallback or seed index.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    tic = time.perf_counter()
    out = check_out(out)
    counts: dict[str, int] = {}
    chunks = serve_chunks(run, k, seed_index=seed_index, include_seen=include_seen,
                          fallback=fallback, chunk_users=chunk_users, counts=counts, mesh=mesh)
    seed = served_seeds(run)[seed_index]
    schema = pa.schema([("user", pa.string()), ("rank", pa.int32()), ("item", pa.string()),
                        ("score", pa.float32()), ("fallback", pa.bool_())],
                       metadata={"causalrec": json.dumps({
                           "k": int(k), "seed": int(seed), "include_seen": include_seen,
                           "fallback": fallback,
                           "excluded": "nothing" if include_seen
                           else "every item of the user's training, validation and test pairs",
                       })})
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{uuid.uuid4().hex}.partial")
    first_chunk_seconds = 0.0
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            for index, columns in enumerate(chunks):
                writer.write_table(pa.table({name: columns[name] for name in COLUMNS},
                                            schema=schema))
                if index == 0:
                    first_chunk_seconds = time.perf_counter() - tic
        _link_into_place(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return ServeSummary(
        path=out, users=counts["users"], rows=counts["rows"],
        fallback_users=counts["fallback_users"], skipped_users=counts["skipped_users"],
        short_users=counts["short_users"], empty_users=counts["empty_users"],
        seconds=time.perf_counter() - tic, first_chunk_seconds=first_chunk_seconds,
        chunks=counts["chunks"], chunk_users=counts["chunk_users"], seed=int(seed))


def _link_into_place(partial: Path, out: Path) -> None:
    """Gives the finished `partial` file the name `out`, never replacing a file that appeared
    there meanwhile (a hard link fails on an existing name; where the file system has no
    hard links, a check then a rename)."""
    try:
        os.link(partial, out)
    except FileExistsError:
        raise RunError(f"--out {out} appeared while serving: refusing to overwrite it; the "
                       "recommendations were not written") from None
    except OSError:
        check_out(out)
        partial.rename(out)
