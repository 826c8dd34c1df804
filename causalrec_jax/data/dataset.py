"""The one in-memory type every reader returns: interactions as numpy arrays plus id maps.

A `Dataset` is immutable. Internal ids are dense integers (`0..n_users-1`, `0..n_items-1`);
`user_ids[u]` / `item_ids[i]` give the dataset's own (external) id as a string. Splits share
the id maps of the dataset they were cut from, so a model trained on one split scores the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from causalrec_jax.errors import DataFormatError

# Codes of `Dataset.given_split`: which released file an interaction came from.
GIVEN_TRAIN = 0
GIVEN_VALID = 1
GIVEN_TEST = 2


@dataclass(frozen=True, eq=False)
class Dataset:
    """Interactions with id maps, optional features and metadata.

    Attributes:
        user: `[n]` int32 internal user ids.
        item: `[n]` int32 internal item ids.
        rating: `[n]` float32 rating, or label (1.0 for implicit feedback); may hold NaN
            before cleaning.
        timestamp: `[n]` float64 time of each interaction, or None when the format has none.
        user_ids: `[n_users]` external user ids (str); `user_ids[u]` is the id of user `u`.
        item_ids: `[n_items]` external item ids (str).
        given_split: `[n]` int8 codes (`GIVEN_TRAIN`, `GIVEN_VALID`, `GIVEN_TEST`) when the
            release fixes the split (Coat, Yahoo! R3, the simulator's MAR test), else None.
        user_features: `[n_users, d_user]` float32, or None.
        item_features: `[n_items, d_item]` float32, or None.
        user_feature_names: names of the user feature columns.
        item_feature_names: names of the item feature columns.
        propensity_matrix: `[n_users, n_items]` float32 P(observed) as released (Coat), or None.
        meta: free-form facts: `name`, `format`, `path`, `implicit`, `rating_scale`, and the
            cleaning report (`cleaning`: counts of duplicates, invalid rows, k-core removals).
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamp: np.ndarray | None = None
    given_split: np.ndarray | None = None
    user_features: np.ndarray | None = None
    item_features: np.ndarray | None = None
    user_feature_names: tuple[str, ...] | None = None
    item_feature_names: tuple[str, ...] | None = None
    propensity_matrix: np.ndarray | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("item", "rating", "timestamp", "given_split"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise DataFormatError(
                    f"Dataset field {name!r} has {len(values)} rows, expected {n} (as 'user')"
                )
        if n:
            if self.user.min() < 0 or self.user.max() >= len(self.user_ids):
                raise DataFormatError("Dataset field 'user' holds ids outside 0..n_users-1")
            if self.item.min() < 0 or self.item.max() >= len(self.item_ids):
                raise DataFormatError("Dataset field 'item' holds ids outside 0..n_items-1")
        if self.user_features is not None and len(self.user_features) != len(self.user_ids):
            raise DataFormatError(
                f"user_features has {len(self.user_features)} rows, expected n_users="
                f"{len(self.user_ids)}"
            )
        if self.item_features is not None and len(self.item_features) != len(self.item_ids):
            raise DataFormatError(
                f"item_features has {len(self.item_features)} rows, expected n_items="
                f"{len(self.item_ids)}"
            )

    @property
    def n_users(self) -> int:
        """Number of users in the id map (including users with no interaction here)."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Number of items in the id map."""
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        """Number of interaction rows."""
        return len(self.user)

    def __repr__(self) -> str:
        """A summary (sizes, what it carries, where it came from), never every id."""
        parts = [f"{self.n_interactions:,} interactions", f"{self.n_users:,} users",
                 f"{self.n_items:,} items"]
        if self.meta.get("implicit"):
            parts.append("implicit")
        elif len(self.rating):
            finite = self.rating[np.isfinite(self.rating)]
            if finite.size:
                parts.append(f"ratings {finite.min():g}..{finite.max():g}")
        carried = [name for name in ("timestamp", "given_split", "user_features",
                                     "item_features", "propensity_matrix")
                   if getattr(self, name) is not None]
        if carried:
            parts.append("with " + ", ".join(carried))
        origin = ", ".join(f"{key}={self.meta[key]!r}" for key in ("name", "format")
                           if key in self.meta)
        return f"Dataset({', '.join(parts)}{'; ' + origin if origin else ''})"

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, index: np.ndarray) -> Dataset:
        """Rows selected by a boolean mask or an index array; id maps and features kept."""
        index = np.asarray(index)

        def take(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[index]

        return dataclasses.replace(
            self,
            user=self.user[index],
            item=self.item[index],
            rating=self.rating[index],
            timestamp=take(self.timestamp),
            given_split=take(self.given_split),
        )

    def replace(self, **changes: Any) -> Dataset:
        """A copy with some fields changed (a frozen dataclass cannot be mutated)."""
        return dataclasses.replace(self, **changes)

    def with_meta(self, **entries: Any) -> Dataset:
        """A copy whose `meta` has extra entries."""
        return dataclasses.replace(self, meta={**self.meta, **entries})

    def to_frame(self):
        """The interactions as a pandas DataFrame with external ids (for inspection)."""
        frame = pd.DataFrame(
            {
                "user_id": self.user_ids[self.user],
                "item_id": self.item_ids[self.item],
                "rating": self.rating,
            }
        )
        if self.timestamp is not None:
            frame["timestamp"] = self.timestamp
        return frame

    def user_index(self, external_id: str) -> int:
        """Internal id of an external user id; `KeyError` naming the id when unknown."""
        return _lookup(self.user_ids, external_id, "user")

    def item_index(self, external_id: str) -> int:
        """Internal id of an external item id; `KeyError` naming the id when unknown."""
        return _lookup(self.item_ids, external_id, "item")

    def interaction_matrix(self, dtype=np.float32) -> np.ndarray:
        """Dense `[n_users, n_items]` matrix of ratings (0 where nothing is observed)."""
        matrix = np.zeros((self.n_users, self.n_items), dtype=dtype)
        matrix[self.user, self.item] = self.rating
        return matrix


def _lookup(ids: np.ndarray, external_id: str, kind: str) -> int:
    matches = np.flatnonzero(ids == str(external_id))
    if len(matches) == 0:
        raise KeyError(f"unknown {kind} id {external_id!r} (the dataset has {len(ids)} {kind}s)")
    return int(matches[0])


@dataclass(frozen=True, eq=False)
class Split:
    """Train, validation and test parts of one dataset, sharing its id maps.

    `valid` may be None when a protocol has no validation part. `extra` holds named parts a
    protocol adds, e.g. `mar_train` (an unbiased slice carved from the MAR test).
    `valid_in_test`: the validation rows are also test rows (the MAR protocol whose test is not
    reduced, `data.mar_test = "all"`), so they are not masked when the test is ranked.
    """

    train: Dataset
    valid: Dataset | None
    test: Dataset
    extra: Mapping[str, Dataset] = field(default_factory=dict)
    valid_in_test: bool = False

    def seen_before_test(self) -> Dataset:
        """What a user has before the test: the training part and, unless its rows are test
        rows too (`valid_in_test`), the validation part; full ranking masks these items."""
        if self.valid is None or self.valid_in_test:
            return self.train
        return concatenate([self.train, self.valid])

    def parts(self) -> dict[str, Dataset]:
        """All non-empty parts by name."""
        named = {"train": self.train, "valid": self.valid, "test": self.test, **self.extra}
        return {name: part for name, part in named.items() if part is not None}


def concatenate(parts: Sequence[Dataset]) -> Dataset:
    """Rows of several datasets sharing id maps (e.g. train and validation), in order.

    Fields absent from any part (timestamps, split codes) are dropped from the result; the
    first part's features, propensities and metadata are kept.
    """
    parts = [part for part in parts if part is not None]
    if not parts:
        raise ValueError("concatenate needs at least one dataset")
    first = parts[0]
    for part in parts[1:]:
        if not (
            np.array_equal(part.user_ids, first.user_ids)
            and np.array_equal(part.item_ids, first.item_ids)
        ):
            raise ValueError("concatenate needs datasets with the same user and item id maps")

    def joined(name: str) -> np.ndarray | None:
        values = [getattr(part, name) for part in parts]
        return None if any(v is None for v in values) else np.concatenate(values)

    return dataclasses.replace(
        first,
        user=joined("user"),
        item=joined("item"),
        rating=joined("rating"),
        timestamp=joined("timestamp"),
        given_split=joined("given_split"),
    )


def from_arrays(
    user_external: np.ndarray,
    item_external: np.ndarray,
    rating: np.ndarray | None = None,
    timestamp: np.ndarray | None = None,
    *,
    given_split: np.ndarray | None = None,
    user_ids: np.ndarray | None = None,
    item_ids: np.ndarray | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Dataset:
    """Builds a Dataset from external ids, mapping them to dense internal ids.

    Args:
        user_external: `[n]` external user ids (any type; stored as str).
        item_external: `[n]` external item ids.
        rating: `[n]` ratings or labels; all ones (implicit feedback) when None.
        timestamp: `[n]` times, or None.
        given_split: `[n]` split codes, or None.
        user_ids: the full external user id list to use as the map (to keep users with no
            interaction, or a released order); by default the sorted unique ids, sorted
            numerically when all ids are integers.
        item_ids: as `user_ids`, for items.
        meta: metadata.
    """
    user, user_map = _encode(user_external, user_ids, "user")
    item, item_map = _encode(item_external, item_ids, "item")
    n = len(user)
    rating_arr = (
        np.ones(n, dtype=np.float32) if rating is None else np.asarray(rating, dtype=np.float32)
    )
    time_arr = None if timestamp is None else np.asarray(timestamp, dtype=np.float64)
    split_arr = None if given_split is None else np.asarray(given_split, dtype=np.int8)
    meta = dict(meta or {})
    meta.setdefault("implicit", rating is None)
    return Dataset(
        user=user,
        item=item,
        rating=rating_arr,
        timestamp=time_arr,
        given_split=split_arr,
        user_ids=user_map,
        item_ids=item_map,
        meta=meta,
    )


def _integral(values: np.ndarray) -> np.ndarray:
    """Float ids that are whole numbers (pandas reads them so beside NaN) as int64."""
    if values.dtype.kind == "f":
        as_int = values.astype(np.int64)
        if np.all(as_int == values):
            return as_int
    return values


def _as_str(values) -> np.ndarray:
    return _integral(np.asarray(values)).astype(str).astype(object)


def sorted_ids(uniques: np.ndarray) -> np.ndarray:
    """The order of distinct external ids that makes internal ids: numeric when every id is
    an integer (or a string of one), else lexical. `[n]` indices into `uniques`."""
    uniques = np.asarray(uniques)
    if uniques.dtype.kind in "iu":
        return np.argsort(uniques, kind="stable")
    try:
        return np.argsort(uniques.astype(str).astype(np.int64), kind="stable")
    except (ValueError, OverflowError):
        # Not all integers (or beyond int64): the lexical order.
        return np.argsort(uniques.astype(str), kind="stable")


def _encode(
    values, id_map: np.ndarray | None, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes of external ids and the id map (sorted, numerically when all are integers).

    Factorising the raw values first and stringifying only the unique ones keeps this
    vectorised: tens of millions of rows (MovieLens-20M) take seconds.
    """
    values = _integral(np.asarray(values))
    if id_map is None:
        codes, uniques = pd.factorize(values, sort=True)
        uniques = np.asarray(uniques)
        if uniques.dtype.kind not in "iu":
            uniques = uniques.astype(str)
            order = sorted_ids(uniques)
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            codes, uniques = rank[codes], uniques[order]
        return codes.astype(np.int32), uniques.astype(str).astype(object)
    id_map = _as_str(id_map)
    index = pd.Index(id_map)
    if not index.is_unique:
        raise DataFormatError(f"the {kind} id map holds duplicate ids")
    codes = index.get_indexer(values.astype(str))
    missing = np.flatnonzero(codes < 0)
    if len(missing):
        raise DataFormatError(
            f"{kind} id {str(values[missing[0]])!r} is not in the given {kind} id map"
        )
    return codes.astype(np.int32), id_map
