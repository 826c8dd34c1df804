"""RecBole atomic files (Zhao et al., CIKM 2021): `NAME.inter` with `NAME.user` / `NAME.item`.

A tab-separated file whose header holds typed `field:type` cells, read by the pyarrow
adapter of `text` (errors name the file and line).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN, GIVEN_VALID, Dataset, from_arrays
from causalrec_jax.data.formats.common import (
    PathLike,
    Where,
    empty_file_error,
    existing_path,
    parse_numbers,
    reader_meta,
)
from causalrec_jax.data.formats.features import (
    MAX_FEATURE_VOCABULARY,
    explode,
    is_free_text,
    multi_hot,
    non_empty,
    rows_in_id_map,
    stack_features,
)
from causalrec_jax.data.formats.text import load_bytes, read_fields
from causalrec_jax.errors import DataFormatError


def read_recbole(path: PathLike) -> Dataset:
    """Reads RecBole atomic files: `NAME.inter` and, when present, `NAME.user` / `NAME.item`.

    The header holds `field:type` cells (types `token`, `token_seq`, `float`, `float_seq`),
    tab-separated. Fields used: `user_id`, `item_id`, `rating` (else a float field whose name
    contains "rating" or "label"; none means implicit feedback) and `timestamp`.

    RecBole's pre-split benchmark files `NAME.train.inter`, `NAME.test.inter` (and
    `NAME.valid.inter`, optional) are read together, each row's file recorded in
    `given_split` (GIVEN_TRAIN / GIVEN_VALID / GIVEN_TEST); they are used when the folder has
    no plain `NAME.inter`, or when `path` is one of them. Their side files are still
    `NAME.user` / `NAME.item`.

    Side files become features aligned to the id maps (users or items the interactions do
    not mention are ignored; ids without a side row get zeros): `token` fields one-hot
    (`field=value`), `token_seq` fields multi-hot over their space-separated tokens, `float`
    fields as they are (empty = 0). Skipped, and listed in `meta["skipped_feature_fields"]`:
    a token or token_seq field with more distinct values than half its rows (and more than
    20), an identifier or free text (zip code, movie title); one with more than
    `MAX_FEATURE_VOCABULARY` distinct values (tokens); `float_seq` fields. An id on two rows
    of a side file is an error.

    Args:
        path: the folder holding `NAME.inter` (or the split files), or one `.inter` file.

    Returns:
        Dataset with `user_features` `[n_users, d_user]` and `item_features`
        `[n_items, d_item]` when side files with usable fields exist.
    """
    name, folder, files = _recbole_files(existing_path(path))
    parts = []
    first: tuple[Path, dict[str, str]] | None = None
    for inter_path, split_code in files:
        header, columns, where = _read_recbole_table(
            inter_path, ("user_id", "item_id"), _recbole_inter_fields, ("user_id", "item_id")
        )
        fields = dict(zip(header.names, header.types, strict=True))
        if first is None:
            first = (inter_path, fields)
        elif fields != first[1]:
            raise DataFormatError(
                f"header fields {_header_text(fields)} differ from those of {first[0].name} "
                f"({_header_text(first[1])})",
                path=str(inter_path),
                line=1,
            )
        n_rows = len(where.line_numbers)
        if not n_rows:
            raise DataFormatError("no interactions after the header", path=str(inter_path), line=2)
        rating_field = _recbole_rating_field(header)
        parts.append(
            {
                "user": _recbole_ids(columns["user_id"], where, "user_id"),
                "item": _recbole_ids(columns["item_id"], where, "item_id"),
                "rating": None
                if rating_field is None
                else parse_numbers(columns[rating_field], where, rating_field),
                "timestamp": None
                if "timestamp" not in columns
                else parse_numbers(columns["timestamp"], where, "timestamp"),
                "given_split": None
                if split_code is None
                else np.full(n_rows, split_code, dtype=np.int8),
            }
        )
    user = _concatenate_ids([part["user"] for part in parts])
    item = _concatenate_ids([part["item"] for part in parts])
    rating, timestamp, given_split = (
        None if parts[0][key] is None else np.concatenate([part[key] for part in parts])
        for key in ("rating", "timestamp", "given_split")
    )
    dataset = from_arrays(
        user,
        item,
        rating,
        timestamp,
        given_split=given_split,
        meta=reader_meta(name, "recbole", path, rating, len(user)),
    )
    skipped: list[str] = []
    user_features, user_names = _recbole_side_features(
        folder / f"{name}.user", "user_id", dataset.user_ids, skipped
    )
    item_features, item_names = _recbole_side_features(
        folder / f"{name}.item", "item_id", dataset.item_ids, skipped
    )
    return dataset.replace(
        user_features=user_features,
        user_feature_names=user_names,
        item_features=item_features,
        item_feature_names=item_names,
        meta={**dataset.meta, "skipped_feature_fields": skipped},
    )


_RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


@dataclass(frozen=True)
class _RecboleHeader:
    """Field names and types of a RecBole header line."""

    names: list[str]
    types: list[str]

    def index(self, name: str) -> int:
        return self.names.index(name)


# RecBole's benchmark files `NAME.PART.inter` and the split code of each part.
_RECBOLE_PARTS = (("train", GIVEN_TRAIN), ("valid", GIVEN_VALID), ("test", GIVEN_TEST))


def _recbole_part(file_name: str) -> tuple[str, str] | None:
    """`(NAME, part)` of a file `NAME.part.inter`, else None."""
    for part, _ in _RECBOLE_PARTS:
        suffix = f".{part}.inter"
        if file_name.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)], part
    return None


def _recbole_files(path: Path) -> tuple[str, Path, list[tuple[Path, int | None]]]:
    """`(NAME, folder, [(file, split code or None)])` of the interactions to read."""
    if path.is_file():
        part = _recbole_part(path.name)
        if part is None:
            name = path.name.removesuffix(".inter") if path.suffix == ".inter" else path.stem
            return name, path.parent, [(path, None)]
        return part[0], path.parent, _recbole_split_files(path.parent, part[0])
    if not path.is_dir():
        raise DataFormatError("no such file or folder", path=str(path))
    plain, split = set(), set()
    for candidate in path.glob("*.inter"):
        part = _recbole_part(candidate.name)
        if part is None:
            plain.add(candidate.name.removesuffix(".inter"))
        else:
            split.add(part[0])
    names = plain | split
    if path.name in names:
        name = path.name
    elif len(names) == 1:
        (name,) = names
    elif not names:
        raise DataFormatError(
            "expected a RecBole NAME.inter file (or NAME.train.inter, NAME.valid.inter, "
            "NAME.test.inter) in this folder",
            path=str(path),
        )
    else:
        raise DataFormatError(
            f"several RecBole datasets ({', '.join(sorted(names))}); pass one .inter file",
            path=str(path),
        )
    if name in plain:
        return name, path, [(path / f"{name}.inter", None)]
    return name, path, _recbole_split_files(path, name)


def _recbole_split_files(folder: Path, name: str) -> list[tuple[Path, int]]:
    """The benchmark files of NAME: train and test required, valid when present."""
    files = []
    for part, code in _RECBOLE_PARTS:
        file_path = folder / f"{name}.{part}.inter"
        if file_path.is_file():
            files.append((file_path, code))
        elif part != "valid":
            raise DataFormatError(
                f"RecBole benchmark files need {name}.train.inter and {name}.test.inter "
                f"({name}.valid.inter optional); {file_path.name} is missing",
                path=str(folder),
            )
    return files


def _recbole_inter_fields(header: _RecboleHeader) -> list[str]:
    fields = ["user_id", "item_id"]
    rating_field = _recbole_rating_field(header)
    if rating_field is not None:
        fields.append(rating_field)
    if "timestamp" in header.names:
        fields.append("timestamp")
    return fields


def _header_text(fields: Mapping[str, str]) -> str:
    return ", ".join(f"{name}:{type_name}" for name, type_name in fields.items())


def _parse_recbole_header(path: Path, line: str, required: Sequence[str]) -> _RecboleHeader:
    names, types = [], []
    for cell in line.split("\t"):
        parts = cell.split()
        if len(parts) > 1 and all(":" in part for part in parts):
            raise DataFormatError(
                f"header field {cell.strip()!r} holds several 'name:type' fields separated by "
                "spaces; fields must be tab-separated",
                path=str(path),
                line=1,
            )
        name, colon, type_name = cell.strip().rpartition(":")
        if not colon or not name:
            raise DataFormatError(
                f"header field {cell.strip()!r} is not 'name:type'", path=str(path), line=1
            )
        if type_name not in _RECBOLE_TYPES:
            raise DataFormatError(
                f"header field {cell.strip()!r} has unknown type {type_name!r}; expected one "
                f"of {', '.join(_RECBOLE_TYPES)}",
                path=str(path),
                line=1,
            )
        if name in names:
            raise DataFormatError(f"header names the field {name!r} twice", path=str(path), line=1)
        names.append(name)
        types.append(type_name)
    for name in required:
        if name not in names:
            raise DataFormatError(
                f"header has no {name}: field (found {', '.join(names)})", path=str(path), line=1
            )
    return _RecboleHeader(names, types)


def _read_recbole_table(
    path: Path,
    required: Sequence[str],
    select: Callable[[_RecboleHeader], Sequence[str]],
    id_fields: Sequence[str],
) -> tuple[_RecboleHeader, dict[str, np.ndarray], Where]:
    """Reads the fields `select(header)` of a RecBole atomic file.

    Token fields in `id_fields` are int64 when every value is a canonical integer, else str;
    float fields are numbers (or str that `parse_numbers` reports); other fields str.
    """
    blob = load_bytes(path)
    line = blob.first_line()
    if not line.strip():
        raise empty_file_error(path, "a header of 'name:type' fields")
    header = _parse_recbole_header(path, line, required)
    wanted = set(select(header))
    kinds = {}
    for index, (name, type_name) in enumerate(zip(header.names, header.types, strict=True)):
        if name in wanted:
            kinds[index] = (
                "id" if name in id_fields else "number" if type_name == "float" else "text"
            )
    fields, where = read_fields(blob, "\t", len(header.names), kinds, quoting=False)
    return header, {header.names[index]: values for index, values in fields.items()}, where


def _recbole_ids(values: np.ndarray, where: Where, field: str) -> np.ndarray:
    """`[n]` ids (int64, or stripped str); an empty id is an error."""
    if values.dtype.kind in "iu":
        return values
    empty = np.flatnonzero(values == "")
    if empty.size:
        raise where.error(int(empty[0]), f"empty {field}")
    return values


def _concatenate_ids(parts: list[np.ndarray]) -> np.ndarray:
    """Ids of several files; as str unless all are int64 (7 and "7" are one id)."""
    if len(parts) == 1:
        return parts[0]
    if all(part.dtype == np.int64 for part in parts):
        return np.concatenate(parts)
    return np.concatenate(
        [part if part.dtype.kind == "O" else part.astype(str).astype(object) for part in parts]
    )


def _recbole_rating_field(header: _RecboleHeader) -> str | None:
    if "rating" in header.names:
        return "rating"
    for name, type_name in zip(header.names, header.types, strict=True):
        if type_name == "float" and ("rating" in name or "label" in name):
            return name
    return None


def _recbole_side_features(
    path: Path, id_field: str, id_map: np.ndarray, skipped: list[str]
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """Features of a `.user` / `.item` file aligned to `id_map`; (None, None) without one.

    Appends the names of the fields not used to `skipped`.
    """
    if not path.is_file():
        return None, None
    header, columns, where = _read_recbole_table(
        path,
        (id_field,),
        lambda header: [
            name
            for name, type_name in zip(header.names, header.types, strict=True)
            if type_name != "float_seq"
        ],
        (id_field,),
    )
    ids = _recbole_ids(columns[id_field], where, id_field)
    if ids.dtype.kind != "O":
        ids = ids.astype(str).astype(object)
    duplicated = np.flatnonzero(pd.Index(ids).duplicated())
    if duplicated.size:
        second = int(duplicated[0])
        first = int(np.flatnonzero(ids == ids[second])[0])
        raise where.error(
            second,
            f"{id_field} {ids[second]!r} is on line {where.line_numbers[first]} too; expected "
            "one row per id",
        )
    target_rows = rows_in_id_map(ids, id_map)
    blocks = []
    for name, type_name in zip(header.names, header.types, strict=True):
        if name == id_field:
            continue
        if type_name == "float_seq":
            skipped.append(name)
            continue
        values = columns[name]
        if type_name == "float":
            numbers = np.nan_to_num(parse_numbers(values, where, name))
            column = np.zeros((len(id_map), 1), dtype=np.float32)
            present = target_rows >= 0
            column[target_rows[present], 0] = numbers[present]
            blocks.append((column, [name]))
            continue
        if is_free_text(values):
            skipped.append(name)
            continue
        rows, tokens = explode(values, None) if type_name == "token_seq" else non_empty(values)
        block = multi_hot(
            name, rows, tokens, target_rows, len(id_map), max_vocabulary=MAX_FEATURE_VOCABULARY
        )
        if block is None:
            skipped.append(name)
        else:
            blocks.append(block)
    return stack_features(blocks)

