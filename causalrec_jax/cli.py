"""The `causalrec` command line (DESIGN.md §2).

Subcommands: `train` (also uplift runs, when `uplift.method` is set), `tune`, `evaluate`,
`recommend`, `simulate`, `ope`, `data`, `track` (a run folder exported to TensorBoard or
MLflow, `runs.track`) and `report` (tables and plots comparing run folders, `report.write`).
Errors the user can fix (a malformed file, a wrong config key, an unknown user id, a diverging
loss) print one line naming the file, line or key and exit with status 2, never a traceback.

`explain` prints why a run recommends an item (counterfactual deletions, `runs.explain`).

Each subcommand imports what it uses inside its handler, on purpose: `causalrec --help` and
`causalrec data` on a file start without loading jax (seconds saved on every call).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from causalrec_jax.errors import CausalRecError

if TYPE_CHECKING:
    from causalrec_jax.config import Config


def _parse_columns(text: str) -> dict[str, str]:
    """`user=uid,item=sku` -> {"user": "uid", "item": "sku"}."""
    columns = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected role=column, got {part!r}")
        role, column = part.split("=", 1)
        columns[role.strip()] = column.strip()
    return columns


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (parsed as TOML); repeatable",
    )


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (`causalrec train: error: ...`, exit
    status 2), as every other refusal of the command is; `--help` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `causalrec` command."""
    parser = _Parser(prog="causalrec", description="Causal recommender systems in JAX.")
    parser.add_argument("--version", action="version", version=f"causalrec {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train and evaluate a model; write a run folder")
    train.add_argument("--out", help="run folder (default: runs/<config name>)")
    train.add_argument("--resume", action="store_true",
                       help="continue the stopped run in --out (its own config.toml)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--distributed", action="store_true",
                       help="one of several processes training one run (jax.distributed: "
                            "SLURM, Open MPI, Kubernetes, or JAX_COORDINATOR_ADDRESS, "
                            "JAX_NUM_PROCESSES, JAX_PROCESS_ID); the first writes --out")
    _add_config_arguments(train)
    train.set_defaults(handler=_command_train)

    tune = commands.add_parser("tune", help="search hyperparameters (populations vmapped)")
    tune.add_argument("--space", required=True, help="search space TOML file")
    tune.add_argument("--out", required=True, help="search folder")
    tune.add_argument("--sampler", default="grid", help="grid, random or optuna")
    tune.add_argument("--trials", type=int, help="number of trials (random, optuna)")
    tune.add_argument("--metric", help="validation metric to select on, e.g. valid.ndcg@10; "
                      "auto: valid.auc when the validation split's AUC has a standard error of "
                      "at most 0.03 (or the loss is not mse), else valid.mse")
    tune.add_argument("--seeds", type=int, help="seeds per trial (default train.seeds)")
    tune.add_argument("--max-members", type=int, default=64,
                      help="most (trial, seed) members in one vmapped program")
    tune.add_argument("--resume", action="store_true", help="continue, skipping done trials")
    _add_config_arguments(tune)
    tune.set_defaults(handler=_command_tune)

    evaluate = commands.add_parser("evaluate", help="evaluate a run's best parameters again")
    evaluate.add_argument("--run", required=True, help="run folder")
    evaluate.add_argument("--split", default="test", help="test, valid or train")
    evaluate.add_argument("--write", action="store_true",
                          help="replace the run's blocks in metrics.json with these")
    evaluate.set_defaults(handler=_command_evaluate)

    recommend = commands.add_parser(
        "recommend", help="top-K items for a user of a run, or for every user (--all)")
    recommend.add_argument("--run", required=True, help="run folder")
    recommend.add_argument("--user", help="the user's id in the dataset (one list, printed)")
    recommend.add_argument("--all", action="store_true",
                           help="every user of the run, written to the parquet file --out")
    recommend.add_argument("--out", help="with --all: the parquet file to write (refused when "
                                         "it exists)")
    recommend.add_argument("--k", type=int, default=10, help="number of items")
    recommend.add_argument("--seed-index", type=int, default=0,
                           help="which of the run's seeds serves (default 0, the first)")
    recommend.add_argument("--include-seen", action="store_true",
                           help="also rank items the user already has (excluded by default)")
    recommend.add_argument("--mesh", type=_parse_mesh, default=None, metavar="DATA,MODEL",
                           help="with --all: score over the item table split by rows over the "
                                "mesh's MODEL devices, each shard's top-K merged")
    recommend.add_argument("--fallback", choices=["popularity"], default=None,
                           help="serve users the run learned nothing about (unknown ids, no "
                                "training interactions) by training popularity; refused "
                                "(--user) or skipped (--all) without it")
    recommend.set_defaults(handler=_command_recommend)

    explain = commands.add_parser(
        "explain", help="why a run recommends an item to a user: counterfactual deletions")
    explain.add_argument("--run", required=True, help="run folder")
    explain.add_argument("--user", required=True, help="the user's id in the dataset")
    explain.add_argument("--item", help="the item's id (default: the user's top recommendation)")
    explain.add_argument("--k", type=int, default=10,
                         help="the top-K the minimal set must remove the item from")
    explain.add_argument("--max-size", type=int, default=10,
                         help="the largest counterfactual set searched")
    explain.add_argument("--method", default="greedy",
                         help="greedy, beam, exhaustive, effects, or a baseline: random, "
                              "popular, similar, influence, integrated_gradients")
    explain.add_argument("--candidates", type=int, default=None,
                         help="greedy search only among the C strongest single deletions "
                              "(faster on long histories; default: all)")
    explain.add_argument("--refit-l2", default="calibrated",
                         help="ID-embedding models: the L2 of the user's re-fit: calibrated "
                              "(default: the L2 >= the run's whose full-history re-fit lands "
                              "nearest the trained user), run (the run's weight decay), or a "
                              "number >= 0")
    explain.add_argument("--residual", default="kept",
                         help="ID-embedding models: what deleting does to the part of the "
                              "served score the full-history re-fit does not reproduce: kept "
                              "(default: it stays whole) or shared (shared evenly among the "
                              "history's interactions; deleting everything leaves the re-fit "
                              "on nothing)")
    explain.add_argument("--hold-seeds", action="store_true",
                         help="extend the set until it removes the item from the top-K under "
                              "a majority of the seeds the run trained (train.seeds >= 2): a "
                              "set that does not lean on one seed's noise")
    explain.add_argument("--quorum", type=int, default=None,
                         help="with --hold-seeds: how many seeds must agree (default: a "
                              "majority)")
    explain.add_argument("--causes", type=int, default=10,
                         help="rows of the table of causes (0: all)")
    explain.add_argument("--png", help="bar chart path, a new file (default "
                         "explain_USER_ITEM.png, or -2, -3, ... when that exists)")
    explain.add_argument("--json", action="store_true", help="print the explanation as JSON")
    explain.set_defaults(handler=_command_explain)

    simulate = commands.add_parser(
        "simulate", help="roll a logging policy out on a simulated world; write a simlog folder"
    )
    simulate.add_argument("--out", help="simlog folder (default: runs/<config name>)")
    simulate.add_argument("--quiet", action="store_true", help="do not print the config")
    _add_config_arguments(simulate)
    simulate.set_defaults(handler=_command_simulate)

    ope = commands.add_parser(
        "ope", help="off-policy evaluation on the simulator, against on-policy truth"
    )
    ope.add_argument("--out", help="run folder (default: runs/<config name>)")
    _add_config_arguments(ope)
    ope.set_defaults(handler=_command_ope)

    track = commands.add_parser(
        "track", help="export a run folder to TensorBoard and/or MLflow")
    track.add_argument("--run", required=True, help="run folder")
    track.add_argument("--tensorboard", action="store_true",
                       help="write RUN/tensorboard/ (replaced whole when it exists)")
    track.add_argument("--mlflow", nargs="?", const=True, default=None, metavar="URI",
                       help="log to MLflow: the run's run.mlflow store, else "
                            "MLFLOW_TRACKING_URI, else ./mlruns; or the tracking URI or "
                            "file-store folder given")
    track.add_argument("--experiment", help="MLflow experiment (default: the run's "
                                            "run.mlflow_experiment)")
    track.add_argument("--replace", action="store_true",
                       help="delete the MLflow runs of this folder and log a new one (by "
                            "default the newest is reused and a different value refused)")
    track.set_defaults(handler=_command_track)

    report = commands.add_parser(
        "report", help="tables and plots comparing run folders (mean ± std, 95%% interval)")
    report.add_argument("runs", nargs="+", metavar="RUN",
                        help="run folders (a search folder: its best run)")
    report.add_argument("--out", required=True,
                        help="a new or empty folder for report.md, report.csv and the PNGs")
    report.set_defaults(handler=_command_report)

    data = commands.add_parser(
        "data", help="validate a dataset and print its statistics"
    )
    data.add_argument("--format", help="data format (recbole, movielens, coat, yahoo_r3, ...)")
    data.add_argument("--path", help="file or folder of the dataset")
    data.add_argument(
        "--columns", type=_parse_columns, help="csv/parquet column roles: user=uid,item=sku,..."
    )
    data.add_argument("--sep", help="csv field separator")
    data.add_argument("--json", action="store_true", help="print the statistics as JSON")
    data.add_argument("--write-ids", action="store_true",
                      help="parquet folder: build its id maps and store them beside the data "
                           "(_causalrec/), for every host to read")
    _add_config_arguments(data)
    data.set_defaults(handler=_command_data)
    return parser


def _command_report(args: argparse.Namespace) -> int:
    from causalrec_jax.report.write import write_report

    result = write_report(args.runs, args.out)  # refuses an occupied --out
    for note in result.notes:
        print(note)
    print(f"wrote {len(result.files)} files to {result.out}:")
    for path in result.files:
        print(f"  {path}")
    return 0


def _command_track(args: argparse.Namespace) -> int:
    from causalrec_jax.runs.track import track_run

    # With neither flag, the trackers the run's own [run] keys name.
    for line in track_run(args.run, tensorboard=args.tensorboard, mlflow=args.mlflow,
                          experiment=args.experiment, replace=args.replace):
        print(line)
    return 0


def _print_tracking(config: Config, out: Path) -> None:
    """Where the run went besides its folder (`run.tensorboard`, `run.mlflow`); a failed
    export is a warning line of its own."""
    if config.run.tensorboard:
        print(f"tensorboard: {out / 'tensorboard'}")
    if config.run.mlflow is not False:
        from causalrec_jax.runs.track import tracking_uri

        print(f"mlflow: experiment {config.run.mlflow_experiment!r} at "
              f"{tracking_uri(config.run.mlflow)}")


def _command_data(args: argparse.Namespace) -> int:
    import importlib
    from pathlib import Path

    from causalrec_jax.config import load_config
    from causalrec_jax.data.formats.registry import PROVIDERS
    from causalrec_jax.data.loader import load_dataset
    from causalrec_jax.data.stats import dataset_statistics, format_statistics
    from causalrec_jax.errors import ConfigError

    overrides = list(args.overrides)
    if args.format:
        overrides.append(f'data.format="{args.format}"')
    if args.path:
        overrides.append(f"data.path={json.dumps(args.path)}")
    if args.sep:
        overrides.append(f"data.sep={json.dumps(args.sep)}")
    if args.columns:
        inner = ", ".join(f"{role} = {json.dumps(col)}" for role, col in args.columns.items())
        overrides.append(f"data.columns={{ {inner} }}")
    config = load_config(args.config, overrides)
    if config.data.format not in ("simulator", "planted", "dataframe") and not config.data.path:
        raise ConfigError(f"--path (or data.path) is required for format {config.data.format!r}")
    partitioned_log = config.data.format == "parquet" and Path(config.data.path).is_dir()
    if args.write_ids and not partitioned_log:
        raise ConfigError("--write-ids: expected data.format \"parquet\" and a folder as "
                          f"--path (got {config.data.format!r}, {config.data.path!r})")
    if partitioned_log:  # streamed: never loaded whole, reported as read (no cleaning)
        from causalrec_jax.config import DataConfig
        from causalrec_jax.data import partitioned

        for key in ("dedupe", "invalid", "rating_min", "rating_max", "k_core_users",
                    "k_core_items", "binarize_threshold"):
            if getattr(config.data, key) != getattr(DataConfig(), key):
                raise ConfigError(f"key data.{key}: a folder of Parquet files is reported as "
                                  "read, streamed, without cleaning; remove the key")
        log = partitioned.open_log(config.data.path, config.data.columns or None)
        maps = None
        if args.write_ids:
            partitioned.check_maps_absent(log)  # before a pass over the whole log
            maps = partitioned.build_id_maps(log)
            written = partitioned.write_id_maps(log, maps)
            print(f"wrote the id maps to {written}/", file=sys.stderr)
        stats = partitioned.log_statistics(log, maps)
    else:
        if config.data.format in PROVIDERS:  # the simulator's formats: importing registers them
            importlib.import_module(PROVIDERS[config.data.format])
        dataset, _ = load_dataset(config.data, config.sim, planted=config.planted)
        stats = dataset_statistics(dataset)
    if args.json:
        print(json.dumps(stats, indent=2, default=str))
    else:
        print(format_statistics(stats))
    return 0


def _resumed_config_text(out) -> str:
    """The `config.toml` of the run `out` to resume, refused first when there is none to
    resume (before the config is printed; `write_run` checks it too). In a job
    (`--distributed`) the first process reads it and hands it to the others, whose hosts
    need no copy of the run folder; when it cannot, every process stops with one line."""
    import jax

    from causalrec_jax.errors import RunError
    from causalrec_jax.runs.folder import refuse_unresumable
    from causalrec_jax.train.processes import broadcast_text, together

    text = error = None
    if jax.process_index() == 0:  # the only process, or the first of a job
        try:
            refuse_unresumable(out)
            text = (out / "config.toml").read_text()
        except CausalRecError as failure:
            error = failure
        except Exception as failure:  # unreadable or not text: the others must not wait
            reason = getattr(failure, "strerror", None) or failure
            error = RunError(f"--resume: cannot read {out / 'config.toml'}: {reason}")
    # in one process: raises `error`, and the text is this process's own
    together(error, "read the run's config.toml", then="nothing was resumed")
    return broadcast_text(text)


def _command_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.distributed:  # before anything touches JAX
        from causalrec_jax.parallel.distributed import start

        start()

    from causalrec_jax.config import dumps_changes, load_config
    from causalrec_jax.errors import RunError
    from causalrec_jax.runs.train import train_run

    if args.resume and args.config is None:
        # --resume reads the run's own config.toml; --set may only change what
        # runs.folder.check_resumable allows.
        if not args.out:
            raise RunError("--resume without --config needs --out, the run folder to continue")
        out = Path(args.out)
        config = load_config(out / "config.toml", args.overrides,
                             text=_resumed_config_text(out))
    else:
        config = load_config(args.config, args.overrides)
        name = config.run.name or (Path(args.config).stem if args.config else "default")
        out = Path(args.out) if args.out else Path(config.run.out_dir) / name
    args.out = str(out)  # where an interruption's resume hint points (`main`)
    quiet = args.quiet or config.run.quiet
    if not quiet:
        print(dumps_changes(config))
    from causalrec_jax.tasks.sequential import SEQUENCE_MODELS

    # Every kind refuses an occupied --out unless it resumes its own run (runs.folder.write_run);
    # uplift runs keep no checkpoints, so they also refuse --resume.
    if args.distributed and config.uplift.method and config.model.name not in SEQUENCE_MODELS:
        from causalrec_jax.errors import ConfigError

        raise ConfigError("--distributed: an uplift run trains in one process so far (several "
                          "processes train ordinary, causal and sequential runs); drop the "
                          "flag")
    if config.model.name in SEQUENCE_MODELS:
        from causalrec_jax.runs.train import sequence_run

        metrics = sequence_run(config, out, quiet=quiet, resume=args.resume)
    elif config.uplift.method:
        from causalrec_jax.runs.train import uplift_run

        metrics = uplift_run(config, out, quiet=quiet, resume=args.resume)
    else:
        metrics = train_run(config, out, resume=args.resume, quiet=quiet)
    import jax

    if jax.process_count() > 1 and jax.process_index() > 0:
        print(f"process {jax.process_index()} of {jax.process_count()}: done (process 0 "
              f"wrote {out})")
        return 0
    print(format_metrics(metrics))
    print(f"run folder: {out}")
    _print_tracking(config, out)
    return 0


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("causalrec_jax")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def users_behind(metrics: dict, part: str, name: str) -> int | None:
    """How many users the mean `metrics[part][name]` is over, where the run says: metric@K
    over `n_users_ranked@K`, `auc_per_user` over `n_users_auc` (from `data` or the first
    seed's block; the same for every seed); None for a pooled metric or an older run."""
    if "@" in name:
        key = f"n_users_ranked@{name.split('@')[1]}"
    elif name == "auc_per_user":
        key = "n_users_auc"
    else:
        return None
    data = metrics.get("data") or {}
    if f"{part}_{key}" in data:
        return data[f"{part}_{key}"]
    per_seed = metrics.get("per_seed") or [{}]
    return (per_seed[0].get(part) or {}).get(key)


def format_metrics(metrics: dict) -> str:
    """Every block of `metrics` (valid, test, test_literature, test_full, test_truth,
    test_unmasked, test_sampled), means ± std over seeds, each labelled with its protocol;
    then the best epochs, the epochs run and the time when the metrics hold them.

    A value that is not a number (NaN, or null read back from `metrics.json`: a validation
    ranking metric too few users can be ranked on) prints as `n/a`, with the number of users
    where the run records it (`n/a (3 users)`); validation's per-user metrics always say how
    many users they are over."""
    from causalrec_jax.eval.summary import BLOCK_PROTOCOLS  # not at the top: loads jax

    lines = []
    for part, protocol in BLOCK_PROTOCOLS.items():
        if not metrics.get(part):
            continue
        means, stds = metrics[part], metrics.get(f"{part}_std", {})
        cells = []
        for name, value in means.items():
            defined = isinstance(value, int | float) and value == value
            cell = f"{name} {value:.4f}" if defined else f"{name} n/a"
            std = stds.get(name)
            if defined and std and std == std:
                cell += f" ± {std:.4f}"
            users = users_behind(metrics, part, name)
            if users is not None and (part == "valid" or not defined):
                cell += f" ({users} users)"
            cells.append(cell)
        lines.append(f"{part} ({protocol}):")
        lines.append("  " + " | ".join(cells))
    per_seed = metrics.get("per_seed") or []
    best = [entry["best_epoch"] for entry in per_seed if "best_epoch" in entry]
    timing = metrics.get("timing") or {}
    if best:
        text = f"best epoch {', '.join(map(str, best))} (per seed)"
        if "epochs_run" in timing:
            text += f"; {timing['epochs_run']} epochs run"
        lines.append(text)
    if "total_seconds" in timing:
        lines.append(f"time {timing['total_seconds']:.1f} s (training "
                     f"{timing.get('train_seconds', 0.0):.1f} s)")
    return "\n".join(lines)


def format_ope(metrics: dict) -> str:
    """A table of each estimator's estimate, standard error and relative error."""
    truth = metrics["truth"]
    lines = [f"truth {truth['value']:.5f} ± {truth['stderr']:.5f} "
             f"({truth['rounds']} on-policy rounds)",
             f"{'estimator':<10} {'estimate':>9} {'stderr':>8} {'rel.error':>10} {'n_eff':>8}"]
    for name, row in metrics["ope"].items():
        lines.append(f"{name:<10} {row['estimate']:>9.5f} {row['stderr']:>8.5f} "
                     f"{row['relative_error']:>10.4f} {row['n_eff']:>8.0f}")
    return "\n".join(lines)


def _command_ope(args: argparse.Namespace) -> int:
    from pathlib import Path

    from causalrec_jax.config import load_config
    from causalrec_jax.runs.train import ope_run

    config = load_config(args.config, args.overrides)
    name = config.run.name or (Path(args.config).stem if args.config else "ope")
    out = Path(args.out) if args.out else Path(config.run.out_dir) / name
    metrics = ope_run(config, out)  # refuses an occupied --out
    print(format_ope(metrics))
    print(f"run folder: {out}")
    _print_tracking(config, out)
    return 0


def _command_tune(args: argparse.Namespace) -> int:
    from causalrec_jax.config import load_config
    from causalrec_jax.tune.search import tune
    from causalrec_jax.tune.space import load_space

    config = load_config(args.config, args.overrides)
    space = load_space(args.space)
    summary = tune(
        config, space, args.out, sampler=args.sampler, n_trials=args.trials,
        metric=args.metric, seeds=args.seeds, max_members=args.max_members,
        resume=args.resume, space_path=args.space,
    )
    best = summary["best"]
    if summary.get("metric_rule"):
        print(summary["metric_rule"])
    print(f"{summary['n_trials']} trials, selected on {summary['metric']} "
          f"({summary['direction']}), {summary['timing']['search_seconds']:.1f} s")
    print("best: " + ", ".join(f"{k} = {v}" for k, v in best["values"].items())
          + f"  ({summary['metric']} {best['valid']:.4f})")
    print(format_metrics({"test": summary["best_run"]["test"],
                          "test_std": summary["best_run"]["test_std"]}))
    print(f"search folder: {args.out} (best.toml, trials.csv, plots/)")
    _print_tracking(config, Path(args.out) / "best")
    return 0


def _command_evaluate(args: argparse.Namespace) -> int:
    from causalrec_jax.runs.load import evaluate_run

    result = evaluate_run(args.run, args.split)
    # per_seed carries the user counts of each block; it has no best epochs to print
    print(format_metrics(result))
    if args.write:
        from causalrec_jax.runs.load import write_evaluation

        path = write_evaluation(args.run, result)
        print(f"wrote {path}")
    return 0


def _parse_mesh(text: str) -> tuple[int, int]:
    """`--mesh DATA,MODEL` as two positive integers."""
    try:
        data, model = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected DATA,MODEL (two integers), got {text!r}") from None
    if data < 1 or model < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return data, model


def _command_recommend(args: argparse.Namespace) -> int:
    from causalrec_jax.errors import RunError

    if args.user is not None and args.all:
        raise RunError("--user and --all exclude each other: give one")
    if args.user is None and not args.all:
        raise RunError("give either --user USER_ID (one user's list) or --all --out FILE "
                       "(every user's, to parquet)")
    if args.all and not args.out:
        raise RunError("--all writes a parquet file: give --out FILE (a new path)")
    if args.out and not args.all:
        raise RunError("--out is where --all writes; --user prints its list")
    if args.mesh is not None and not args.all:
        raise RunError("--mesh serves every user (--all); --user scores on one device")
    if args.all:
        return _recommend_all(args)
    from causalrec_jax.runs.load import load_run, recommend
    from causalrec_jax.runs.serve import lookup_user

    run = load_run(args.run)
    top = recommend(run, args.user, args.k, args.seed_index,
                    include_seen=args.include_seen, fallback=args.fallback)
    _, cold = lookup_user(run, args.user)
    if cold:  # served only with --fallback (recommend refuses it otherwise)
        print(f"causalrec recommend: note: {cold}; the list ranks items by their training "
              "counts (--fallback popularity; the score is the count)", file=sys.stderr)
    for rank, (item, score) in enumerate(top, 1):
        print(f"{rank:>3}  {item:<20} {score:.4f}")
    return 0


def _recommend_all(args: argparse.Namespace) -> int:
    from causalrec_jax.runs.load import load_run
    from causalrec_jax.runs.serve import check_out, recommend_all

    check_out(args.out)  # refuse before loading the run
    mesh = None
    if args.mesh is not None:
        import jax

        from causalrec_jax.errors import ConfigError
        from causalrec_jax.parallel import check_mesh_shape, make_mesh

        try:
            mesh = make_mesh(check_mesh_shape(args.mesh, jax.device_count()))
        except ConfigError as error:
            raise ConfigError(str(error).replace("key parallel.mesh", "--mesh")) from None
    summary = recommend_all(load_run(args.run), args.k, out=args.out,
                            seed_index=args.seed_index, include_seen=args.include_seen,
                            fallback=args.fallback, mesh=mesh)
    if summary.skipped_users:
        print(f"causalrec recommend: warning: skipped {summary.skipped_users:,} user(s) the run "
              "learned nothing about (no training interactions or history); --fallback "
              "popularity serves them", file=sys.stderr)
    notes = [f"{summary.fallback_users:,} by popularity" if args.fallback else None,
             f"{summary.short_users:,} with fewer than {args.k} items left"
             if summary.short_users else None,
             f"{summary.empty_users:,} with nothing left" if summary.empty_users else None]
    notes = [note for note in notes if note]
    print(f"served {summary.users:,} users{' (' + '; '.join(notes) + ')' if notes else ''}: "
          f"{summary.rows:,} rows, top {args.k} of seed {summary.seed}, in "
          f"{summary.seconds:.2f} s; wrote {summary.path}")
    return 0


def _command_explain(args: argparse.Namespace) -> int:
    import re

    from causalrec_jax.runs.explain import (
        check_chart_path,
        explain_run,
        explanation_json,
        format_explanation,
        free_chart_path,
        plot_explanation,
    )

    if args.png:
        check_chart_path(args.png)
    result = explain_run(args.run, args.user, args.item, k=args.k, max_size=args.max_size,
                         method=args.method, n_candidates=args.candidates,
                         refit_l2=args.refit_l2, hold_seeds=args.hold_seeds,
                         quorum=args.quorum, residual=args.residual)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{result.user_id}_{result.item_id}")
    png = plot_explanation(result, args.png or free_chart_path(f"explain_{safe}"))
    if args.json:
        print(json.dumps({**explanation_json(result), "png": str(png)}, indent=1))
    else:
        print(format_explanation(result, args.causes))
        print(f"wrote {png}")
    return 0


def _command_simulate(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    import jax

    from causalrec_jax.config import dumps_changes, load_config, refuse_unused
    from causalrec_jax.sim.logs import simulate_log
    from causalrec_jax.sim.simlog import check_simlog_out, write_simlog

    config = load_config(args.config, args.overrides)
    # A simulation reads the world, the logging policy, [run] and the marginals' sample size.
    refuse_unused(config, {"env": None, "policy": None, "run": None,
                           "ope": ("marginal_samples",)}, "causalrec simulate")
    name = config.run.name or (Path(args.config).stem if args.config else "simlog")
    out = Path(args.out) if args.out else Path(config.run.out_dir) / name
    check_simlog_out(out)  # refuse before spending the simulation
    if not (args.quiet or config.run.quiet):
        print(dumps_changes(config))
    start = time.perf_counter()
    score_table = None
    if config.policy.scores == "run":
        from causalrec_jax.runs.load import run_score_table

        score_table = run_score_table(config.policy.run, config.env.n_users, config.env.n_items)
    log, truth = simulate_log(
        config.env, config.policy, jax.random.key(config.run.seed),
        marginal_samples=config.ope.marginal_samples, score_table=score_table,
    )
    write_simlog(out, log, truth, config)
    seconds = time.perf_counter() - start
    click_rate = float(log.clicks.mean()) if log.clicks.size else 0.0
    organic_rate = float((log.organic_item >= 0).mean()) if log.n_rounds else 0.0
    print(
        f"simulated {log.n_rounds:,} rounds ({config.env.n_users:,} users x "
        f"{config.env.horizon} steps) on a world of {config.env.n_items:,} items, slates of "
        f"{config.env.slate_size}: click rate {click_rate:.4f} per impression, organic "
        f"consumption in {organic_rate:.4f} of rounds; {seconds:.1f} s; simlog folder: {out}"
    )
    return 0


def entry() -> None:
    """The `causalrec` console script and `python -m causalrec_jax`: `main`, then exit with
    its status. After Ctrl-C (status 130) the process ends at once, its streams flushed
    (`os._exit`): interpreter shutdown while XLA was still compiling on its own threads
    segfaulted (exit 139 instead of 130 when interrupted 4-4.5 s into an ml-100k run)."""
    import os

    status = main()
    if status == 130:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing more to say
                pass
        os._exit(130)
    raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    import warnings

    args = build_parser().parse_args(argv)
    prog = f"causalrec {args.command}"
    try:
        with warnings.catch_warnings():  # restores Python's own display on the way out
            _one_line_warnings(prog)
            from causalrec_jax.xla_cpu import check_environment

            check_environment()  # CAUSALREC_UNROLLED_THREEFRY neither on nor off
            return args.handler(args)
    except CausalRecError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`causalrec data --json | head`): stop quietly, and keep
        # Python's exit from writing to the closed pipe again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:
        # The file system refused (a read-only --out, an --out below a file, a full disk).
        from causalrec_jax.runs.script import error_line

        print(f"{prog}: error: {error_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = ""
        from causalrec_jax.runs.folder import finished_run

        if (args.command == "train" and out and Path(out, "config.toml").is_file()
                and not finished_run(Path(out))):
            since = ("" if Path(out, "checkpoints").is_dir()
                     else " (from the start: no checkpoint was written yet)")
            every = " --distributed" if getattr(args, "distributed", False) else ""
            hint = (f"; continue it{since} with: causalrec train --resume{every} --out {out}"
                    + (" (in every process of the job)" if every else ""))

        print(f"{prog}: interrupted{hint}", file=sys.stderr)
        return 130


def _one_line_warnings(prog: str) -> None:
    """Prints a `DataWarning`, `CheckpointWarning` or `TrackingWarning` as one line on stderr
    (`prog: warning: ...`), without Python's source line; other warnings keep Python's form.
    Call it inside `warnings.catch_warnings`."""
    import warnings

    from causalrec_jax.errors import CheckpointWarning, DataWarning, TrackingWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning | CheckpointWarning | TrackingWarning):
            print(f"{prog}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


if __name__ == "__main__":
    raise SystemExit(main())
