"""Fidelity of counterfactual explanations on ML-100K, as the field measures it.

    python experiments/explain_fidelity.py --out DIR [--runs OLD/runs] [--quick] [--users N]
        [--models mf,neumf,sasrec] [--explainers greedy,effects,random,...]
        [--data ../shared/data/ml-100k] [--pack N] [--alone N] [--no-retrain]
        [--set-k K] [--max-set N] [--run-seeds N] [--residual kept|shared]

For each model (trained from `configs/ml100k_<model>.toml` through the run path into
`DIR/runs/<model>`, SASRec with `train.epochs=6` (an epoch took 100 s on the shared 2-core
machine; `--as-shipped`: as the config ships), `--quick`: tiny epochs; with `--runs
OLD/runs` the runs an earlier call trained are reused when their config and data match,
else a one-line error; DIR must be new or empty), a seeded sample of users (`--users`,
default 100, seed 0) and each user's top-1 recommendation (the catalogue less every item
the user has, in any split):

- fidelity (`causalrec_jax.explain.fidelity`; Baklanov et al. SIGIR 2025, SPINRec AAAI 2026):
  every explainer orders the history; POS@K_r,K_e with K_r = 5 at K_e = 1..5, DEL@5, INS@5
  and CDCG@5 (areas over steps 1..5), the deletion model of `explain.deletion` answering;
  ours are `greedy` (the greedy search's path at the cut-off K_r, `search.greedy_order`) and
  `effects` (the single-deletion ordering);
- retrain validity (`causalrec_jax.runs.retrain`; ACCENT, Tran et al. SIGIR 2021), MF only:
  each explainer's counterfactual set for the top-`--set-k` (default 10; 20 gives robust
  sets; greedy: the minimal set, the others their order deleted until the item leaves the
  top-K per the deletion model, of any size up to the whole history unless `--max-set`
  caps it) is removed from the training data and the model retrained from scratch with 5
  seeds the run did not train (`train.seeds=5` from the seed after the run's last: a
  one-seed run's seed 0 is explained and seeds 1-5 retrain; `--retrain-seed S`: from S;
  the run's own loss, optimiser,
  batches, epochs = the run's selected `best_epoch + 1`); `--run-seeds N` trains the MF run
  with N seeds and extends every explainer's set (greedy: by greedy steps on the standing
  across the seeds; the others: their own order) until it removes the item under seed 0's
  re-fit and `--quorum` of the N seeds' (default a majority; `explain(..., seeds=...)`),
  the greedy set minimal for seed 0 alone retrained
  beside it (`greedy_one_seed`); only found sets are removed (an explainer that found
  none gave nothing to check), so each training set loses explanations and nothing else;
  the rate at which the item really leaves the user's top-10 over the found sets, and the
  share of all (user, seed) cases where a found set held (`valid`), next to the same
  retrain with nothing removed (same seeds). A
  larger set holds more often whoever chose it, so every baseline is also retrained with
  its top items cut to the size of the greedy set of the same user (`<name>@greedy_size`,
  users whose greedy set was found): at equal size, whose items matter. The users' removals
  are packed into one edited training set per explainer (`--pack`, default all sampled
  users at once); `--alone N` also retrains N users' greedy sets one user at a time to
  measure what packing changes.

Writes `DIR/table.md`, `DIR/table.csv` (one row per model and explainer), `DIR/curves.csv`
(every step), `DIR/retrain.csv` (per user, explainer and seed), `DIR/fidelity.png` and, with
the retrain, `DIR/retrain.png`. `--combine A B ...` merges earlier output folders into DIR.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax.config import dumps_config, load_config
from causalrec_jax.data.fingerprint import check_unchanged
from causalrec_jax.data.loader import load_dataset
from causalrec_jax.data.split import make_split
from causalrec_jax.errors import CausalRecError, ConfigError
from causalrec_jax.explain import explain, fidelity, search
from causalrec_jax.explain.baselines import BASELINES, baseline_order
from causalrec_jax.explain.deletion import RESIDUALS
from causalrec_jax.report.tables import write_csv
from causalrec_jax.runs import retrain as retraining
from causalrec_jax.runs import train as run_train
from causalrec_jax.runs.explain import deletion_model, training_rows
from causalrec_jax.runs.folder import fresh_out
from causalrec_jax.runs.load import load_run
from causalrec_jax.runs.script import run_script
from causalrec_jax.runs.serve import known_items, served_seeds

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"mf": [], "neumf": [], "sasrec": ["train.epochs=6"]}
QUICK = ["train.epochs=3", "train.patience=2"]
QUICK_MODEL = {"sasrec": ["eval.sampled_negatives=0"]}  # tiny catalogues
OURS = ("greedy", "effects")
EXPLAINERS = OURS + tuple(BASELINES)
K_R, K_E, K_RETRAIN, RETRAIN_SEEDS = 5, 5, 10, 5
AT_GREEDY_SIZE = "@greedy_size"  # a baseline's top items, as many as the greedy set holds
# with --run-seeds: the greedy set minimal for the explained seed alone, retrained beside the
# held one
ONE_SEED = "greedy_one_seed"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny epochs, few users")
    parser.add_argument("--users", type=int, default=None, help="users sampled (default 100)")
    parser.add_argument("--models", default="mf,neumf,sasrec")
    parser.add_argument("--explainers", default=",".join(EXPLAINERS))
    parser.add_argument("--data", default="../shared/data/ml-100k")
    parser.add_argument("--seed", type=int, default=0, help="the user sample's seed")
    parser.add_argument("--pack", type=int, default=0,
                        help="users per retrained training set (0: all at once)")
    parser.add_argument("--alone", type=int, default=0,
                        help="also retrain this many users one at a time (greedy sets)")
    parser.add_argument("--no-retrain", action="store_true")
    parser.add_argument("--as-shipped", action="store_true",
                        help="train each model as its config ships (SASRec: no 6-epoch cap)")
    parser.add_argument("--max-set", type=int, default=None,
                        help="the largest counterfactual set searched for the retrain check "
                             "(default: the whole history)")
    parser.add_argument("--set-k", type=int, default=K_RETRAIN,
                        help="the sets of the retrain check remove the item from this top-K "
                             f"(>= {K_RETRAIN}; above it: robust sets, checked at the top-"
                             f"{K_RETRAIN})")
    parser.add_argument("--run-seeds", type=int, default=1,
                        help="train the MF run with this many seeds; above 1 every retrained "
                             "set is extended until it holds under seed 0 and --quorum of them")
    parser.add_argument("--quorum", type=int, default=None,
                        help="with --run-seeds: how many seeds must agree (default: a "
                             "majority)")
    parser.add_argument("--retrain-seed", type=int, default=None,
                        help="the first of the 5 retrain seeds (default: the seed after the "
                             "run's last, so no explanation saw their models; 0: the explained "
                             "seed among them, as releases before --run-seeds did)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="reuse the trained runs in RUNS/<model> (e.g. an earlier "
                             "OUT/runs) when they match this script's configs")
    parser.add_argument("--combine", nargs="+", type=Path, default=None,
                        help="compute nothing: merge these output folders into --out")
    parser.add_argument("--residual", default="kept",
                        help="MF/NeuMF deletion model: the part of the served score the "
                             "re-fit does not reproduce is kept whole or shared among the "
                             "history (`causalrec explain --residual`)")
    parser.add_argument("--max-history", type=int, default=128,
                        help="sample users with at most this many training items (compute)")
    args = parser.parse_args(argv)
    for name, chosen, known in (("model", args.models, MODELS),
                                ("explainer", args.explainers, EXPLAINERS)):
        for value in chosen.split(","):
            if value not in known:
                raise ConfigError(f"unknown {name} {value!r}: expected one of "
                                  f"{', '.join(known)}")
    for flag, value, low in (("--users", args.users, 1), ("--max-history", args.max_history, 1),
                             ("--pack", args.pack, 0), ("--alone", args.alone, 0),
                             ("--max-set", args.max_set, 1), ("--set-k", args.set_k, K_RETRAIN),
                             ("--run-seeds", args.run_seeds, 1),
                             ("--retrain-seed", args.retrain_seed, 0)):
        if value is not None and value < low:
            raise ConfigError(f"{flag} {value}: expected an integer >= {low}")
    if args.residual not in RESIDUALS:
        raise ConfigError(f"--residual {args.residual!r}: expected one of "
                          f"{', '.join(RESIDUALS)}")
    if args.residual != "kept" and not {"mf", "neumf"} & set(args.models.split(",")):
        raise ConfigError(f"--residual {args.residual}: the re-fit's residual applies to mf "
                          "and neumf, and --models has neither")
    if args.quorum is not None and not (args.run_seeds > 1
                                        and 1 <= args.quorum <= args.run_seeds):
        raise ConfigError(f"--quorum {args.quorum}: expected --run-seeds above 1 and 1 to "
                          f"--run-seeds ({args.run_seeds})")
    if args.run_seeds > 1 and ("mf" not in args.models.split(",") or args.no_retrain):
        raise ConfigError(f"--run-seeds {args.run_seeds}: the seeds serve the retrain check, "
                          "which runs on mf without --no-retrain")
    if (args.run_seeds > 1 and args.retrain_seed is not None
            and args.retrain_seed < args.run_seeds):
        raise ConfigError(f"--retrain-seed {args.retrain_seed}: the explanations saw seeds 0 to "
                          f"{args.run_seeds - 1} (--run-seeds); expected >= {args.run_seeds}")
    if args.alone and "greedy" not in args.explainers.split(","):
        raise ConfigError("--alone retrains without the greedy sets: add greedy to --explainers")
    return args


def trained_run(model: str, args: argparse.Namespace) -> Path:
    """The model's run folder: `--runs/<model>` reused when it holds a finished run of the
    config this script trains (checked key by key, and the data by its fingerprint);
    otherwise trained through the run path into `--out/runs/<model>`."""
    quick = QUICK + QUICK_MODEL.get(model, []) if args.quick else []
    capped = [] if args.as_shipped else MODELS[model]
    seeds = [f"train.seeds={args.run_seeds}"] if model == "mf" and args.run_seeds > 1 else []
    overrides = [f'data.path="{args.data}"', *capped, *quick, *seeds]
    config = load_config(ROOT / "configs" / f"ml100k_{model}.toml", overrides)
    if args.runs is not None and (args.runs / model / "metrics.json").exists():
        folder = args.runs / model
        check_reused(folder, config)
        return folder
    folder = args.out / "runs" / model
    if model == "sasrec":
        run_train.sequence_run(config, folder, quiet=True)
    else:
        run_train.train_run(config, folder, quiet=True)
    return folder


def check_reused(folder: Path, config) -> None:
    """ConfigError (one line) when the run in `folder` was trained with another config than
    `config` (data.path aside) or on other data than `config.data` reads (the fingerprint).
    The stored config is read through `load_config`, so a key added to the schema after the
    run was trained counts at its default (the value the run trained with)."""
    try:
        stored = tomllib.loads(dumps_config(load_config(folder / "config.toml")))
    except (OSError, tomllib.TOMLDecodeError, ConfigError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{folder / 'config.toml'}: not a readable run config ({reason}); "
                          "remove the run or pass another --runs") from None
    wanted = tomllib.loads(dumps_config(config))
    differ = sorted(f"{section}.{key}" for section in wanted.keys() | stored.keys()
                    for key in wanted.get(section, {}).keys() | stored.get(section, {}).keys()
                    if (section, key) != ("data", "path")
                    and wanted.get(section, {}).get(key) != stored.get(section, {}).get(key))
    if differ:
        raise ConfigError(f"{folder}: trained with other values of {', '.join(differ[:5])} "
                          "than this script trains; remove it or pass another --runs")
    run = load_run(folder)
    dataset, _ = load_dataset(config.data, config.sim)  # the data this call reads (--data)
    check_unchanged(run.data, dataset, str(folder))


def explain_user(model, target: int, exclude: np.ndarray, names: list[str], key,
                 retrain_sets: bool, max_set: int | None = None, set_k: int = K_RETRAIN,
                 seed_models: list | None = None, quorum: int | None = None
                 ) -> dict[str, dict[str, Any]]:
    """Per explainer: its `curves` (fidelity at K_r) and, with `retrain_sets`, its
    counterfactual `set` at the top-`set_k` (history item indices, at most `max_set`, None:
    the whole history; with `seed_models`, the user's deletion models under the run's other
    seeds, extended until it holds under `model` and `quorum` of all, None: a majority),
    whether it was `found`, the target's
    1-based rank the deletion model gives without it (`refit_rank`) and the explainer's
    `ranking` of the history (item indices, most explaining first: the size-matched sets).
    With `seed_models`, `ONE_SEED` holds greedy's set minimal for `model` alone."""
    args = (model.score_fn, model.data, jnp.asarray(model.valid), jnp.asarray(target),
            jnp.asarray(exclude))
    chunk = model.chunk_size
    scores_fn = fidelity.batch_scorer(model)
    orders: dict[str, np.ndarray] = {}
    single = search.single_deletions(*args, k=K_R, chunk_size=chunk)
    for name in names:
        if name == "greedy":
            orders[name] = np.asarray(search.greedy_order(*args, k=K_R, n_steps=K_E,
                                                          chunk_size=chunk))
        elif name == "effects":
            orders[name] = np.asarray(search.strongest_first(
                single.after.rank, single.after.margin, model.valid))
        else:
            try:
                orders[name] = baseline_order(name, model, target, key=key)
            except ValueError:  # influence functions on a sequential model
                continue
    out: dict[str, dict[str, Any]] = {}
    for name, order in orders.items():
        out[name] = {"curves": fidelity.fidelity_curves(
            scores_fn, order, model.valid, target, exclude, n_steps=K_E)}
    if retrain_sets:  # each explainer's minimal set at the top-10, as `explain` finds it
        # the effects order of the sets is the one at the sets' cut-off, as `explain` has it
        at_set_k = search.single_deletions(*args, k=set_k, chunk_size=chunk).after
        size = len(model.valid) if max_set is None else max_set
        for name in orders:
            explanation = explain(model, target, k=set_k, method=name, max_size=size,
                                  exclude=exclude, key=key, chunk_size=chunk,
                                  seeds=seed_models or (), quorum=quorum)
            out[name].update(_set_record(explanation))
            order = (np.asarray(search.strongest_first(at_set_k.rank, at_set_k.margin,
                                                       model.valid))
                     if name == "effects" else orders[name])
            out[name]["ranking"] = model.history[order[model.valid[order]]]
        if seed_models and "greedy" in orders:
            out[ONE_SEED] = _set_record(explain(model, target, k=set_k, max_size=size,
                                                exclude=exclude, chunk_size=chunk))
    return out


def _set_record(explanation) -> dict[str, Any]:
    return {"set": explanation.history[explanation.minimal_set], "found": explanation.found,
            "refit_rank": explanation.rank_after_set + 1}


def sample_users(run, n: int, seed: int, max_history: int) -> np.ndarray:
    """`n` users drawn without replacement (seeded) among those with 1..`max_history`
    training interactions (the same users for every model of one dataset and split)."""
    counts = np.bincount(run.data["train_user"], minlength=len(run.user_ids))
    eligible = np.flatnonzero((counts >= 1) & (counts <= max_history))
    if not len(eligible):
        raise ConfigError(f"no user has 1 to {max_history} training interactions: raise "
                          "--max-history")
    chosen = np.random.default_rng(seed).choice(eligible, min(n, len(eligible)), replace=False)
    return np.sort(chosen)


def explain_model(model_name: str, run_dir: Path, users: np.ndarray, names: list[str],
                  retrain_sets: bool, max_set: int | None = None, set_k: int = K_RETRAIN,
                  quorum: int | None = None, residual: str = "kept"
                  ) -> tuple[list[dict[str, Any]], float]:
    """Explanations of every sampled user's top-1 item under the run's first seed (a record
    per user); the retrain sets of a run of several seeds hold under the first and `quorum`
    of them (None: a majority)."""
    run = load_run(run_dir)
    n_seeds = len(served_seeds(run)) if retrain_sets else 1
    rows = None if model_name == "sasrec" else training_rows(run.config, run.data)
    scores = np.asarray(run.score_all_fn(0)(jnp.asarray(users, jnp.int32)))
    records, tic = [], time.perf_counter()
    for row, user in enumerate(users):
        known = known_items(run, int(user))
        exclude = np.zeros(len(run.item_ids), bool)
        exclude[known] = True
        target = int(np.argmax(np.where(exclude, -np.inf, scores[row])))
        try:
            model = deletion_model(run, int(user), rows=rows, residual=residual)
        except CausalRecError:  # no training row the model reads
            continue
        if not model.valid.any():
            continue
        key = jax.random.fold_in(jax.random.key(0), int(user))
        if row % 10 == 0:
            print(f"{model_name}: user {row + 1} of {len(users)}, "
                  f"{time.perf_counter() - tic:.0f} s", flush=True)
        refit = ({} if "fit_distance" not in model.data else {
            "fit_distance": float(model.data["fit_distance"]), "l2": float(model.data["l2"])})
        others = [deletion_model(run, int(user), rows=rows, seed_index=index,
                                 residual=residual)
                  for index in range(1, n_seeds)]
        records.append({"user": int(user), "target": target, "exclude": exclude, **refit,
                        "explainers": explain_user(model, target, exclude, names, key,
                                                   retrain_sets, max_set, set_k, others,
                                                   quorum)})
    return records, time.perf_counter() - tic


def fidelity_rows(model_name: str, records: list[dict[str, Any]], names: list[str]):
    """Table rows (means over users) and the per-step curves."""
    rows, curve_rows = [], []
    for name in names:
        curves = [r["explainers"][name]["curves"] for r in records if name in r["explainers"]]
        if not curves:
            continue
        stacked = fidelity.stack_curves(curves)
        # a user whose re-fit diverged (a non-finite score: its rank reads 0) is counted in
        # `nonfinite` and left out of every mean
        finite = (np.isfinite(np.asarray(stacked.removal_probability)).all(-1)
                  & np.isfinite(np.asarray(stacked.insertion_probability)).all(-1)
                  & np.isfinite(np.asarray(stacked.base_probability)))
        row = {"model": model_name, "explainer": name, "users": len(curves),
               "nonfinite": int((~finite).sum())}
        if not finite.any():  # every re-fit diverged: a row and curves of NaN
            rows.append(row)
            curve_rows += [{"model": model_name, "explainer": name, "k_e": step + 1,
                            **dict.fromkeys(("pos", "removal_probability",
                                             "insertion_probability", "cdcg"), float("nan"))}
                           for step in range(K_E)]
            continue
        stacked = fidelity.FidelityCurves(*(leaf[finite] for leaf in stacked))
        for k_e in range(1, K_E + 1):
            row[f"pos@{K_R},{k_e}"] = float(jnp.mean(fidelity.pos_at(stacked, K_R, k_e)))
        row[f"del@{K_E}"] = float(jnp.mean(fidelity.del_at(stacked, K_E)))
        row[f"ins@{K_E}"] = float(jnp.mean(fidelity.ins_at(stacked, K_E)))
        row[f"cdcg@{K_E}"] = float(jnp.mean(fidelity.cdcg_at(stacked, K_E)))
        rows.append(row)
        for step in range(K_E):
            curve_rows.append({
                "model": model_name, "explainer": name, "k_e": step + 1,
                "pos": float(jnp.mean(stacked.removal_rank[:, step] < K_R)),
                "removal_probability": float(jnp.mean(stacked.removal_probability[:, step])),
                "insertion_probability": float(jnp.mean(stacked.insertion_probability[:, step])),
                "cdcg": float(jnp.mean(1 / jnp.log2(stacked.removal_rank[:, step] + 2.0)))})
    return rows, curve_rows


def retrain_validity(run_dir: Path, records: list[dict[str, Any]], names: list[str],
                     args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], list, dict]:
    """ACCENT's retrain check of every explainer's top-10 set (MF), with `RETRAIN_SEEDS`
    seeds the run did not train (those after its own: no explanation saw their models)."""
    per_seed = json.loads((run_dir / "metrics.json").read_text())["per_seed"]
    epochs = per_seed[0]["best_epoch"] + 1
    config = load_config(run_dir / "config.toml")
    dataset, _ = load_dataset(config.data, config.sim)
    run_seed = config.run.seed
    split = make_split(dataset, config.data, seed=run_seed)  # the run's split
    first = (run_seed + len(per_seed) if args.retrain_seed is None
             else args.retrain_seed)
    config = load_config(run_dir / "config.toml", [f"train.seeds={RETRAIN_SEEDS}",
                                                   f"run.seed={first}"])
    setup = retraining.retrain_setup(config, split)
    known = np.stack([r["exclude"] for r in records])
    known_all = np.zeros((setup.spec.n_users, setup.spec.n_items), bool)
    known_all[[r["user"] for r in records]] = known
    pack = args.pack or len(records)
    groups = [records[i: i + pack] for i in range(0, len(records), pack)]
    # only found sets are removed (an explainer that found none gave no explanation to
    # check), so every training set loses explanations and nothing else
    edits, queries, labels = [], [], []

    def add(label: str, removal: dict[int, np.ndarray], members) -> None:
        if members:
            edits.append(removal)
            queries.append([(r["user"], r["target"]) for r in members])
            labels.append(label)

    for group in groups:
        add("nothing", {}, group)
    if any(ONE_SEED in r["explainers"] for r in records):
        names = [*names, ONE_SEED]
    for name in names:
        for group in groups:
            members = [r for r in group if name in r["explainers"]
                       and r["explainers"][name]["found"]]
            add(name, {r["user"]: r["explainers"][name]["set"] for r in members}, members)
    baselines = ([name for name in names if name not in ("greedy", ONE_SEED)]
                 if "greedy" in names else [])
    for name in baselines:  # each baseline's top items, as many as greedy's set holds
        for group in groups:
            members = [r for r in group if name in r["explainers"]
                       and r["explainers"]["greedy"]["found"]]
            add(f"{name}{AT_GREEDY_SIZE}", {r["user"]: r["explainers"][name]["ranking"][
                : len(r["explainers"]["greedy"]["set"])] for r in members}, members)
    alone = [r for r in records if r["explainers"]["greedy"]["found"]][: args.alone]
    for r in alone:  # one user per training set: what packing changes
        edits.append({r["user"]: r["explainers"]["greedy"]["set"]})
        queries.append([(r["user"], r["target"])])
        labels.append("greedy_alone")
    width = max(len(q) for q in queries)
    users = np.asarray([[u for u, _ in q] + [q[0][0]] * (width - len(q)) for q in queries])
    targets = np.asarray([[t for _, t in q] + [q[0][1]] * (width - len(q)) for q in queries])
    tic = time.perf_counter()
    params, bad = retraining.retrain(setup, retraining.edit_arrays(setup, edits), epochs=epochs,
                                     chunk_size=2)
    ranks = retraining.target_ranks(setup, params, users, targets, known_all)  # [S, M, Q]
    seconds = time.perf_counter() - tic
    per_user = []
    by_user = {r["user"]: r for r in records}
    for m, (label, q) in enumerate(zip(labels, queries, strict=True)):
        for j, (user, target) in enumerate(q):
            entry = by_user[user]["explainers"].get(label.removesuffix("_alone"))
            # the size-matched sets: the deletion model's rank was not computed for them
            matched = label.endswith(AT_GREEDY_SIZE)
            for s, seed in enumerate(setup.seeds):
                per_user.append({
                    "explainer": label, "user": user, "target": target, "seed": seed,
                    "set_size": len(edits[m].get(user, ())), "found": True,
                    "refit_rank_after": ("" if matched else 1 if entry is None
                                         else int(entry["refit_rank"])),
                    "rank_after_retrain": int(ranks[s, m, j]) + 1,
                    "left_top10": bool(ranks[s, m, j] >= K_RETRAIN)})
    for name in names:  # the users an explainer found no set for: nothing retrained
        for r in records:
            if name in r["explainers"] and not r["explainers"][name]["found"]:
                per_user += [{"explainer": name, "user": r["user"], "target": r["target"],
                              "seed": seed, "set_size": len(r["explainers"][name]["set"]),
                              "found": False, "refit_rank_after": "",
                              "rank_after_retrain": "", "left_top10": ""}
                             for seed in setup.seeds]
    summary = retrain_summary(per_user)
    unedited = [row for row in per_user if row["explainer"] == "nothing"]
    meta = {"epochs": epochs, "run_seeds": [run_seed + i for i in range(len(per_seed))],
            "retrain_seeds": setup.seeds, "seconds": round(seconds, 1),
            "models_trained": int(np.prod(bad.shape)), "non_finite": int((bad >= 0).sum()),
            "users_per_training_set": pack,
            "unedited_top1": float(np.mean([r["rank_after_retrain"] == 1 for r in unedited]))}
    if args.alone:
        alone = {(row["user"], row["seed"]): row["left_top10"] for row in per_user
                 if row["explainer"] == "greedy_alone"}
        packed = {(row["user"], row["seed"]): row["left_top10"] for row in per_user
                  if row["explainer"] == "greedy" and (row["user"], row["seed"]) in alone}
        meta["alone_vs_packed_agreement"] = float(np.mean(
            [alone[key] == packed[key] for key in alone]))
    return summary, per_user, meta


def retrain_summary(per_user: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per explainer, from the rows of `retrain.csv` (values may be the CSV's strings; a user
    without a found set has rows with nothing retrained): `left_found` (share of (user, seed)
    with a found set where the item left the top-10 after retraining), `valid` (the same
    over every user: the cases an explainer's explanation holds), `found`, `size` (mean set
    size), `found_size` (over the found sets), `at_greedy_size` (`left_found` of the
    explainer's `@greedy_size` rows; greedy: its own), `n`; `left` is `valid` (the share of
    all (user, seed) where the item left)."""
    def flag(value) -> bool:
        return value is True or value == "True"

    summary: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(row["explainer"] for row in per_user):
        mine = [row for row in per_user if row["explainer"] == label]
        left = np.asarray([flag(row["left_top10"]) for row in mine])
        found = np.asarray([flag(row["found"]) for row in mine])
        summary[label] = {
            "left": float(left.mean()), "n": len(mine),
            "left_found": float(left[found].mean()) if found.any() else None,
            "valid": float((left & found).mean()), "found": float(found.mean()),
            "size": float(np.mean([int(row["set_size"]) for row in mine])),
            "found_size": (float(np.mean([int(row["set_size"]) for row, hit in zip(
                mine, found, strict=True) if hit])) if found.any() else None)}
    for label, entry in summary.items():
        entry["at_greedy_size"] = (entry["left_found"] if label == "greedy" else
                                   summary.get(label + AT_GREEDY_SIZE, {}).get("left_found"))
    return summary


def write_outputs(out: Path, rows, curve_rows, retrain, meta, protocol: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    columns = ["model", "explainer", "users", "nonfinite",
               *[f"pos@{K_R},{k}" for k in range(1, K_E + 1)],
               f"del@{K_E}", f"ins@{K_E}", f"cdcg@{K_E}", "retrain_left@10_found",
               "retrain_valid@10", "retrain_left@10_unedited",
               "set_size@10", "found@10", "found_set_size@10",
               "retrain_left@10_at_greedy_size"]
    shown = {row["explainer"] for row in rows if row["model"] == "mf"}
    rows = [*rows, *({"model": "mf", "explainer": label} for label in retrain
                     if label not in shown and label != "nothing"
                     and not label.endswith(("_alone", AT_GREEDY_SIZE)))]
    for row in rows:
        if row["model"] == "mf" and retrain and row["explainer"] in retrain:
            entry = retrain[row["explainer"]]
            row.update({"retrain_left@10_found": entry["left_found"],
                        "retrain_valid@10": entry["valid"],
                        "retrain_left@10_unedited": retrain["nothing"]["left"],
                        "set_size@10": entry["size"], "found@10": entry["found"],
                        "found_set_size@10": entry["found_size"],
                        "retrain_left@10_at_greedy_size": entry["at_greedy_size"]})
    write_csv(out / "table.csv", rows, columns)
    write_csv(out / "curves.csv", curve_rows, list(curve_rows[0]))
    lines = [protocol, "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row.get(c, "") for c in columns]
        lines.append("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c)
                                        for c in cells) + " |")
    if meta:
        lines += ["", "Retrain (MF): " + json.dumps(meta)]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    plot(out / "fidelity.png", curve_rows)
    if retrain:
        plot_retrain(out / "retrain.png", retrain)


def plot_retrain(path: Path, summary: dict[str, dict[str, Any]]) -> None:
    """Bars per explainer: the validity of its found sets, the cases it holds, and how often
    it finds a set, with the rate of the retrain with nothing removed as a reference line."""
    from causalrec_jax.report.plots import BarPanel, bar_panels

    names = [name for name in summary if name != "nothing" and not name.endswith("_alone")
             and not name.endswith(AT_GREEDY_SIZE)]
    colors = ["tab:blue" if name in (*OURS, ONE_SEED) else "tab:grey" for name in names]
    unedited = summary["nothing"]["left"]
    reference = [(unedited, "nothing removed", ":")]
    bar_panels(path, names, [
        BarPanel("explanations found (share of users)",
                 [summary[n]["found"] for n in names], color=colors, top=1.1,
                 value_format="{:.2f}", ylabel="share of users"),
        BarPanel(f"item left the top-{K_RETRAIN} after retraining,\nover the found sets",
                 [summary[n]["left_found"] for n in names], color=colors, top=1.1,
                 references=reference, ylabel="share of (user, seed)"),
        BarPanel("valid: found, and the item left\n(over all users)",
                 [summary[n]["valid"] for n in names], color=colors, top=1.1,
                 references=reference, ylabel="share of (user, seed)"),
        BarPanel("item left, the explainer's top items\nat the greedy set's size",
                 [summary[n]["at_greedy_size"] for n in names],
                 color=colors, top=1.1, references=reference,
                 ylabel="share of (user, seed)"),
    ], title=f"Retrain validity (ACCENT), MF: sets removed from the training data, retrained "
             f"{RETRAIN_SEEDS} seeds; blue: ours")


def plot(path: Path, curve_rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in curve_rows))
    figure, axes = plt.subplots(2, len(models), figsize=(4.6 * len(models), 7.5), squeeze=False)
    names = list(dict.fromkeys(r["explainer"] for r in curve_rows))
    colors = dict(zip(names, plt.cm.tab10.colors, strict=False))
    for column, model in enumerate(models):
        for name in names:
            mine = [r for r in curve_rows if r["model"] == model and r["explainer"] == name]
            if not mine:
                continue
            style = "-" if name in OURS else "--"
            width = 2.4 if name in OURS else 1.3
            steps = [r["k_e"] for r in mine]
            axes[0, column].plot(steps, [r["pos"] for r in mine], style, marker="o",
                                 color=colors[name], linewidth=width, label=name)
            axes[1, column].plot(steps, [r["removal_probability"] for r in mine], style,
                                 marker="o", color=colors[name], linewidth=width, label=name)
        mine = [r["removal_probability"] for r in curve_rows if r["model"] == model]
        if not np.isfinite(mine).any():
            axes[1, column].text(0.5, 0.5, "no finite probability:\nthe re-fits diverged",
                                 ha="center", va="center", transform=axes[1, column].transAxes)
        axes[0, column].set_title(f"{model}: POS@{K_R},K_e", fontsize=11)
        axes[0, column].set_ylim(-0.03, 1.03)
        axes[1, column].set_title(f"{model}: DEL curve", fontsize=11)
        axes[1, column].set_yscale("log")
        for row in range(2):
            axes[row, column].set_xlabel("K_e: the explainer's top items removed")
            axes[row, column].set_xticks(range(1, K_E + 1))
            axes[row, column].grid(alpha=0.3)
        axes[0, column].set_ylabel(f"share of users with the item still in top-{K_R}\n"
                                   "(lower is better)")
        axes[1, column].set_ylabel("item's mean softmax probability\n(lower is better)")
    axes[0, 0].legend(fontsize=8, title="explainer (solid: ours)", title_fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def combine(out: Path, folders: list[Path]) -> Path:
    """Merges the tables, curves and retrain rows of several output folders (runs of this
    script on different models) into `out`, protocols kept one per line."""
    rows, curve_rows, protocols, retrain_rows, meta = [], [], [], [], {}
    for folder in folders:
        rows += list(csv.DictReader((folder / "table.csv").open()))
        curve_rows += [{**r, "k_e": int(r["k_e"]), **{k: float(r[k]) for k in (
            "pos", "removal_probability", "insertion_probability", "cdcg")}}
                       for r in csv.DictReader((folder / "curves.csv").open())]
        lines = (folder / "table.md").read_text().splitlines()
        protocols.append(lines[0])
        for line in lines:
            if line.startswith("Retrain (MF): "):
                meta = json.loads(line.removeprefix("Retrain (MF): "))
        if (folder / "retrain.csv").exists():
            retrain_rows = list(csv.DictReader((folder / "retrain.csv").open()))
    for row in rows:
        for name, value in row.items():
            try:
                text = name in ("model", "explainer", "users", "nonfinite")
                row[name] = value if text else float(value)
            except ValueError:
                pass
    # the retrain columns recomputed from the rows (the same numbers, and `valid` for folders
    # written before it)
    summary = retrain_summary(retrain_rows) if retrain_rows and "found" in retrain_rows[0] else {}
    write_outputs(out, rows, curve_rows, summary, meta, "\n\n".join(protocols))
    if retrain_rows:
        write_csv(out / "retrain.csv", retrain_rows, list(retrain_rows[0]))
    return out / "table.md"


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    args.out = fresh_out(args.out, "explain_fidelity")
    if args.combine:
        return combine(args.out, args.combine)
    n_users = args.users or (8 if args.quick else 100)
    names = args.explainers.split(",")
    rows, curve_rows, retrain, meta, timings, refits = [], [], {}, {}, {}, {}
    for model_name in args.models.split(","):
        run_dir = trained_run(model_name, args)
        run = load_run(run_dir)
        users = sample_users(run, n_users, args.seed, args.max_history)
        with_retrain = model_name == "mf" and not args.no_retrain
        records, seconds = explain_model(model_name, run_dir, users, names, with_retrain,
                                         args.max_set, args.set_k, args.quorum,
                                         args.residual)
        timings[model_name] = round(seconds, 1)
        if records and "fit_distance" in records[0]:
            refits[model_name] = {
                name: float(f"{np.median([r[name] for r in records]):.3g}")
                for name in ("fit_distance", "l2")}
        model_rows, model_curves = fidelity_rows(model_name, records, names)
        rows += model_rows
        curve_rows += model_curves
        if with_retrain:
            retrain, per_user, meta = retrain_validity(run_dir, records, names, args)
            args.out.mkdir(parents=True, exist_ok=True)
            write_csv(args.out / "retrain.csv", per_user, list(per_user[0]))
        write_outputs(args.out, rows, curve_rows, retrain, meta, protocol_line(
            n_users, args.seed, timings, args.max_history, args.max_set, refits, args.set_k,
            args.run_seeds, args.quorum, args.retrain_seed, args.residual))
    return args.out / "table.md"


def protocol_line(n_users: int, seed: int, timings: dict[str, float], max_history: int,
                  max_set: int | None, refits: dict[str, dict[str, float]] | None = None,
                  set_k: int = K_RETRAIN, run_seeds: int = 1, quorum: int | None = None,
                  retrain_seed: int | None = None, residual: str = "kept") -> str:
    size = "any size" if max_set is None else f"at most {max_set} items"
    agree = run_seeds // 2 + 1 if quorum is None else quorum
    retrain = ("the ones after the run's: no explanation saw them" if retrain_seed is None
               else f"from {retrain_seed}")
    held = (f"; MF trained with {run_seeds} seeds (vmapped), every explainer's set extended "
            f"(its own order; greedy: by greedy steps across the seeds) until it removes the "
            f"item under seed 0's re-fit and {agree} of the {run_seeds} seeds' "
            f"({'a majority' if quorum is None else '--quorum'}), {ONE_SEED}: greedy's set "
            "minimal for seed 0 alone" if run_seeds > 1 else "")
    return (
        f"Protocol: ML-100K; {n_users} users sampled (seed {seed}) among those with at most "
        f"{max_history} training interactions (compute: a greedy step re-fits H histories), "
        "each user's top-1 item over the catalogue less every item the user has (any "
        "split); histories as each model reads them (MF/NeuMF: the training items, re-fit "
        "deletion with the calibrated L2 of `explain --refit-l2 calibrated`, the served "
        f"score's residual {'kept whole' if residual == 'kept' else 'shared among the history'}"
        f" (`--residual {residual}`); SASRec: its "
        f"window, drop and shift). Fidelity: K_r = {K_R}, K_e = 1..{K_E}; POS@{K_R},K_e at "
        f"K_e removed items, DEL/INS/CDCG@{K_E} areas over steps 1..{K_E}, probability = "
        "softmax over the candidates; lower is better except INS. Retrain (MF only): sets "
        f"for the top-{set_k} ({size}){held}, retrained with {RETRAIN_SEEDS} seeds "
        f"({retrain}); "
        "only found sets are removed (found@10: the users whose set removes the item from "
        f"the top-{set_k} per the deletion model); retrain_left@10_found: share of (user, "
        f"seed) with a found set where the item left the top-{K_RETRAIN} after retraining; "
        "retrain_valid@10: the same over every user (found and left); "
        "_unedited: the same retrain with nothing removed; _at_greedy_size: each "
        "explainer's top items, as many as the greedy set of the same user holds (users "
        "whose greedy set was found). Seconds explaining: "
        f"{json.dumps(timings)}. Re-fits, medians over the users (relative distance of the "
        f"full-history re-fit from the trained user; L2): {json.dumps(refits or {})}.")


if __name__ == "__main__":
    raise SystemExit(run_script(main))
