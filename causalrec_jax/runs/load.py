"""Reading a run folder back: its models (`load_run`), recommendations for a user
(`recommend`), its metrics recomputed (`evaluate_run`), its scores as a table for a simulated
logging policy (`run_score_table`)."""

from __future__ import annotations

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
    with np.load(run / "data.npz") as stored:
        data = {name: stored[name] for name in stored.files}
    if config.model.name in SEQUENCE_MODELS:
        return load_sequence_run(run, config, data)
    return load_ordinary_run(run, config, data)


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


def recommend(run: LoadedRun, user_id: str, k: int = 10, seed_index: int = 0) -> list[tuple]:
    """Top-`k` `(item_id, score)` for an external user id, excluding items they already have.

    Items seen in training and validation are excluded (in a sequential run also the test
    items: it predicts the item after all of them). Scores come from the seed at
    `seed_index` (the run's first seed by default).
    """
    if k < 1:
        raise RunError(f"--k {k}: expected at least 1 item")
    matches = np.flatnonzero(run.user_ids == str(user_id))
    if len(matches) == 0:
        raise RunError(
            f"unknown user id {user_id!r}: the run's data has {len(run.user_ids)} users "
            f"(e.g. {', '.join(map(str, run.user_ids[:3]))})"
        )
    user = int(matches[0])
    scores = np.asarray(run.score_all_fn(seed_index)(jnp.asarray([user], jnp.int32)))[0]
    seen = run.data["train_item"][run.data["train_user"] == user]
    for part in ("valid", "test"):
        if f"{part}_user" in run.data:
            part_items = run.data[f"{part}_item"][run.data[f"{part}_user"] == user]
            seen = np.concatenate([seen, part_items])
    scores = scores.astype(np.float64)
    scores[seen] = -np.inf
    k = min(k, int(np.isfinite(scores).sum()))
    top = np.argsort(-scores, kind="stable")[:k]
    return [(str(run.item_ids[i]), float(scores[i])) for i in top]


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
