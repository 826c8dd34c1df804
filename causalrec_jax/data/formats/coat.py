"""The Coat shopping dataset (Schnabel et al., ICML 2016, "Recommendations as Treatments").

Rating matrices `train.ascii` (MNAR) and `test.ascii` (MAR), whitespace-separated, with
optional propensities and one-hot user / item features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN, Dataset, from_arrays
from causalrec_jax.data.formats.common import (
    PathLike,
    Where,
    empty_file_error,
    existing_path,
    numbered_lines,
    parse_numbers,
    reader_meta,
    required_file,
)
from causalrec_jax.errors import DataFormatError


def read_coat(path: PathLike) -> Dataset:
    """Reads the Coat shopping dataset (Schnabel et al., ICML 2016).

    `train.ascii` (MNAR, self-selected) and `test.ascii` (MAR, uniformly drawn) are
    `[n_users, n_items]` matrices of ratings 0..5, 0 meaning not rated. Users are rows and
    items columns, with external ids "1".."N" (1-based, as in the literature); the id maps
    hold every row and column. Optional: `propensities.ascii` (`[n_users, n_items]`) and,
    in `user_item_features/` (or the folder itself), `user_features.ascii` /
    `item_features.ascii` with column names in `*_features_map.txt` (one name a line).

    Args:
        path: the Coat folder.

    Returns:
        Dataset of the nonzero entries (train ones first, row-major), `given_split` GIVEN_TRAIN
        / GIVEN_TEST, `propensity_matrix` and features when their files exist,
        `meta["mnar_train_mar_test"] = True`.
    """
    folder = existing_path(path)
    train = _read_rating_matrix(required_file(folder, "train.ascii"))
    test_path = required_file(folder, "test.ascii")
    test = _read_rating_matrix(test_path)
    if train.shape != test.shape:
        raise DataFormatError(
            f"test matrix is {test.shape[0]} x {test.shape[1]} but train.ascii is "
            f"{train.shape[0]} x {train.shape[1]}; expected equal shapes",
            path=str(test_path),
        )
    n_users, n_items = train.shape
    train_user, train_item = np.nonzero(train)
    test_user, test_item = np.nonzero(test)
    user = np.concatenate([train_user, test_user]) + 1
    item = np.concatenate([train_item, test_item]) + 1
    rating = np.concatenate([train[train_user, train_item], test[test_user, test_item]])
    given_split = np.concatenate(
        [np.full(len(train_user), GIVEN_TRAIN), np.full(len(test_user), GIVEN_TEST)]
    )
    dataset = from_arrays(
        user,
        item,
        rating,
        given_split=given_split,
        user_ids=np.arange(1, n_users + 1),
        item_ids=np.arange(1, n_items + 1),
        meta={
            **reader_meta("coat", "coat", path, rating, len(rating)),
            "rating_scale": (1.0, 5.0),
            "mnar_train_mar_test": True,
        },
    )
    user_features, user_names = _coat_features(folder, "user", n_users)
    item_features, item_names = _coat_features(folder, "item", n_items)
    return dataset.replace(
        propensity_matrix=_coat_propensities(folder, train.shape),
        user_features=user_features,
        user_feature_names=user_names,
        item_features=item_features,
        item_feature_names=item_names,
    )


def _read_matrix(path: Path) -> np.ndarray:
    """A whitespace-separated matrix of numbers, `[n_rows, n_columns]` float64."""
    numbered = numbered_lines(path)
    # Trailing blank lines are an artefact of the writer; blank lines inside are missing rows.
    while numbered and not numbered[-1][1].strip():
        numbered.pop()
    if not numbered:
        raise empty_file_error(path, "a whitespace-separated matrix")
    split = [line.split() for _, line in numbered]
    width = len(split[0])
    for (line_number, _), cells in zip(numbered, split, strict=True):
        if not cells:
            raise DataFormatError(
                "blank line inside the matrix (a missing row)", path=str(path), line=line_number
            )
        if len(cells) != width:
            raise DataFormatError(
                f"row has {len(cells)} values, expected {width} (as on line 1)",
                path=str(path),
                line=line_number,
            )
    flat = np.array([cell for cells in split for cell in cells], dtype=object)
    line_numbers = np.repeat([number for number, _ in numbered], width)
    values = parse_numbers(flat, Where(str(path), line_numbers=line_numbers), "value")
    bad = np.flatnonzero(np.isnan(values))
    if bad.size:
        raise DataFormatError(
            f"value {flat[bad[0]]!r} is missing; expected a number",
            path=str(path),
            line=int(line_numbers[bad[0]]),
        )
    return values.reshape(len(split), width)


def _read_rating_matrix(path: Path) -> np.ndarray:
    """A Coat rating matrix: integers 0..5, 0 = not rated."""
    matrix = _read_matrix(path)
    bad = np.argwhere((matrix < 0) | (matrix > 5) | (matrix != np.round(matrix)))
    if len(bad):
        row, column = bad[0]
        raise DataFormatError(
            f"value {matrix[row, column]:g} in column {column + 1} is not a rating 0..5",
            # Matrix rows are the file's leading lines: only trailing blank lines are skipped.
            path=str(path),
            line=int(row) + 1,
        )
    return matrix.astype(np.float32)


def _coat_propensities(folder: Path, shape: tuple[int, int]) -> np.ndarray | None:
    path = folder / "propensities.ascii"
    if not path.is_file():
        return None
    matrix = _read_matrix(path)
    if matrix.shape != shape:
        raise DataFormatError(
            f"propensity matrix is {matrix.shape[0]} x {matrix.shape[1]}, expected "
            f"{shape[0]} x {shape[1]} as train.ascii",
            path=str(path),
        )
    bad = np.argwhere(~((matrix > 0) & (matrix <= 1)))
    if len(bad):
        row, column = bad[0]
        raise DataFormatError(
            f"propensity {matrix[row, column]:g} in column {column + 1} is not a probability "
            "in (0, 1]",
            # Matrix rows are the file's leading lines: only trailing blank lines are skipped.
            path=str(path),
            line=int(row) + 1,
        )
    return matrix.astype(np.float32)


def _coat_features(
    folder: Path, kind: str, n_rows: int
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """`[n_rows, d]` features of `{kind}_features.ascii` with names from the map file."""
    for base in (folder / "user_item_features", folder):
        path = base / f"{kind}_features.ascii"
        if path.is_file():
            break
    else:
        return None, None
    matrix = _read_matrix(path)
    if matrix.shape[0] != n_rows:
        raise DataFormatError(
            f"{matrix.shape[0]} rows, expected one per {kind} ({n_rows})", path=str(path)
        )
    map_path = base / f"{kind}_features_map.txt"
    names = tuple(f"feature_{column}" for column in range(matrix.shape[1]))
    if map_path.is_file():
        names = tuple(line.strip() for _, line in numbered_lines(map_path) if line.strip())
        if len(names) != matrix.shape[1]:
            raise DataFormatError(
                f"{len(names)} feature names, but {path.name} has {matrix.shape[1]} columns",
                path=str(map_path),
            )
    return matrix.astype(np.float32), names

