"""Reading a run folder back: its models (`load_run`), recommendations for a user
(`recommend`), its metrics recomputed (`evaluate_run`), its scores as a table for a simulated
logging policy (`run_score_table`)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

import causalrec_jax.sim  # noqa: F401  registers the data formats "simulator" and "simlog"
from causalrec_jax.config import (
    load_config,
)
from causalrec_jax.errors import ConfigError, RunError
from causalrec_jax.tasks.ordinary import (
    LoadedRun,
    evaluate_loaded_run,
    load_ordinary_run,
)
from causalrec_jax.tasks.sequential import (
    SEQUENCE_MODELS,
    evaluate_sequence_run,
    load_sequence_run,
)


def load_run(run_dir: str | Path) -> LoadedRun:
    """Reads a run folder's config, id maps and best parameters (no data files needed)."""
    run = Path(run_dir)
    if (run / "config.toml").exists() and not (run / "model").exists():
        stored = load_config(run / "config.toml")
        if stored.uplift.method and stored.model.name not in SEQUENCE_MODELS:
            raise RunError(
                f"{run} is a run of uplift.method = {stored.uplift.method!r}, which saves its "
                "metrics but no model: recommend and evaluate work on runs of mf, mlp, neumf, "
                "popularity, lightgcn, sasrec, bert4rec")
    for name in ("config.toml", "data.npz", "model"):
        if not (run / name).exists():
            raise RunError(f"{run} is not a finished run: {name} is missing")
    config = load_config(run / "config.toml")
    try:
        with np.load(run / "data.npz") as stored:
            data = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise RunError(f"{run / 'data.npz'} is unreadable ({type(error).__name__}: {error}); "
                       "the file is damaged: train the run again") from None
    try:
        if config.model.name in SEQUENCE_MODELS:
            return load_sequence_run(run, config, data)
        return load_ordinary_run(run, config, data)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise RunError(f"{run / 'model'} holds no readable model ({type(error).__name__}: "
                       f"{error}); the folder is damaged: train the run again") from None


def run_score_table(run_dir: str | Path, n_users: int, n_items: int) -> np.ndarray:
    """`[n_users, n_items]` float32 scores of a trained run on a simulated world's ids.

    What `policy.scores = "run"` ranks by (`sim.logs.policy_scores` takes the table, never
    the run folder): the run's users and items are mapped onto the world's by their integer
    ids; items the run never saw score -1e9 (ranked last).
    """
    run = load_run(run_dir)
    try:
        users = np.asarray(run.user_ids).astype(np.int64)
        items = np.asarray(run.item_ids).astype(np.int64)
    except ValueError:
        raise ConfigError(
            f"key policy.run: {run_dir} was not trained on a log of this world (its ids are not "
            "the world's integer ids)"
        ) from None
    if users.max(initial=-1) >= n_users or items.max(initial=-1) >= n_items:
        raise ConfigError(
            f"key policy.run: {run_dir} has ids beyond the world's {n_users} users / {n_items} "
            "items"
        )
    run_scores = np.asarray(run.score_all_fn()(jnp.arange(len(users), dtype=jnp.int32)))
    scores = np.full((n_users, n_items), -1e9, np.float32)
    scores[np.ix_(users, items)] = run_scores
    return scores


FALLBACKS = ("popularity",)


def recommend(run: LoadedRun, user_id: str, k: int = 10, seed_index: int = 0, *,
              include_seen: bool = False, fallback: str | None = None) -> list[tuple]:
    """Top-`k` `(item_id, score)` for an external user id.

    Everything the user is known to have interacted with — the training, validation and test
    items of the run's split — is excluded unless `include_seen`. Scores come from the seed at
    `seed_index` (the run's first seed by default).

    A user the run holds no learned representation of (an id not in its data, or a user with
    no training interactions; for a sequential model, no history at all) is refused, unless
    `fallback = "popularity"`: then the items are ranked by their training counts (the score
    is the count), never by an untrained embedding.

    Raises:
        RunError: `k` < 1, an unknown or cold user without a fallback, an unknown fallback,
            or a user with nothing left to recommend.
    """
    user_id = str(user_id)
    if k < 1:
        raise RunError(f"--k {k}: expected at least 1 item")
    if fallback is not None and fallback not in FALLBACKS:
        raise RunError(f"--fallback {fallback!r}: expected one of {', '.join(FALLBACKS)}")
    matches = np.flatnonzero(run.user_ids == user_id)
    user = int(matches[0]) if len(matches) else None
    if user is None or not _has_representation(run, user):
        if fallback is None:
            why = (f"unknown user id {user_id!r}: the run's data has {len(run.user_ids)} "
                   f"users (e.g. {', '.join(map(str, run.user_ids[:3]))})" if user is None else
                   f"user {user_id!r} has no training interactions, so the run learned nothing "
                   "about them")
            raise RunError(f"{why}; pass --fallback popularity to serve the most popular "
                           "items instead")
        scores = run.data["item_counts"].astype(np.float64)
    else:
        scores = np.asarray(run.score_all_fn(seed_index)(jnp.asarray([user], jnp.int32)))[0]
        scores = scores.astype(np.float64)
    if not include_seen and user is not None:
        scores[known_items(run, user)] = -np.inf
    left = int(np.isfinite(scores).sum())
    if left == 0:
        raise RunError(
            f"user {user_id!r} has interacted with all {len(scores)} items of the run: nothing "
            "is left to recommend (--include-seen ranks them all)")
    top = np.argsort(-scores, kind="stable")[:min(k, left)]
    return [(str(run.item_ids[i]), float(scores[i])) for i in top]


def known_items(run: LoadedRun, user: int) -> np.ndarray:
    """The item indices user `user` is known to have interacted with in any split of the
    run (`data.npz`: training, validation and test pairs)."""
    parts = [run.data[f"{part}_item"][run.data[f"{part}_user"] == user]
             for part in ("train", "valid", "test") if f"{part}_user" in run.data]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _has_representation(run: LoadedRun, user: int) -> bool:
    """Whether the run learned something of `user`: a training interaction, or for a
    sequential model a history to read."""
    if "next_history" in run.data:
        return bool((run.data["next_history"][user] != 0).any())
    return bool((run.data["train_user"] == user).any())


def evaluate_run(run_dir: str | Path, split_name: str = "test") -> dict[str, Any]:
    """Re-evaluates a run's best parameters on `split_name` (re-reads the data it names).

    Returns `{split_name: means over seeds, split_name + "_std": ..., "per_seed": [...]}`;
    for the test split also the `test_literature`, `test_full` and `test_truth` blocks that
    training wrote, computed the same way (a sequential run: `test_unmasked`, `test_sampled`).
    """
    run = load_run(run_dir)
    config = run.config
    if run.scorer is not None:
        return evaluate_sequence_run(run, split_name)
    if config.train.cv_folds:
        raise RunError(
            f"{run_dir} is a cross-validation run ({config.train.cv_folds} folds): its "
            "per-fold results are in metrics.json under 'cv'; evaluate re-scores single splits"
        )
    return evaluate_loaded_run(run, split_name)


def write_evaluation(run_dir: str | Path, result: dict[str, Any]) -> Path:
    """Replaces the blocks `result` holds (e.g. `test`, `test_std`, `test_ci95`,
    `test_literature`) and each seed's entries for them in the run's `metrics.json`,
    atomically; returns its path."""
    import json

    from causalrec_jax.runs.folder import write_metrics

    path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunError(f"{path} is unreadable ({error}); train the run again") from None
    blocks = {key: value for key, value in result.items() if key != "per_seed"}
    metrics.update(blocks)
    by_seed = {entry["seed"]: entry for entry in result.get("per_seed", [])}
    for entry in metrics.get("per_seed", []):
        update = by_seed.get(entry.get("seed"), {})
        entry.update({key: value for key, value in update.items() if key != "seed"})
    write_metrics(Path(run_dir), metrics)
    return path
