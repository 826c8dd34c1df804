"""Yahoo! R3 music ratings (Marlin & Zemel, RecSys 2009): MNAR train, MAR test."""

from __future__ import annotations

import numpy as np

from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN, Dataset, from_arrays
from causalrec_jax.data.formats.common import (
    PathLike,
    check_range,
    existing_path,
    positive_ids,
    read_number_rows,
    reader_meta,
    required_file,
)
from causalrec_jax.errors import DataFormatError

YAHOO_TRAIN_FILE = "ydata-ymusic-rating-study-v1_0-train.txt"
YAHOO_TEST_FILE = "ydata-ymusic-rating-study-v1_0-test.txt"


def read_yahoo_r3(path: PathLike) -> Dataset:
    """Reads Yahoo! R3 music ratings (Marlin & Zemel, RecSys 2009).

    Two files of whitespace-separated `user item rating` lines, ids starting at 1, ratings
    whole numbers 1..5: the train file holds ratings users chose to give (MNAR), the test file
    ratings of 10 songs drawn at random for each of the first 5,400 users (MAR).

    Args:
        path: the folder holding `YAHOO_TRAIN_FILE` and `YAHOO_TEST_FILE`, or one of these
            two files (the other is read from the same folder).

    Returns:
        Dataset with `given_split` GIVEN_TRAIN / GIVEN_TEST and
        `meta["mnar_train_mar_test"] = True`.
    """
    folder = existing_path(path)
    if folder.is_file():
        if folder.name not in (YAHOO_TRAIN_FILE, YAHOO_TEST_FILE):
            raise DataFormatError(
                f"expected the Yahoo! R3 folder or one of its files {YAHOO_TRAIN_FILE}, "
                f"{YAHOO_TEST_FILE}",
                path=str(folder),
            )
        folder = folder.parent
    parts = []
    for file_name, split_code in ((YAHOO_TRAIN_FILE, GIVEN_TRAIN), (YAHOO_TEST_FILE, GIVEN_TEST)):
        values, where = read_number_rows(
            required_file(folder, file_name), None, ("user id", "item id", "rating")
        )
        check_range(values[:, 2], where, "rating", 1.0, 5.0)
        fractional = np.flatnonzero(values[:, 2] != np.round(values[:, 2]))
        if fractional.size:
            raise where.error(
                int(fractional[0]),
                f"rating {values[fractional[0], 2]:g} is not a whole number 1..5",
            )
        parts.append(
            (
                positive_ids(values[:, 0], where, "user id"),
                positive_ids(values[:, 1], where, "item id"),
                values[:, 2],
                np.full(len(values), split_code),
            )
        )
    user, item, rating, given_split = (
        np.concatenate(values) for values in zip(*parts, strict=True)
    )
    return from_arrays(
        user,
        item,
        rating,
        given_split=given_split,
        meta={
            **reader_meta("yahoo_r3", "yahoo_r3", path, rating, len(rating)),
            "rating_scale": (1.0, 5.0),
            "mnar_train_mar_test": True,
        },
    )
