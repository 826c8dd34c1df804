"""One sequence per line, `user item item ...` (the S3-Rec / ICLRec / CL4SRec releases)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from causalrec_jax.data.dataset import Dataset, from_arrays
from causalrec_jax.data.formats.common import (
    PathLike,
    empty_file_error,
    existing_path,
    numbered_lines,
    reader_meta,
)
from causalrec_jax.errors import DataFormatError, DataWarning


def read_seq_lines(path: PathLike) -> Dataset:
    """Reads one sequence per line, `user item item ...` in time order (e.g. `Beauty.txt`).

    Implicit feedback; the timestamp of an interaction is its position in the line
    (0, 1, 2, ...), which keeps each user's order for leave-last-out splits but is no clock:
    `meta["timestamps_are_positions"]` is True, so that a global temporal cut is refused. An
    item repeated in a line is a real repeat event: `meta["default_dedupe"]` is "keep". A
    user on two lines is an error (their histories would interleave).

    Args:
        path: the file, or a folder holding exactly one `.txt` file.

    Returns:
        Dataset with one row per (user, item) occurrence.
    """
    file_path = _single_txt_file(existing_path(path))
    users, items, positions = [], [], []
    # the first line holding an integer item id and the first holding another one
    first_line = {True: None, False: None}
    line_of_user: dict[str, int] = {}
    for line_number, line in numbered_lines(file_path):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) == 1:
            raise DataFormatError(
                f"user {tokens[0]!r} has no items; expected 'user item item ...'",
                path=str(file_path),
                line=line_number,
            )
        user = tokens[0]
        if user in line_of_user:
            raise DataFormatError(
                f"user {user!r} already has a sequence on line {line_of_user[user]}; expected "
                "one line per user",
                path=str(file_path),
                line=line_number,
            )
        line_of_user[user] = line_number
        users.append(np.full(len(tokens) - 1, user, dtype=object))
        items.extend(tokens[1:])
        for token in tokens[1:]:
            kind = token.isdigit()
            if first_line[kind] is None:
                first_line[kind] = (line_number, token)
        positions.append(np.arange(len(tokens) - 1, dtype=np.float64))
    if not line_of_user:
        raise empty_file_error(file_path, "lines 'user item item ...'")
    _warn_mixed_ids(file_path, items, first_line)
    dataset = from_arrays(
        np.concatenate(users),
        np.array(items, dtype=object),
        None,
        np.concatenate(positions),
        meta={
            **reader_meta(file_path.stem, "seq_lines", path, None, len(items)),
            "timestamps_are_positions": True,
            "default_dedupe": "keep",
        },
    )
    return dataset


def _warn_mixed_ids(file_path: Path, items: list[str], first_line: dict) -> None:
    """Warns (`DataWarning`, naming the line) when a file of integer item ids holds another
    id, or the other way round: a corrupted line of a release, read silently otherwise."""
    if first_line[True] is None or first_line[False] is None:
        return
    n_integer = sum(token.isdigit() for token in items)
    majority_is_integer = n_integer * 2 >= len(items)
    line, token = first_line[not majority_is_integer]
    kind = "integer" if majority_is_integer else "non-integer"
    warnings.warn(DataWarning(
        f"{file_path}, line {line}: item {token!r} is not like the others ({n_integer:,} of "
        f"{len(items):,} item ids are integers, the majority {kind}); a corrupted line? It is "
        "read as an item of its own"), stacklevel=2)


def _single_txt_file(path: Path) -> Path:
    if path.is_file():
        return path
    candidates = sorted(path.glob("*.txt"))
    if len(candidates) != 1:
        found = ", ".join(candidate.name for candidate in candidates) or "none"
        raise DataFormatError(
            f"expected exactly one .txt file in this folder, found {found}", path=str(path)
        )
    return candidates[0]

