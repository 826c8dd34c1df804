"""A dataset's fingerprint: what a run stores of the data it read, so that `evaluate` never
silently re-splits changed data (DESIGN §2).

The fingerprint hashes the interactions as read and cleaned (external user and item ids of
every row, in file order, ratings, timestamps, a release's fixed split, side features and
propensities), whatever the format, and keeps the counts a person can compare. Shuffled
rows change it (the split depends on the order); a file the format does not read does not.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from causalrec_jax.data.dataset import Dataset
from causalrec_jax.errors import DataChangedError, RunError

# The fingerprint's form; a stored one of another version is not compared.
VERSION = 1


def fingerprint(dataset: Dataset) -> dict[str, Any]:
    """`{"version", "sha256", "n_interactions", "n_users", "n_items"}` of `dataset`."""
    digest = hashlib.sha256()

    def add(name: str, values: np.ndarray | None) -> None:
        digest.update(name.encode())
        if values is None:
            digest.update(b"-")
            return
        values = np.asarray(values)
        if values.dtype.kind in "OUS":
            # ids as text, each followed by a separator no id holds
            digest.update("\x1f".join(map(str, values.tolist())).encode("utf-8", "replace"))
        else:
            digest.update(str(values.dtype).encode() + str(values.shape).encode())
            digest.update(np.ascontiguousarray(values).tobytes())

    add("user", np.asarray(dataset.user_ids)[dataset.user])
    add("item", np.asarray(dataset.item_ids)[dataset.item])
    add("rating", dataset.rating)
    add("timestamp", dataset.timestamp)
    add("given_split", dataset.given_split)
    add("user_features", dataset.user_features)
    add("item_features", dataset.item_features)
    add("propensity_matrix", dataset.propensity_matrix)
    return {"version": VERSION, "sha256": digest.hexdigest(),
            "n_interactions": int(len(dataset.user)), "n_users": int(dataset.n_users),
            "n_items": int(dataset.n_items)}


def changes(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """What differs between a run's stored fingerprint and the data's current one, in words;
    None when they agree (or the stored one is of another version)."""
    if stored.get("version") != current["version"] or stored["sha256"] == current["sha256"]:
        return None
    counts = [f"{name} {stored[name]:,} -> {current[name]:,}"
              for name in ("n_interactions", "n_users", "n_items")
              if stored.get(name) != current[name]]
    if counts:
        return ", ".join(counts)
    return "the same counts, other content (edited or reordered rows)"


def fingerprint_array(value: dict[str, Any]) -> dict[str, np.ndarray]:
    """`{"fingerprint": 0-d str array}`: the fingerprint as `data.npz` stores it."""
    return {"fingerprint": np.asarray(json.dumps(value, sort_keys=True))}


def stored_fingerprint(data: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """The fingerprint a run's `data.npz` arrays hold, or None (a run written before them)."""
    if "fingerprint" not in data:
        return None
    try:
        stored = json.loads(str(data["fingerprint"]))
        if not isinstance(stored, dict) or not isinstance(stored.get("sha256"), str):
            raise ValueError("no sha256")
    except ValueError as error:
        raise RunError(f"data.npz: the stored data fingerprint is damaged ({error}); the run "
                       "folder cannot say which data it was trained on: train it again") from None
    return stored


def check_unchanged(data: dict[str, np.ndarray], dataset: Dataset, where: str) -> None:
    """Raises DataChangedError when `dataset` is not the data the run (its `data.npz`
    arrays `data`) was trained on; a run without a stored fingerprint passes."""
    stored = stored_fingerprint(data)
    if stored is None:
        return
    what = changes(stored, fingerprint(dataset))
    if what is not None:
        raise DataChangedError(
            f"{where}: the data changed since the run was trained ({what}); its split would "
            "not be the one it was trained and selected on: evaluate on the original data, or "
            "train a new run")
