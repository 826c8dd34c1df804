"""Categorical side features shared by the RecBole and MovieLens readers.

A `token` field becomes one-hot columns `field=value`, a `token_seq` field multi-hot columns
over its tokens, aligned to the dataset's id maps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# A categorical side field is an identifier or free text (a zip code, a movie title), not a
# feature, when it has more distinct values than half its rows. Fields with few distinct
# values are always kept so that tiny files (three users, two genders) keep their features.
FREE_TEXT_UNIQUE_FRACTION = 0.5
ALWAYS_KEPT_DISTINCT_VALUES = 20
# A categorical side field with more distinct values (tokens, for token_seq) than this is
# skipped: one-hot columns for 100k brands or categories (Amazon item files) would take
# gigabytes and carry almost no signal per column. Skipped fields are listed in
# `meta["skipped_feature_fields"]`.
MAX_FEATURE_VOCABULARY = 1000


def is_free_text(values: np.ndarray) -> bool:
    """True when a field has too many distinct values to be a category (ids, titles)."""
    distinct = len(pd.unique(values))
    return distinct > max(FREE_TEXT_UNIQUE_FRACTION * len(values), ALWAYS_KEPT_DISTINCT_VALUES)


def explode(values: np.ndarray, sep: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of `[n_rows]` str values split on `sep` (None: whitespace), empty ones dropped.

    Returns:
        `[m]` row of each token and `[m]` tokens.
    """
    tokens = pd.Series(values, dtype=object).str.split(sep).explode()
    keep = (tokens.notna() & (tokens.astype(str).str.strip() != "")).to_numpy()
    return tokens.index.to_numpy()[keep], tokens.astype(str).str.strip().to_numpy(object)[keep]


def non_empty(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(rows, values)` of the non-empty values of a one-token-per-row field."""
    rows = np.flatnonzero(values != "")
    return rows, values[rows]


def multi_hot(
    field_name: str,
    rows: np.ndarray,
    tokens: np.ndarray,
    target_rows: np.ndarray,
    n_out: int,
    *,
    max_vocabulary: int | None = None,
) -> tuple[np.ndarray, list[str]] | None:
    """Multi-hot encodes one categorical field (one-hot when each row has one token).

    Args:
        field_name: prefix of the column names (`field=value`).
        rows: `[m]` side-file row of each token.
        tokens: `[m]` the tokens (str, non-empty).
        target_rows: `[n_rows]` output row of each side-file row, -1 to ignore it.
        n_out: rows of the output (users or items of the dataset).
        max_vocabulary: more distinct tokens than this gives None (the field is skipped).

    Returns:
        `[n_out, n_values]` float32 matrix and its column names (values in numeric order
        when all are integers, else text order), or None.
    """
    codes, uniques = pd.factorize(tokens)
    if max_vocabulary is not None and len(uniques) > max_vocabulary:
        return None
    uniques = np.asarray(uniques, dtype=object)
    order = np.array(_token_order(list(uniques)), dtype=np.int64)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    targets = target_rows[rows]
    present = targets >= 0
    matrix = np.zeros((n_out, len(uniques)), dtype=np.float32)
    matrix[targets[present], rank[codes[present]]] = 1.0
    return matrix, [f"{field_name}={token}" for token in uniques[order]]


def _token_order(tokens: list[str]) -> list[int]:
    """Order of tokens: numeric when all are integers (ages: 7 before 10), else text order."""
    if all(token.lstrip("-").isdigit() for token in tokens):
        return sorted(range(len(tokens)), key=lambda index: int(tokens[index]))
    return sorted(range(len(tokens)), key=tokens.__getitem__)


def rows_in_id_map(external_ids: np.ndarray, id_map: np.ndarray) -> np.ndarray:
    """`[n_rows]` index of each side-file id in the dataset's id map, -1 when absent."""
    external = np.asarray(external_ids)
    if external.dtype.kind != "O":
        external = external.astype(str).astype(object)
    return pd.Index(np.asarray(id_map, dtype=object)).get_indexer(external).astype(np.int64)


def stack_features(
    blocks: list[tuple[np.ndarray, list[str]]],
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """`[n, d]` float32 columns of the non-empty blocks side by side and their names."""
    blocks = [(matrix, names) for matrix, names in blocks if matrix.shape[1]]
    if not blocks:
        return None, None
    matrix = np.concatenate([matrix for matrix, _ in blocks], axis=1).astype(np.float32)
    return matrix, tuple(name for _, names in blocks for name in names)

