"""The `simlog` folder format (version 1): a logged slate bandit written by `causalrec simulate`.

A simlog folder holds one rollout of a logging policy (`[policy]`) on a dynamic world
(`[env]`, `sim.env`) as `sim.logs.simulate_log` returns it: a `SimLog` (the log) and a dict of
ground truth. A round is one user at one step of their episode, shown a slate of `K` items;
rounds are numbered `0..n_rounds-1` in the order of `SimLog` (user-major: all steps of the
first user, then the next). Files:

`simlog.json` — the manifest, a JSON object:
    format: "simlog"; version: 1 (readers refuse other values);
    n_rounds (int): rounds logged; n_users, n_items (int): sizes of the world (ids are
    `0..n-1`; users and items never shown are still part of the world);
    slate_size (int): `K`; horizon (int): steps per user episode (largest step + 1);
    propensity_exact (bool): whether `slot_propensity` is exact (False: Plackett–Luce slots
    >= 1 estimated by Monte Carlo);
    env, policy (objects): the `[env]` and `[policy]` sections of the config;
    seed (int): `run.seed`, the key of the log's noise (the world's own is `env.seed`);
    files (object): for each file below its row count and columns, or its arrays.

`impressions.parquet` — one row per (round, slot), sorted by round then position:
    round (int64): the round; user (int32): the user shown the slate; step (int32): the step
    of the user's episode; position (int8): the slot, 0 = top; item (int32): the item shown;
    examined (bool): the user looked at the slot; click (bool): the user clicked it;
    consumed (bool): the item was consumed as it was shown (clicked or organic; the potential
    outcome "if shown"); consumed_if_not_shown (bool): it would have been consumed had it not
    been shown (the same organic draw; the potential outcome "if not shown");
    click_probability (float32): the true P(click) of the slot; slot_propensity (float32):
    P(this item at this position) under the logging policy; slate_log_prob (float32): the
    logging policy's log probability of the round's ordered slate (repeated on its K rows).

`rounds.parquet` — one row per round, sorted by round:
    round (int64); user (int32); step (int32); organic_item (int32): the item consumed
    without a recommendation, -1 for none; reward (float32): clicks in the round;
    expected_reward (float32): their expectation given the slate; slate_log_prob (float32).

`truth.npz` — numpy arrays of the ground truth (never read by models): true_uplift
    `[n_logged_users, n_items]` float32 (mean effect over the logged episode of showing each
    item), user_factors `[n_users, d]`, item_factors `[n_items, d]`, item_quality
    `[n_items]`, examination `[K]`, users `[n_logged_users]` int32 (the logged users, in
    order) and inclusion_propensity `[n_logged_users, n_items]` float32 (exact P(item in
    slate); only for uniform, top-K and epsilon-greedy policies).

`config.toml` — the effective config (`config.dumps_config`).

Writing is atomic: the files go to a temporary sibling folder renamed into place at the end, so
an error leaves nothing half-written. Files are byte-identical for identical inputs (no
timestamps). `read_simlog` validates every file and names the file and column or field of any
mismatch (`DataFormatError`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from causalrec_jax.config import Config, dumps_config
from causalrec_jax.data.dataset import Dataset
from causalrec_jax.errors import DataFormatError
from causalrec_jax.sim.logs import SimLog

FORMAT = "simlog"
VERSION = 1
MANIFEST = "simlog.json"
IMPRESSIONS = "impressions.parquet"
ROUNDS = "rounds.parquet"
TRUTH = "truth.npz"
CONFIG = "config.toml"

# Column name -> numpy dtype, in file order.
IMPRESSION_COLUMNS: dict[str, str] = {
    "round": "int64",
    "user": "int32",
    "step": "int32",
    "position": "int8",
    "item": "int32",
    "examined": "bool",
    "click": "bool",
    "consumed": "bool",
    "consumed_if_not_shown": "bool",
    "click_probability": "float32",
    "slot_propensity": "float32",
    "slate_log_prob": "float32",
}
ROUND_COLUMNS: dict[str, str] = {
    "round": "int64",
    "user": "int32",
    "step": "int32",
    "organic_item": "int32",
    "reward": "float32",
    "expected_reward": "float32",
    "slate_log_prob": "float32",
}
# Probabilities may exceed [0, 1] by rounding (Monte-Carlo slot marginals) by at most this.
PROBABILITY_TOLERANCE = 1e-5
# Zip entries get this fixed time so that identical logs give identical files.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


# --------------------------------------------------------------------------------------------
# Writing.


def check_simlog_out(out_dir: str | os.PathLike, *, replace: bool = False) -> None:
    """Raises `DataFormatError` unless `out_dir` is absent or an empty folder (or, with
    `replace`, a simlog folder to be replaced).

    Call it before simulating, so a refused folder costs no simulation.
    """
    out = Path(out_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise DataFormatError("exists and is not a folder; refusing to write a simlog there",
                              path=str(out))
    if not any(out.iterdir()):
        return
    manifest = out / MANIFEST
    try:
        is_simlog = json.loads(manifest.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        is_simlog = False
    if not is_simlog:
        raise DataFormatError(
            f"folder is not empty and not a simlog folder (no {MANIFEST} with format "
            f"{FORMAT!r}); refusing to overwrite it",
            path=str(out),
        )
    if not replace:
        raise DataFormatError(
            "already holds a simlog; refusing to replace it: remove it or pass another --out",
            path=str(out),
        )


def write_simlog(
    out_dir: str | os.PathLike, log: SimLog, truth: dict[str, Any], config: Config, *,
    replace: bool = False,
) -> None:
    """Writes `log`, `truth` and `config` as a simlog folder (format above), atomically.

    Args:
        out_dir: the folder to create; an existing non-empty folder is refused
            (`DataFormatError`), but for a simlog folder when `replace` is set.
        log: the logged rounds (`simulate_log`), `R` rounds of `K` slots.
        truth: name -> array of ground truth, all written to `truth.npz`.
        config: the effective config (`env`, `policy`, `run.seed` go into the manifest).
    """
    out = Path(out_dir)
    check_simlog_out(out, replace=replace)
    _check_log(log, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_files(tmp, log, truth, config)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_log(log: SimLog, config: Config) -> None:
    n_rounds, slate_size = log.slate.shape
    if slate_size != config.env.slate_size:
        raise ValueError(f"log.slate has {slate_size} slots, config env.slate_size is "
                         f"{config.env.slate_size}")
    if n_rounds and (log.slate.min() < 0 or log.slate.max() >= config.env.n_items):
        raise ValueError(f"log.slate holds items outside 0..{config.env.n_items - 1}")
    if n_rounds and (log.user.min() < 0 or log.user.max() >= config.env.n_users):
        raise ValueError(f"log.user holds users outside 0..{config.env.n_users - 1}")


def _write_files(folder: Path, log: SimLog, truth: dict[str, Any], config: Config) -> None:
    n_rounds, slate_size = log.slate.shape
    rounds = np.arange(n_rounds, dtype=np.int64)
    impressions = {
        "round": np.repeat(rounds, slate_size),
        "user": np.repeat(log.user, slate_size),
        "step": np.repeat(log.step, slate_size),
        "position": np.tile(np.arange(slate_size), n_rounds),
        "item": log.slate.reshape(-1),
        "examined": log.examined.reshape(-1),
        "click": log.clicks.reshape(-1),
        "consumed": log.consumed_if_shown.reshape(-1),
        "consumed_if_not_shown": log.consumed_if_not_shown.reshape(-1),
        "click_probability": log.click_probability.reshape(-1),
        "slot_propensity": log.slot_propensity.reshape(-1),
        "slate_log_prob": np.repeat(log.slate_log_prob, slate_size),
    }
    round_rows = {
        "round": rounds,
        "user": log.user,
        "step": log.step,
        "organic_item": log.organic_item,
        "reward": log.reward,
        "expected_reward": log.expected_reward,
        "slate_log_prob": log.slate_log_prob,
    }
    for name, columns, dtypes in (
        (IMPRESSIONS, impressions, IMPRESSION_COLUMNS),
        (ROUNDS, round_rows, ROUND_COLUMNS),
    ):
        table = pa.table({
            column: np.ascontiguousarray(np.asarray(columns[column]).astype(dtype))
            for column, dtype in dtypes.items()
        })
        pq.write_table(table, folder / name)
    truth_arrays = {name: np.asarray(value) for name, value in truth.items()}
    _write_npz(folder / TRUTH, truth_arrays)
    (folder / CONFIG).write_text(dumps_config(config))
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "n_rounds": int(n_rounds),
        "n_users": int(config.env.n_users),
        "n_items": int(config.env.n_items),
        "slate_size": int(slate_size),
        "horizon": int(log.step.max()) + 1 if n_rounds else 0,
        "propensity_exact": bool(log.propensity_exact),
        "env": dataclasses.asdict(config.env),
        "policy": dataclasses.asdict(config.policy),
        "seed": int(config.run.seed),
        "files": {
            IMPRESSIONS: {"rows": int(n_rounds * slate_size), "columns": IMPRESSION_COLUMNS},
            ROUNDS: {"rows": int(n_rounds), "columns": ROUND_COLUMNS},
            TRUTH: {"arrays": {name: {"dtype": str(value.dtype), "shape": list(value.shape)}
                               for name, value in truth_arrays.items()}},
            CONFIG: {},
        },
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez` with fixed entry times (so identical arrays give identical bytes)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, value, allow_pickle=False)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Renames the finished `tmp` folder to `out` (replacing an empty or simlog `out`)."""
    if not out.exists():
        tmp.rename(out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex}")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Reading.


def _folder(path: str | os.PathLike) -> Path:
    folder = Path(path)
    if folder.is_file() and folder.name == MANIFEST:
        folder = folder.parent
    if not folder.is_dir():
        raise DataFormatError("no such simlog folder", path=str(folder))
    return folder


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The validated `simlog.json` of a simlog folder (or of the manifest file itself)."""
    file = _folder(path) / MANIFEST
    if not file.is_file():
        raise DataFormatError("missing file (not a simlog folder)", path=str(file))
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataFormatError(f"not valid JSON: {error}", path=str(file)) from None
    if not isinstance(manifest, dict):
        raise DataFormatError("expected a JSON object", path=str(file))
    if manifest.get("format") != FORMAT:
        raise DataFormatError(
            f"field 'format' is {manifest.get('format')!r}, expected {FORMAT!r}", path=str(file)
        )
    if manifest.get("version") != VERSION:
        raise DataFormatError(
            f"field 'version' is {manifest.get('version')!r}, expected {VERSION} (this reader "
            f"knows simlog version {VERSION} only)",
            path=str(file),
        )
    for field, low in (("n_rounds", 0), ("n_users", 1), ("n_items", 1), ("slate_size", 1),
                       ("horizon", 0)):
        value = manifest.get(field)
        if type(value) is not int or value < low:
            raise DataFormatError(
                f"field {field!r} is {value!r}, expected an integer >= {low}", path=str(file)
            )
    if not isinstance(manifest.get("propensity_exact"), bool):
        raise DataFormatError(
            f"field 'propensity_exact' is {manifest.get('propensity_exact')!r}, expected true "
            "or false",
            path=str(file),
        )
    for field in ("env", "policy"):  # the sections a replay of the log reads
        if not isinstance(manifest.get(field), dict):
            raise DataFormatError(
                f"field {field!r} is {manifest.get(field)!r}, expected the [{field}] section "
                "the log was drawn with (an object)", path=str(file))
    if type(manifest.get("seed")) is not int:
        raise DataFormatError(f"field 'seed' is {manifest.get('seed')!r}, expected an integer",
                              path=str(file))
    return manifest


def _read_table(file: Path, columns: dict[str, str], n_rows: int) -> dict[str, np.ndarray]:
    """The `columns` of a parquet file as numpy arrays of their documented dtypes, checked."""
    if not file.is_file():
        raise DataFormatError("missing file", path=str(file))
    try:
        table = pq.read_table(file)
    except (OSError, ValueError, pa.ArrowException) as error:
        raise DataFormatError(f"not a readable parquet file: {error}", path=str(file)) from None
    missing = [name for name in columns if name not in table.column_names]
    if missing:
        raise DataFormatError(
            f"missing column {missing[0]!r} (expected columns: {', '.join(columns)})",
            path=str(file),
        )
    if table.num_rows != n_rows:
        raise DataFormatError(
            f"has {table.num_rows} rows, expected {n_rows} (from {MANIFEST})", path=str(file)
        )
    values = {}
    for name, dtype in columns.items():
        column = table.column(name)
        kind = np.dtype(dtype).kind
        arrow_type = column.type
        type_ok = {
            "i": pa.types.is_integer(arrow_type),
            "b": pa.types.is_boolean(arrow_type),
            "f": pa.types.is_floating(arrow_type),
        }[kind]
        if not type_ok:
            raise DataFormatError(
                f"column {name!r} has type {arrow_type}, expected {dtype}", path=str(file)
            )
        if column.null_count:
            raise DataFormatError(
                f"column {name!r} has {column.null_count} missing values", path=str(file)
            )
        array = column.to_numpy()
        if kind == "i" and len(array):
            info = np.iinfo(dtype)
            if array.min() < info.min or array.max() > info.max:
                raise DataFormatError(
                    f"column {name!r} holds values outside the range of {dtype}", path=str(file)
                )
        values[name] = array.astype(dtype)
    return values


def _check_range(
    file: Path, name: str, values: np.ndarray, low: float, high: float, what: str
) -> None:
    """Raises naming the file, column and first bad row unless `low <= values <= high`."""
    bad = np.flatnonzero(~((values >= low) & (values <= high)))
    if len(bad):
        raise DataFormatError(
            f"column {name!r}, row {int(bad[0])}: {values[bad[0]]!r} is outside {what}",
            path=str(file),
        )


def _check_equal(file: Path, name: str, values: np.ndarray, expected: np.ndarray, what: str):
    bad = np.flatnonzero(values != expected)
    if len(bad):
        raise DataFormatError(
            f"column {name!r}, row {int(bad[0])}: {values[bad[0]]!r}, expected "
            f"{expected[bad[0]]!r} ({what})",
            path=str(file),
        )


def _read_impressions(folder: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The validated columns of `impressions.parquet`."""
    file = folder / IMPRESSIONS
    n_rounds, k = manifest["n_rounds"], manifest["slate_size"]
    columns = _read_table(file, IMPRESSION_COLUMNS, n_rounds * k)
    _check_equal(file, "round", columns["round"], np.repeat(np.arange(n_rounds), k),
                 f"rows are sorted by round, {k} per round")
    _check_equal(file, "position", columns["position"], np.tile(np.arange(k), n_rounds),
                 f"positions 0..{k - 1} in order within each round")
    _check_range(file, "user", columns["user"], 0, manifest["n_users"] - 1,
                 f"the world's users 0..{manifest['n_users'] - 1}")
    _check_range(file, "item", columns["item"], 0, manifest["n_items"] - 1,
                 f"the world's items 0..{manifest['n_items'] - 1}")
    _check_range(file, "step", columns["step"], 0, manifest["horizon"] - 1,
                 f"steps 0..{manifest['horizon'] - 1} (horizon {manifest['horizon']})")
    for name in ("click_probability", "slot_propensity"):
        _check_range(file, name, columns[name], -PROBABILITY_TOLERANCE,
                     1 + PROBABILITY_TOLERANCE, "[0, 1]")
    slates = np.sort(columns["item"].reshape(n_rounds, k), axis=1)
    repeated = np.flatnonzero((slates[:, 1:] == slates[:, :-1]).any(axis=1))
    if len(repeated):
        raise DataFormatError(
            f"column 'item': round {int(repeated[0])} shows an item twice", path=str(file)
        )
    for name in ("user", "step", "slate_log_prob"):
        per_round = columns[name].reshape(n_rounds, k)
        differs = np.flatnonzero((per_round != per_round[:, :1]).any(axis=1))
        if len(differs):
            raise DataFormatError(
                f"column {name!r}: round {int(differs[0])} has different values on its rows",
                path=str(file),
            )
    return columns


def _read_rounds(
    folder: Path, manifest: dict[str, Any], impressions: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The validated columns of `rounds.parquet` (consistent with the impressions)."""
    file = folder / ROUNDS
    n_rounds, k = manifest["n_rounds"], manifest["slate_size"]
    columns = _read_table(file, ROUND_COLUMNS, n_rounds)
    _check_equal(file, "round", columns["round"], np.arange(n_rounds), "rows sorted by round")
    for name in ("user", "step", "slate_log_prob"):
        _check_equal(file, name, columns[name], impressions[name][::k],
                     f"as in {IMPRESSIONS}")
    _check_range(file, "organic_item", columns["organic_item"], -1, manifest["n_items"] - 1,
                 f"-1 (none) or the world's items 0..{manifest['n_items'] - 1}")
    return columns


def _read_truth(folder: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    file = folder / TRUTH
    if not file.is_file():
        raise DataFormatError("missing file", path=str(file))
    try:
        with np.load(file, allow_pickle=False) as archive:
            truth = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataFormatError(f"not a readable .npz file: {error}", path=str(file)) from None
    expected = manifest.get("files", {}).get(TRUTH, {}).get("arrays", {})
    for name, spec in expected.items():
        if name not in truth:
            raise DataFormatError(f"missing array {name!r} (listed in {MANIFEST})",
                                  path=str(file))
        if list(truth[name].shape) != list(spec.get("shape", truth[name].shape)):
            raise DataFormatError(
                f"array {name!r} has shape {list(truth[name].shape)}, expected "
                f"{spec['shape']} (from {MANIFEST})",
                path=str(file),
            )
    return truth


def read_simlog(path: str | os.PathLike) -> tuple[SimLog, dict[str, np.ndarray]]:
    """Reads and validates a simlog folder; returns `(log, truth)` as `simulate_log` did.

    Raises:
        DataFormatError: naming the file and the column or field, for missing files, a wrong
            format or version, missing columns, row counts that disagree with the manifest
            (`n_rounds * slate_size` impressions) and users or items outside the world.
    """
    folder = _folder(path)
    manifest = read_manifest(folder)
    impressions = _read_impressions(folder, manifest)
    rounds = _read_rounds(folder, manifest, impressions)
    truth = _read_truth(folder, manifest)
    shape = (manifest["n_rounds"], manifest["slate_size"])

    def slots(name: str) -> np.ndarray:
        return impressions[name].reshape(shape)

    log = SimLog(
        user=rounds["user"],
        step=rounds["step"],
        slate=slots("item"),
        slate_log_prob=rounds["slate_log_prob"],
        slot_propensity=slots("slot_propensity"),
        examined=slots("examined"),
        clicks=slots("click"),
        consumed_if_shown=slots("consumed"),
        consumed_if_not_shown=slots("consumed_if_not_shown"),
        click_probability=slots("click_probability"),
        organic_item=rounds["organic_item"],
        reward=rounds["reward"],
        expected_reward=rounds["expected_reward"],
        propensity_exact=manifest["propensity_exact"],
    )
    return log, truth


def simlog_to_dataset(path: str | os.PathLike) -> Dataset:
    """The impressions of a simlog folder as a `Dataset` (the `simlog` data format).

    One interaction per impression: `user`, `item`, `rating` = click (1.0 / 0.0, float32),
    `timestamp` = round index (float64). The id maps are the world's: `user_ids` and
    `item_ids` are "0".."n-1" for all `n_users` / `n_items`, shown or not. `meta` holds
    `name` (the folder's name), `format`, `path`, `implicit` (True), `rating_scale` (0, 1),
    `raw_rows` and `simlog` (the manifest). The ground truth is not read.
    """
    folder = _folder(path)
    manifest = read_manifest(folder)
    impressions = _read_impressions(folder, manifest)
    n_rows = len(impressions["user"])
    return Dataset(
        user=impressions["user"].astype(np.int32),
        item=impressions["item"].astype(np.int32),
        rating=impressions["click"].astype(np.float32),
        timestamp=impressions["round"].astype(np.float64),
        user_ids=np.arange(manifest["n_users"]).astype(str).astype(object),
        item_ids=np.arange(manifest["n_items"]).astype(str).astype(object),
        meta={
            "name": folder.resolve().name,
            "format": FORMAT,
            "path": str(path),
            "implicit": True,
            "rating_scale": (0.0, 1.0),
            "raw_rows": n_rows,
            "simlog": manifest,
        },
    )
