"""Reading a run folder back: its models (`load_run`), recommendations for a user
(`recommend`, from `runs.serve`, which also serves every user at once), its metrics recomputed
(`evaluate_run`), its scores as a table for a simulated logging policy (`run_score_table`)."""

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
from causalrec_jax.runs.serve import (  # noqa: F401  serving a run, re-exported here
    FALLBACKS,
    known_items,
    recommend,
)
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
        kind = None
        if stored.uplift.method and stored.model.name not in SEQUENCE_MODELS:
            kind = f"a run of uplift.method = {stored.uplift.method!r}"
        elif _is_ope_run(run):
            kind = "an off-policy evaluation run (causalrec ope)"
        if kind:
            raise RunError(
                f"{run} is {kind}, which saves its metrics but no model: recommend and "
                "evaluate work on runs of mf, mlp, neumf, popularity, lightgcn, sasrec, "
                "bert4rec")
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


def _is_ope_run(run: Path) -> bool:
    """Whether the folder's `metrics.json` is an OPE run's (it has the `ope` block)."""
    import json

    try:
        return "ope" in json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return False


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
