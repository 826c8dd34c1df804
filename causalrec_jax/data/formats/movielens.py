"""GroupLens MovieLens releases (Harper & Konstan, TiiS 2015): ML-100K, ML-1M/10M, ML-latest.

`u.data` (tab-separated, no header), `ratings.dat` (`::`) or `ratings.csv` (a header), with
genres and user attributes from the release's side files when present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from causalrec_jax.data.dataset import Dataset, from_arrays
from causalrec_jax.data.formats.common import (
    PathLike,
    existing_path,
    expect_header,
    parse_numbers,
    positive_ids,
    read_number_rows,
    reader_meta,
    row_field,
    split_lines,
)
from causalrec_jax.data.formats.features import (
    explode,
    multi_hot,
    non_empty,
    rows_in_id_map,
    stack_features,
)
from causalrec_jax.data.formats.text import header_cells, load_bytes, read_fields
from causalrec_jax.errors import DataFormatError

# The 19 genres of MovieLens 100K, in the column order of `u.item` (used without `u.genre`).
MOVIELENS_100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def read_movielens(path: PathLike) -> Dataset:
    """Reads a GroupLens MovieLens release, picking the ratings file by its name.

    `u.data` (ML-100K: tab-separated `user item rating timestamp`), `ratings.dat`
    (ML-1M / 10M: `user::item::rating::timestamp`) or `ratings.csv` (ML-latest / 20M / 25M:
    header `userId,movieId,rating,timestamp`). Ids must be positive integers. The rating scale
    is 1..5 whole stars for `u.data` and 0.5..5 in half stars for `ratings.dat` (ML-10M has
    half stars; ML-1M's whole stars lie inside that scale) and `ratings.csv`. When the folder
    also holds them, item genres become multi-hot `item_features` (`u.item` with `u.genre`,
    `movies.dat`, `movies.csv`) and user gender, age and occupation one-hot `user_features`
    (`u.user`, `users.dat`).

    Args:
        path: the release folder or the ratings file.

    Returns:
        Dataset with ratings and Unix-second timestamps.
    """
    ratings_path = _movielens_ratings_file(existing_path(path))
    name = ratings_path.name
    if name == "ratings.csv":
        expect_header(ratings_path, "userId,movieId,rating,timestamp", ",")
    separator = {"ratings.csv": ",", "u.data": "\t"}.get(name, "::")
    values, where = read_number_rows(
        ratings_path,
        separator,
        ("user id", "item id", "rating", "timestamp"),
        skip_lines=1 if name == "ratings.csv" else 0,
    )
    user = positive_ids(values[:, 0], where, "user id")
    item = positive_ids(values[:, 1], where, "item id")
    rating, timestamp = values[:, 2], values[:, 3]
    scale = (1.0, 5.0) if name == "u.data" else (0.5, 5.0)
    dataset = from_arrays(
        user,
        item,
        rating,
        timestamp,
        meta={
            **reader_meta(ratings_path.parent.name, "movielens", path, rating, len(rating)),
            "rating_scale": scale,
        },
    )
    folder = ratings_path.parent
    item_features, item_names = _movielens_item_features(folder, dataset.item_ids)
    user_features, user_names = _movielens_user_features(folder, dataset.user_ids)
    return dataset.replace(
        user_features=user_features,
        user_feature_names=user_names,
        item_features=item_features,
        item_feature_names=item_names,
    )


_MOVIELENS_RATING_FILES = ("u.data", "ratings.dat", "ratings.csv")


def _movielens_ratings_file(path: Path) -> Path:
    if path.is_file():
        if path.name not in _MOVIELENS_RATING_FILES:
            raise DataFormatError(
                "unknown MovieLens file name; expected one of "
                f"{', '.join(_MOVIELENS_RATING_FILES)}",
                path=str(path),
            )
        return path
    for name in _MOVIELENS_RATING_FILES:
        if (path / name).is_file():
            return path / name
    raise DataFormatError(
        f"expected a MovieLens ratings file ({', '.join(_MOVIELENS_RATING_FILES)}) in this folder",
        path=str(path),
    )


def _movielens_item_features(
    folder: Path, item_ids: np.ndarray
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """Multi-hot genres from `u.item`, `movies.dat` or `movies.csv`, when one exists."""
    if (folder / "u.item").is_file():
        genres = _movielens_100k_genre_names(folder)
        rows = split_lines(folder / "u.item", "|", n_fields=5 + len(genres))
        flags = parse_numbers(rows.fields[:, 5:].ravel(), rows.where, "genre flag")
        flags = flags.reshape(len(rows), len(genres))
        token_rows, genre_index = np.nonzero(flags == 1)
        tokens = np.asarray(genres, dtype=object)[genre_index]
        item_column = row_field(rows, 0)
    elif (folder / "movies.dat").is_file():
        rows = split_lines(folder / "movies.dat", "::", n_fields=3)
        item_column = row_field(rows, 0)
        token_rows, tokens = explode(row_field(rows, 2), "|")
    elif (folder / "movies.csv").is_file():
        path = folder / "movies.csv"
        blob = load_bytes(path)
        header = [cell.strip() for cell in header_cells(blob, ",", "movieId,title,genres")]
        if "movieId" not in header or "genres" not in header:
            raise DataFormatError(
                "expected the header movieId,title,genres", path=str(path), line=1
            )
        item_index, genre_index = header.index("movieId"), header.index("genres")
        fields, _ = read_fields(
            blob, ",", len(header), {item_index: "text", genre_index: "text"}, quoting=True
        )
        item_column = fields[item_index]
        token_rows, tokens = explode(fields[genre_index], "|")
    else:
        return None, None
    listed = tokens != "(no genres listed)"
    return stack_features(
        [
            multi_hot(
                "genre",
                token_rows[listed],
                tokens[listed],
                rows_in_id_map(item_column, item_ids),
                len(item_ids),
            )
        ]
    )


def _movielens_100k_genre_names(folder: Path) -> tuple[str, ...]:
    """Genre names in `u.item` column order, from `u.genre` (`name|index`) when present."""
    genre_path = folder / "u.genre"
    if not genre_path.is_file():
        return MOVIELENS_100K_GENRES
    rows = split_lines(genre_path, "|", n_fields=2)
    order = parse_numbers(row_field(rows, 1), rows.where, "genre index").astype(np.int64)
    names = row_field(rows, 0)
    return tuple(names[np.argsort(order)])


def _movielens_user_features(
    folder: Path, user_ids: np.ndarray
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """One-hot gender, age and occupation from `u.user` or `users.dat`, when one exists."""
    if (folder / "u.user").is_file():
        rows = split_lines(folder / "u.user", "|", n_fields=5)
        fields = {"age": 1, "gender": 2, "occupation": 3}
    elif (folder / "users.dat").is_file():
        rows = split_lines(folder / "users.dat", "::", n_fields=5)
        fields = {"gender": 1, "age": 2, "occupation": 3}
    else:
        return None, None
    target_rows = rows_in_id_map(row_field(rows, 0), user_ids)
    blocks = [
        multi_hot(name, *non_empty(row_field(rows, index)), target_rows, len(user_ids))
        for name, index in fields.items()
    ]
    return stack_features(blocks)

