"""Explainers measured on a run trained on the planted world (issue 15 item 2).

`explain_planted_run(run_dir, methods=...)` reads a finished run of a sequential model trained
with `data.format = "planted"` (`causalrec train --config configs/sim_planted.toml`), draws its
world again from the run's own `[planted]` section (checked against the run's data
fingerprint, as `causalrec evaluate` does), and makes one instance per sampled rule-caused
consumption of a consequent `C`: the user's history before `C`, as the model reads it (drop
and shift deletion, `explain.make_history_model`), `C` the item to explain, the history's items
left out of the ranking. `explain.benchmark.benchmark_explainers` then explains every instance
the model learned with each method, finds the oracle's sets, and scores them against the
world's and the oracle's truth; the result is the run's `"explain"` block, written into its
`metrics.json` (`runs.folder.write_metrics`) beside the blocks training wrote.

Instances are the rule-caused consumptions (those with minimal counterfactual sets in the
world), at most `n_per_kind` of each rule kind drawn at random (`seed`), so a world of any size
costs the same to measure.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from causalrec_jax.data.fingerprint import check_unchanged
from causalrec_jax.data.loader import load_dataset
from causalrec_jax.errors import RunError
from causalrec_jax.explain import METHODS, make_history_model
from causalrec_jax.explain.benchmark import Instances, benchmark_explainers
from causalrec_jax.explain.deletion import padded_length
from causalrec_jax.runs.folder import write_metrics
from causalrec_jax.runs.load import load_run
from causalrec_jax.sim.planted import PAD, PlantedTruth
from causalrec_jax.tasks.ordinary import LoadedRun
from causalrec_jax.tasks.sequential import SEQUENCE_MODELS
from causalrec_jax.train.loop import seed_slice

# The explainers measured by default: the searches and every baseline (`explain.METHODS`
# less the oracle, which is the truth they are measured against).
DEFAULT_METHODS = tuple(method for method in METHODS if method != "exhaustive")

# The learned-instance definition, as the protocol states it (`explain.scores`).
LEARNED = ("loose: C is in the model's top-K from the history before it and leaves it when "
           "every antecedent of its rule is removed; strict: also the world's minimal sets "
           "are the model's (each removal drops C, no proper subset does)")


def planted_instances(run: LoadedRun, truth: PlantedTruth, *, n_per_kind: int, seed: int = 0,
                      seed_index: int = 0) -> tuple[Instances, np.ndarray]:
    """The instances of a planted run: up to `n_per_kind` rule-caused consumptions of each
    rule kind (drawn with `seed`), each a `DeletionModel` of the history before the consequent.

    Returns:
        `(instances, rows)`: the `Instances` (items as the run's indices, groups `and`, `or`)
        and the rows of `truth` they came from.
    """
    index_of = {str(item): index for index, item in enumerate(run.data["item_ids"])}
    generator = np.random.default_rng(seed)
    rows = []
    for kind in ("and", "or"):
        candidates = np.flatnonzero(truth.caused & (truth.kind == kind))
        if len(candidates) > n_per_kind:
            candidates = np.sort(generator.choice(candidates, n_per_kind, replace=False))
        rows.append(candidates)
    rows = np.concatenate(rows)
    if not len(rows):
        raise RunError("the planted world holds no rule-caused consumption to explain: draw "
                       "more users (planted.n_users) or raise planted.rule_strength")
    chosen = truth.select(rows)

    def internal(items) -> list[int]:
        return [index_of[str(int(item))] for item in items]

    width = padded_length(int((chosen.history != PAD).sum(1).max()), 8)
    params = seed_slice(run.parts.params, seed_index)
    counts = run.data["item_counts"]
    n_items = len(index_of)
    models, exclude = [], np.zeros((len(rows), n_items), bool)
    for row in range(len(rows)):
        items = internal(chosen.history[row][chosen.history[row] != PAD])
        tokens = np.zeros(width, np.int32)
        tokens[width - len(items):] = np.asarray(items, np.int32) + 1  # left-padded, newest last
        if not models:
            models.append(make_history_model(run.parts.graphdef, params, tokens,
                                             item_counts=counts))
        else:
            # the first model with this instance's tokens: same functions and layout, so
            # every compiled search and baseline is reused, and nothing is built again
            models.append(dataclasses.replace(
                models[0], data={**models[0].data, "tokens": jnp.asarray(tokens)},
                history=tokens.astype(np.int64) - 1))
        exclude[row, items] = True
    minimal_sets = [tuple(frozenset(internal(s)) for s in sets)
                    for sets in chosen.all_minimal_sets()]
    confounders = [frozenset(internal(s)) for s in chosen.all_confounders()]
    kinds = chosen.kind
    instances = Instances(
        models=models, targets=np.asarray(internal(chosen.item), np.int64), exclude=exclude,
        minimal_sets=minimal_sets, confounders=confounders,
        groups={"and": kinds == "and", "or": kinds == "or"})
    return instances, rows


def explain_planted_run(run_dir: str | Path, *, methods: Sequence[str] = DEFAULT_METHODS,
                        k: int = 10, max_size: int = 10, oracle_max_size: int = 3,
                        n_per_kind: int = 150, seed: int = 0, write: bool = True,
                        log_fn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measures `methods` on the planted run in `run_dir` (module docstring); returns the
    `"explain"` block and, with `write`, adds it to the run's `metrics.json`.

    Raises:
        RunError: not a finished run, not a sequential model, not a planted world, data that
            changed since training, an unknown method, a bad `k`.
    """
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise RunError(f"unknown explainer {unknown[0]!r}: expected some of "
                       f"{', '.join(METHODS)}")
    if k < 1 or max_size < 1 or oracle_max_size < 1:
        raise RunError(f"k = {k}, max_size = {max_size}, oracle_max_size = {oracle_max_size}: "
                       "expected each >= 1")
    run_path = Path(run_dir)
    run = load_run(run_path)
    config = run.config
    if config.data.format != "planted":
        raise RunError(f"{run_path} was trained on data.format = {config.data.format!r}: the "
                       "planted benchmark needs a run of data.format = 'planted'")
    if config.model.name not in SEQUENCE_MODELS:
        raise RunError(f"{run_path} is a run of model.name = {config.model.name!r}: the planted "
                       f"benchmark explains sequential runs ({', '.join(SEQUENCE_MODELS)})")
    dataset, truth = load_dataset(config.data, config.sim, planted=config.planted)
    check_unchanged(run.data, dataset, f"{run_path} (planted world)")
    instances, _ = planted_instances(run, truth, n_per_kind=n_per_kind, seed=seed)
    result = benchmark_explainers(instances, methods, k=k, max_size=max_size,
                                  oracle_max_size=oracle_max_size, log_fn=log_fn)
    planted = config.planted
    block = {
        "protocol": {
            "model": config.model.name, "k": k, "max_size": max_size,
            "oracle_max_size": oracle_max_size, "learned": LEARNED,
            "instances": (f"rule-caused consumptions of a consequent, at most {n_per_kind} per "
                          f"rule kind drawn with seed {seed}; the history before C (the "
                          "model's window), its items left out of the ranking"),
            "world": {"n_users": planted.n_users, "n_items": planted.n_items,
                      "history_length": planted.history_length,
                      "n_and_rules": planted.n_and_rules, "n_or_rules": planted.n_or_rules,
                      "rho": planted.rho, "seed": planted.seed},
            "run_seed": config.run.seed,
        },
        "rho": float(planted.rho),
        "identifiable": bool(truth.identifiable),
        "explainers": list(result["scores"]),
        **result,
    }
    if write:
        metrics_path = run_path / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        metrics["explain"] = block
        write_metrics(run_path, metrics)
    return block
