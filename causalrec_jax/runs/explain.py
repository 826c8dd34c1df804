"""`causalrec explain`: a counterfactual explanation of one recommendation of a trained run.

`explain_run(run_dir, user_id, item_id)` loads the run, builds the user's deletion model
(`causalrec_jax.explain.deletion`: drop and shift for SASRec and BERT4Rec, a re-fit of the
user's parameters with the run's own loss for MF, MLP, NeuMF and LightGCN, and an L2
calibrated per user by default: `deletion_model`'s `refit_l2`), and runs
`causalrec_jax.explain.explain`. External ids come from the run's id maps; titles from the
dataset's item file when it has one (RecBole `NAME.item` with a `*title*` field, MovieLens
`u.item`, `movies.dat`, `movies.csv`). `format_explanation`, `explanation_json` and
`plot_explanation` are the command's table, `--json` and bar chart.

Re-fitted models need the training rows (ratings for mse and bce, the positives for ranking
losses), which `data.npz` does not keep: the run's data are read again and checked against its
fingerprint, as `causalrec evaluate` does. Sequential runs explain the window the model reads
(`data.npz`'s `next_history`, the user's last `model.max_len` items): older items cannot change
the score, and a deletion cannot pull one of them into the window, which the model would see.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from causalrec_jax.config import Config, load_config
from causalrec_jax.errors import RunError
from causalrec_jax.explain import METHODS, Explanation, explain, l2_per_user
from causalrec_jax.explain.deletion import (
    RESIDUALS,
    DeletionModel,
    feature_effects,
    item_feature_effects,
    make_history_model,
    make_refit_model,
)
from causalrec_jax.runs.load import known_items, load_run, recommend
from causalrec_jax.runs.serve import check_seed_index, served_seeds
from causalrec_jax.tasks.ordinary import LoadedRun
from causalrec_jax.tasks.sequential import SEQUENCE_MODELS

EXPLAINABLE_MODELS = ("mf", "mlp", "neumf", "lightgcn", *SEQUENCE_MODELS)
# Causal methods whose per-user objective a re-fit reproduces: the run's own rows, each
# weighted as training weighted it (1; the clipped inverse propensity for IPS and SNIPS).
REFIT_METHODS = ("naive", "ips", "snips")


@dataclasses.dataclass
class RunExplanation:
    """An `Explanation` of a run's recommendation, with the dataset's own ids.

    Attributes:
        user_id: the user's external id.
        item_id: the explained item's external id.
        explanation: the explanation (item indices are the run's internal ones).
        history_ids: `[n]` external ids of `explanation.history`.
        titles: external item id -> title, for the items shown (empty without titles).
        model: the run's `model.name`.
        served_rank: the item's 0-based rank in what the run serves the user (`recommend`).
        n_candidates: how many items the ranking holds (the catalogue less the user's items).
        features: for a model with user features, one entry per feature the user has
            (non-zero): `{"feature", "value", "score_change", "rank_after"}` when it is set to
            0 (`explain.feature_effects`, the direct effect), largest drop first; else [].
        item_features: likewise for the features of the explained item, for a model with item
            features (`explain.item_feature_effects`: only the item's own score moves).
    """

    user_id: str
    item_id: str
    explanation: Explanation
    history_ids: list[str]
    titles: dict[str, str]
    model: str
    served_rank: int
    n_candidates: int
    features: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    item_features: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    refit: dict[str, float] | None = None


def explain_run(run_dir: str | Path, user_id: str, item_id: str | None = None, *, k: int = 10,
                max_size: int = 10, method: str = "greedy", beam_width: int = 4,
                seed_index: int = 0, n_candidates: int | None = None,
                refit_l2: str | float = "calibrated", hold_seeds: bool = False,
                quorum: int | None = None, residual: str = "kept") -> RunExplanation:
    """Explains why the run recommends `item_id` (None: the user's top item) to `user_id`
    (`causalrec_jax.explain.explain` with `k`, `max_size`, `method`, `beam_width`,
    `n_candidates`), with the parameters of the seed at `seed_index`; `refit_l2` as
    `deletion_model` (a string of a number counts as the number), and `residual` too. With
    `hold_seeds`, the set is extended until it removes the item from the top-K under the seed
    at `seed_index` (whose recommendation is explained) and `quorum` of the seeds the run
    trained (None: a majority; `explain(..., seeds=..., quorum=...)`).

    Raises:
        RunError: a run that cannot be explained (OPE, uplift, popularity, a causal method
            other than naive), an unknown user or item, an item the user already has, a
            user the run learned nothing about, a bad `k`, `max_size`, `method` or
            `refit_l2` or `residual`, `hold_seeds` on a run of one seed, or a `quorum`
            outside 1..seeds.
    """
    refit_l2 = _refit_l2(refit_l2)
    if residual not in RESIDUALS:
        raise RunError(f"--residual {residual!r}: expected one of {', '.join(RESIDUALS)}")
    if method not in METHODS:
        raise RunError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if k < 1 or max_size < 1:
        raise RunError(f"--k {k} --max-size {max_size}: expected both >= 1")
    run_path = Path(run_dir)
    _refuse_unexplainable(run_path)
    run = load_run(run_path)
    config = run.config
    if config.model.name not in EXPLAINABLE_MODELS:
        raise RunError(f"{run_path} is a run of model.name = {config.model.name!r}, whose "
                       "scores do not depend on a user's history: explain works on runs of "
                       f"{', '.join(EXPLAINABLE_MODELS)}")
    if (config.model.name not in SEQUENCE_MODELS
            and config.causal.method not in REFIT_METHODS):
        raise RunError(f"{run_path} is a run of causal.method = {config.causal.method!r}: "
                       "explain re-fits a user with the run's training objective, which it "
                       f"reproduces for causal.method = {', '.join(map(repr, REFIT_METHODS))} "
                       "only (the doubly robust family, rel_mf, MACR and PDA train on cells "
                       "or scores beyond the user's own rows, and D-IPS on reweighted ones)")
    if config.model.name in SEQUENCE_MODELS and (refit_l2 != "calibrated"
                                                 or residual != "kept"):
        flag = (f"--refit-l2 {refit_l2}" if refit_l2 != "calibrated"
                else f"--residual {residual}")
        raise RunError(f"{flag}: {run_path} is a run of {config.model.name}, "
                       "which takes the edited history directly and re-fits nothing")
    seeds = served_seeds(run)
    if hold_seeds and len(seeds) < 2:
        raise RunError(f"--hold-seeds: {run_path} holds one seed ({seeds[0]}); a set that holds "
                       "across seeds needs a run trained with train.seeds >= 2")
    check_seed_index(run, seed_index)
    if quorum is not None and not (hold_seeds and 1 <= quorum <= len(seeds)):
        raise RunError(f"--quorum {quorum}: expected --hold-seeds and 1 to {len(seeds)} (the "
                       "run's seeds)")
    user = _index_of(run.user_ids, user_id, "user", run_path)
    known = known_items(run, user)
    if item_id is None:
        top = recommend(run, user_id, k=1, seed_index=seed_index)
        item_id = top[0][0]
    item = _index_of(run.item_ids, item_id, "item", run_path)
    if item in set(known.tolist()):
        raise RunError(f"user {user_id!r} already has item {item_id!r} (a training, "
                       "validation or test interaction): explain asks why an item the user "
                       "does not have is recommended")
    served = recommend(run, user_id, k=len(run.item_ids), seed_index=seed_index)
    served_rank = next(i for i, (candidate, _) in enumerate(served) if candidate == item_id)
    rows = (training_rows(config, run.data)
            if hold_seeds and config.model.name not in SEQUENCE_MODELS else None)
    model = deletion_model(run, user, seed_index=seed_index, refit_l2=refit_l2, rows=rows,
                           residual=residual)
    others = [deletion_model(run, user, seed_index=index, refit_l2=refit_l2, rows=rows,
                             residual=residual)
              for index in range(len(seeds)) if hold_seeds and index != seed_index]
    if not model.valid.any():
        raise RunError(f"user {user_id!r} has no past interaction the model reads: nothing "
                       "to explain")
    exclude = np.zeros(len(run.item_ids), bool)
    exclude[known] = True
    try:
        explanation = explain(model, item, k=k, method=method, max_size=max_size,
                              exclude=exclude, beam_width=beam_width,
                              n_candidates=n_candidates, seeds=others, quorum=quorum)
    except ValueError as error:  # a baseline or search this model cannot run
        raise RunError(f"--method {method} on a {config.model.name} run: {error}") from None
    features = _feature_table(model, item, exclude)
    item_features = _item_feature_table(model, item, exclude)
    history_ids = [str(run.item_ids[i]) for i in explanation.history]
    titles = item_titles(config)
    shown = {*history_ids, str(item_id)}
    return RunExplanation(
        user_id=str(user_id), item_id=str(item_id), explanation=explanation,
        history_ids=history_ids, titles={i: t for i, t in titles.items() if i in shown},
        model=config.model.name, served_rank=served_rank,
        n_candidates=int(len(run.item_ids) - len(known)), features=features,
        item_features=item_features, warnings=_warnings(config, model, refit_l2),
        refit=_refit_facts(model))


def _refit_facts(model: DeletionModel) -> dict[str, float] | None:
    """A re-fit's L2 and the relative distance of its full-history fit from the trained
    user; None for a model that takes the edited history directly."""
    if "fit_distance" not in model.data:
        return None
    return {"l2": float(model.data["l2"]), "fit_distance": float(model.data["fit_distance"])}


def _refit_l2(value: str | float) -> str | float:
    """`--refit-l2` read: one of `REFIT_L2`, or a number >= 0 (a string of one counts)."""
    if isinstance(value, str) and value in REFIT_L2:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number < 0:
        raise RunError(f"--refit-l2 {value!r}: expected {' or '.join(REFIT_L2)} or a number "
                       ">= 0")
    return number


def _feature_table(model: DeletionModel, item: int,
                   exclude: np.ndarray) -> list[dict[str, Any]]:
    """The direct effect of removing each of the user's features on the item (see
    `RunExplanation.features`), ranked against the served scores (pessimistic ties)."""
    effects = feature_effects(model)
    if effects is None:
        return []
    served = np.asarray(model.data["served"])
    values = np.asarray(model.data["user_features"])
    names = model.feature_names
    others = ~exclude & (np.arange(len(served)) != item)
    table = []
    for column in np.flatnonzero(values):
        scores = served + effects[column]
        table.append({
            "feature": str(names[column]) if names is not None else f"user feature {column}",
            "value": float(values[column]), "score_change": float(effects[column, item]),
            "rank_after": int(np.sum(others & (scores >= scores[item]))) + 1})
    return sorted(table, key=lambda row: row["score_change"])


def _warnings(config: Config, model: DeletionModel, refit_l2: str | float) -> list[str]:
    """What the reader of an explanation must know about its reliability."""
    from causalrec_jax.explain.deletion import RefitDeletion

    if not isinstance(model.score_fn, RefitDeletion):
        return []
    if float(model.data["l2"]) == 0:
        return [f"the re-fit has no L2 (train.weight_decay = {config.train.weight_decay}, "
                f"--refit-l2 {refit_l2}): the {config.train.loss} objective of one user may "
                "have no finite minimum, and re-fitted effects can be arbitrarily large (on "
                "ml-100k BPR-MF they reach 1e4-1e5)"
                + ("" if refit_l2 == "calibrated" else "; use --refit-l2 calibrated")]
    distance = float(model.data["fit_distance"])
    if not distance <= FIT_DISTANCE_WARNING:
        return [f"the full-history re-fit lands {distance:.0%} (relative distance) from the "
                "trained user: the run's training did not end at the minimum of the objective "
                "the re-fit reproduces, so its effects approximate the run's"]
    return []


def _item_feature_table(model: DeletionModel, item: int,
                        exclude: np.ndarray) -> list[dict[str, Any]]:
    """The direct effect of removing each of the item's own features on its score and rank
    (see `RunExplanation.item_features`); the other items' scores do not move."""
    effects = item_feature_effects(model, item)
    if effects is None:
        return []
    from flax import nnx

    scorer = model.score_fn
    values = np.asarray(nnx.merge(scorer.graphdef, model.data["model"]).item_features[...][item])
    served = np.asarray(model.data["served"])
    names = model.item_feature_names
    others = ~exclude & (np.arange(len(served)) != item)
    table = []
    for column in np.flatnonzero(values):
        score = served[item] + effects[column]
        table.append({
            "feature": str(names[column]) if names is not None else f"item feature {column}",
            "value": float(values[column]), "score_change": float(effects[column]),
            "rank_after": int(np.sum(others & (served >= score))) + 1})
    return sorted(table, key=lambda row: row["score_change"])


def _refuse_unexplainable(run: Path) -> None:
    """A one-line RunError for a folder that holds no model of users (OPE, uplift)."""
    if not (run / "config.toml").exists() or (run / "model").exists():
        return
    config = load_config(run / "config.toml")
    if config.uplift.method:
        raise RunError(f"{run} is an uplift run (uplift.method = {config.uplift.method!r}): "
                       "it saves no model of a user's history, so there is no recommendation "
                       "to explain")
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    if "ope" in metrics:
        raise RunError(f"{run} is an OPE run (off-policy evaluation): it estimates a policy's "
                       "value and saves no model of a user's history to explain")


def _index_of(ids: np.ndarray, external: str, what: str, run: Path) -> int:
    matches = np.flatnonzero(ids == str(external))
    if not len(matches):
        raise RunError(f"unknown {what} id {str(external)!r}: the run {run} has {len(ids)} "
                       f"{what}s (e.g. {', '.join(map(str, ids[:3]))})")
    return int(matches[0])


REFIT_L2 = ("calibrated", "run")
# `explain` warns when the full-history re-fit lands farther than this from the trained user.
FIT_DISTANCE_WARNING = 0.25


def deletion_model(run: LoadedRun, user: int, *, seed_index: int = 0,
                   rows: tuple[dict[str, np.ndarray], Any, Any] | None = None,
                   refit_l2: str | float = "calibrated",
                   residual: str = "kept") -> DeletionModel:
    """The user's `DeletionModel` for a loaded run (one seed); `rows`: the run's
    `training_rows` when the caller already read them (many users of one run); `residual`
    as `make_refit_model` (ID-embedding models).

    `refit_l2` (ID-embedding models): `"run"`, the L2 the run's weight decay implies
    (`l2_per_user`); `"calibrated"`, the L2 at least that one whose full-history re-fit
    lands nearest the trained user (`explain.deletion.calibrate_l2`: early stopping
    regularises beyond the weight decay, and without weight decay a BPR user objective may
    have no finite minimum); a number >= 0: that L2."""
    from flax import nnx

    from causalrec_jax.train.loop import seed_slice

    config = run.config
    params = seed_slice(run.parts.params, seed_index)
    counts = run.data["item_counts"]
    if config.model.name in SEQUENCE_MODELS:
        if residual != "kept":
            raise ValueError(f"residual {residual!r}: a {config.model.name} run takes the "
                             "edited history directly and re-fits nothing")
        return make_history_model(run.parts.graphdef, params,
                                  run.data["next_history"][user], item_counts=counts)
    rows, names, item_names = training_rows(config, run.data) if rows is None else rows
    mine = rows["users"] == user
    if not mine.any():
        raise RunError(f"user {str(run.user_ids[user])!r} has no training interactions under "
                       f"train.loss = {config.train.loss!r}, so the run fitted nothing to them")
    items, first = np.unique(rows["items"][mine], return_index=True)
    ratings = rows["ratings"][mine][first] if "ratings" in rows else None
    model = nnx.merge(run.parts.graphdef, params, run.parts.constants)
    train = config.train
    row_weights, l2 = None, l2_per_user(train.weight_decay, len(rows["users"]))
    if "weights" in rows:
        row_weights = rows["weights"][mine][first]
        if config.causal.method == "snips":  # self-normalised: the weight decay per weight
            l2 = l2_per_user(train.weight_decay, 1) * float(np.sum(rows["weights"]))
    if not isinstance(refit_l2, str):
        l2 = float(refit_l2)
    elif refit_l2 not in REFIT_L2:
        raise ValueError(f"refit_l2 = {refit_l2!r}: expected one of {', '.join(REFIT_L2)} "
                         "or a number >= 0")
    return make_refit_model(
        model, user=user, items=items, ratings=ratings, loss=train.loss, l2=l2,
        row_weights=row_weights, calibrate=refit_l2 == "calibrated", residual=residual,
        seen_items=run.data["train_item"][run.data["train_user"] == user],
        exclude_seen=train.exclude_seen_negatives, item_counts=counts, feature_names=names,
        item_feature_names=item_names)


def training_rows(config: Config, stored: dict[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], tuple[str, ...] | None,
                             tuple[str, ...] | None]:
    """The rows the run's loss trained on (`tasks.ordinary.training_rows`), from its data
    read again and checked against the fingerprint in `data.npz` (`stored`), and the names of
    the dataset's user and item features (None without). An IPS or SNIPS run's rows carry `weights`,
    the inverse of their propensities clipped at `causal.propensity_clip`, as its loss
    weighs them."""
    from causalrec_jax.causal.clip import clip_propensities
    from causalrec_jax.data.fingerprint import check_unchanged
    from causalrec_jax.data.loader import load_dataset
    from causalrec_jax.data.split import make_split
    from causalrec_jax.tasks.ordinary import training_rows as method_rows

    dataset, truth = load_dataset(config.data, config.sim, planted=config.planted)
    check_unchanged(stored, dataset, config.data.path or config.data.format)
    split = make_split(dataset, config.data, seed=config.run.seed)
    rows, _ = method_rows(config, split, truth)
    if "propensities" in rows:
        clipped, _ = clip_propensities(rows.pop("propensities"),
                                       config.causal.propensity_clip or None)
        rows["weights"] = 1.0 / np.asarray(clipped, np.float64)
    return rows, dataset.user_feature_names, dataset.item_feature_names


# ----------------------------------------------------------------------------- titles


TITLE_FIELDS = ("title", "movie_title", "name", "item_name")


def item_titles(config: Config) -> dict[str, str]:
    """External item id -> title from the dataset's item file, when it has one; {} otherwise
    (no file, no title column, an unreadable file: titles are a courtesy, never an error)."""
    if not config.data.path or config.data.format not in ("recbole", "movielens"):
        return {}
    path = Path(config.data.path)
    folder = path if path.is_dir() else path.parent
    try:
        if config.data.format == "recbole":
            return _recbole_titles(folder, path)
        return _movielens_titles(folder)
    except (OSError, ValueError, UnicodeDecodeError, csv.Error, IndexError):
        return {}


def _recbole_titles(folder: Path, path: Path) -> dict[str, str]:
    candidates = sorted(folder.glob("*.item"))
    name = path.name.split(".")[0] if path.is_file() else folder.name
    preferred = [c for c in candidates if c.name == f"{name}.item"] or candidates[:1]
    if not preferred:
        return {}
    lines = preferred[0].read_text(encoding="utf-8", errors="replace").splitlines()
    header = [cell.split(":")[0].strip() for cell in lines[0].split("\t")]
    if "item_id" not in header:
        return {}
    title = next((header.index(f) for f in TITLE_FIELDS if f in header), None)
    if title is None:
        title = next((i for i, f in enumerate(header) if "title" in f), None)
    if title is None:
        return {}
    key = header.index("item_id")
    out = {}
    for line in lines[1:]:
        cells = line.split("\t")
        if len(cells) > max(key, title):
            out[cells[key].strip()] = cells[title].strip()
    return out


def _movielens_titles(folder: Path) -> dict[str, str]:
    if (folder / "u.item").is_file():
        rows = (line.split("|") for line in
                (folder / "u.item").read_text(encoding="latin-1").splitlines())
        return {row[0]: row[1] for row in rows if len(row) > 1}
    if (folder / "movies.dat").is_file():
        rows = (line.split("::") for line in
                (folder / "movies.dat").read_text(encoding="latin-1").splitlines())
        return {row[0]: row[1] for row in rows if len(row) > 1}
    if (folder / "movies.csv").is_file():
        with (folder / "movies.csv").open(encoding="utf-8", newline="") as handle:
            return {row["movieId"]: row["title"] for row in csv.DictReader(handle)}
    return {}


# ----------------------------------------------------------------------------- output


def _label(result: RunExplanation, item_id: str, width: int = 40) -> str:
    title = result.titles.get(item_id)
    return item_id if not title else f"{item_id} {title}"[:width]


def format_explanation(result: RunExplanation, n_causes: int = 10) -> str:
    """The command's table: the item's standing, the causes by effect, the minimal set."""
    e = result.explanation
    lines = [
        f"why {_label(result, result.item_id, 60)!r} for user {result.user_id!r} "
        f"({result.model}): score {e.base_score:.4f}, rank {e.base_rank + 1} of "
        f"{result.n_candidates} candidates (served at rank {result.served_rank + 1}), top-{e.k}",
        f"deletion: {e.semantics}",
        *([] if result.refit is None else [
            f"re-fit: L2 {result.refit['l2']:.3g}; the full-history re-fit lands "
            f"{result.refit['fit_distance']:.1%} (relative distance) from the trained user"]),
        *(f"warning: {warning}" for warning in result.warnings),
        f"causes: each past interaction deleted alone, largest score drop first "
        f"({len(e.history)} in the history)",
        f"{'#':>4}  {'item':<40} {'score change':>13} {'rank after':>11} {'rank change':>12}",
    ]
    rows = e.causes if n_causes <= 0 else e.causes[:n_causes]
    in_set = set(e.minimal_set.tolist())
    for place, index in enumerate(rows, 1):
        mark = "*" if index in in_set else " "
        lines.append(
            f"{place:>4}{mark} {_label(result, result.history_ids[index]):<40} "
            f"{e.score_deltas[index]:>+13.4f} {e.rank_after[index] + 1:>11} "
            f"{int(e.rank_after[index]) - e.base_rank:>+12}")
    if result.features:
        lines.append("user features, each set to 0 alone (direct effect, the user vector kept):")
        for row in result.features[: n_causes if n_causes > 0 else None]:
            lines.append(f"      {row['feature'][:40]:<40} {row['score_change']:>+13.4f} "
                         f"{row['rank_after']:>11} {row['rank_after'] - 1 - e.base_rank:>+12}")
    if result.item_features:
        lines.append("the item's features, each set to 0 alone (direct effect, only its score "
                     "moves):")
        for row in result.item_features[: n_causes if n_causes > 0 else None]:
            lines.append(f"      {row['feature'][:40]:<40} {row['score_change']:>+13.4f} "
                         f"{row['rank_after']:>11} {row['rank_after'] - 1 - e.base_rank:>+12}")
    members = ", ".join(_label(result, result.history_ids[i], 30) for i in e.minimal_set)
    if e.base_rank >= e.k:
        lines.append(f"the item is not in the top-{e.k} (rank {e.base_rank + 1}): nothing to "
                     "remove it from")
    elif e.found:
        held = f", in {e.agree} of the run's {e.seeds} seeds" if e.seeds > 1 else ""
        title = ("counterfactual explanation held across seeds" if e.seeds > 1
                 else "minimal counterfactual explanation")
        lines.append(
            f"{title} ({e.method}): {e.size} past "
            f"interaction{'s' if e.size != 1 else ''} (* above): {members}; without them the "
            f"item falls to rank {e.rank_after_set + 1} (score {e.score_after_set:.4f}{held})")
    elif e.seeds > 1:
        lines.append(
            f"no set removes the item from the top-{e.k} in a quorum of the {e.seeds} seeds "
            f"({e.method}, extended over the whole history): after deleting "
            f"{members or 'nothing'} it is at rank {e.rank_after_set + 1} in the explained seed")
    else:
        lines.append(
            f"no counterfactual set of at most {len(e.minimal_set)} interactions found "
            f"({e.method}): after deleting {members or 'nothing'} the item is still at rank "
            f"{e.rank_after_set + 1}; try a larger --max-size")
    return "\n".join(lines)


def explanation_json(result: RunExplanation) -> dict[str, Any]:
    """The `--json` record: every number of the table, with external ids and titles."""
    e = result.explanation

    def item(index: int) -> dict[str, Any]:
        item_id = result.history_ids[index]
        out: dict[str, Any] = {"item": item_id, "score_change": float(e.score_deltas[index]),
                               "rank_after": int(e.rank_after[index]) + 1,
                               "rank_change": int(e.rank_after[index]) - e.base_rank}
        if item_id in result.titles:
            out["title"] = result.titles[item_id]
        return out

    return {
        "user": result.user_id, "item": result.item_id,
        "title": result.titles.get(result.item_id), "model": result.model,
        "k": e.k, "method": e.method, "semantics": e.semantics,
        "score": e.base_score, "rank": e.base_rank + 1, "served_rank": result.served_rank + 1,
        "n_candidates": result.n_candidates,
        "causes": [item(int(i)) for i in e.causes],
        "minimal_set": [result.history_ids[int(i)] for i in e.minimal_set],
        "size": e.size, "found": e.found, "seeds": e.seeds, "agree": e.agree,
        "score_after_set": e.score_after_set,
        "rank_after_set": e.rank_after_set + 1, "features": result.features,
        "item_features": result.item_features, "warnings": result.warnings,
        "refit": result.refit,
    }


# The image formats a chart may be written in (matplotlib's, less its raw buffers and PGF).
CHART_FORMATS = {"png", "pdf", "svg", "svgz", "jpg", "jpeg", "tif", "tiff", "webp", "eps", "ps"}


def check_chart_path(path: str | Path) -> Path:
    """`path` as the chart `plot_explanation` may write: a file that does not exist yet, with
    an image format's suffix (`.png`, `.pdf`, `.svg`, ...). Checked before an explanation is
    computed.

    Raises:
        RunError: one line naming the path: it exists (explain never replaces a file), or its
            suffix is not an image format matplotlib writes.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = Path(path)
    formats = CHART_FORMATS & set(Figure().canvas.get_supported_filetypes())
    if path.suffix.lstrip(".").lower() not in formats:
        raise RunError(f"--png {path}: expected a file name ending in an image format "
                       f"(.{', .'.join(sorted(formats))})")
    if path.exists():
        raise RunError(f"--png {path}: the file exists; explain never replaces one, so pass "
                       "another --png")
    return path


def free_chart_path(stem: str) -> Path:
    """`stem.png` in the working folder, or `stem-2.png`, `stem-3.png`, ... when it exists:
    explaining the same recommendation twice never replaces the first chart."""
    path, index = Path(f"{stem}.png"), 1
    while path.exists():
        index += 1
        path = Path(f"{stem}-{index}.png")
    return path


def plot_explanation(result: RunExplanation, path: str | Path, n_causes: int = 20) -> Path:
    """A horizontal bar chart of the score change of deleting each past interaction (the
    `n_causes` largest by size, and every member of the minimal set, highlighted); returns the
    path. The chart is written to a temporary file beside `path` and linked into place, which
    fails rather than replaces when `path` appeared meanwhile, so an interrupted write leaves
    nothing half-written and no file is ever replaced (`check_chart_path`)."""
    import os
    import uuid

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    path = check_chart_path(path)
    e = result.explanation
    order = np.argsort(-np.abs(e.score_deltas), kind="stable")[:n_causes]
    order = np.union1d(order, e.minimal_set).astype(np.int64)  # every member of the set
    order = order[np.argsort(e.score_deltas[order], kind="stable")][::-1]  # largest drop at top
    in_set = set(e.minimal_set.tolist())
    labels = [_label(result, result.history_ids[i], 38) for i in order]
    colors = ["tab:red" if i in in_set else "tab:gray" for i in order]
    figure, axis = plt.subplots(figsize=(8, 1.6 + 0.32 * max(len(order), 1)))
    axis.barh(np.arange(len(order)), e.score_deltas[order], color=colors)
    axis.set_yticks(np.arange(len(order)), labels, fontsize=8)
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set_xlabel("change of the item's score when this past interaction is deleted")
    title = _label(result, result.item_id, 50)
    axis.set_title(f"why {title} for user {result.user_id} ({result.model}, top-{e.k})",
                   fontsize=10)
    what = (f"minimal counterfactual set ({e.method}, {e.size})" if e.found
            else f"searched set ({e.method}, not found)")
    axis.legend(handles=[Patch(color="tab:red", label=what),
                         Patch(color="tab:gray", label="other past interactions")],
                fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.6 / figure.get_figheight()),
                ncol=2, frameon=False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial{path.suffix}")
    try:
        figure.savefig(partial, dpi=110)
        try:
            os.link(partial, path)  # never replaces: FileExistsError if path appeared
        except FileExistsError:
            raise RunError(f"--png {path}: the file appeared while the chart was drawn; "
                           "explain never replaces one, so pass another --png") from None
    finally:
        plt.close(figure)
        partial.unlink(missing_ok=True)
    return path
