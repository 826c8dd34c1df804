"""Quality against size: sequential models trained at several widths, one plot.

    python experiments/scaling.py --config configs/sports_sasrec.toml \
        --config configs/sports_hstu.toml --dims 32,64,128,256 --out runs/scaling_sports \
        [--set KEY=VALUE ...] [--resume] [--metric ndcg@10]

Each config is trained once per width (`model.embedding_dim` = each of `--dims`, every other
key as the config ships, `--set` applied to all) through the run path
(`runs.train.sequence_run`) into `OUT/runs/<model>_<dim>`, with the config's seeds
(`train.seeds`). The parameter count is that of the trained model (every learned array of one
seed, the item table included). `OUT/table.md` and `table.csv` give, per run, the width, the
parameters, the test metric (mean and std over seeds, the run's protocol: leave-one-out, full
ranking, history masked), the validation metric, the best epochs and the seconds;
`OUT/scaling.png` draws the test metric against the parameter count (log scale), one line per
model, the seeds' std as error bars.

`--resume` continues into an existing OUT made by this script with the same configs, widths
and overrides (`OUT/scaling.json`): finished runs are read back (refused when trained with
other values), an unfinished one resumes from its checkpoints (`causalrec train --resume`).
Without it OUT must be new; a call that finishes no run leaves no OUT behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from causalrec_jax.config import load_config, parse_override  # noqa: E402
from causalrec_jax.errors import ConfigError  # noqa: E402
from causalrec_jax.report.plots import scaling_figure  # noqa: E402
from causalrec_jax.report.runs import read_run  # noqa: E402
from causalrec_jax.report.tables import (  # noqa: E402
    block_protocol,
    markdown_table,
    mean_std_cell,
    write_csv,
)
from causalrec_jax.runs import train as run_train  # noqa: E402
from causalrec_jax.runs.folder import (  # noqa: E402
    absolute_data_path,
    check_resumable,
    fresh_out,
)
from causalrec_jax.runs.load import load_run  # noqa: E402
from causalrec_jax.runs.script import run_script  # noqa: E402
from causalrec_jax.tasks.sequential import check_sequential_config  # noqa: E402

SEQUENCE_MODELS = ("sasrec", "bert4rec", "hstu")
MARKER = "scaling.json"  # what an output folder was made with (`--resume` checks it)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", required=True, type=Path,
                        help="a sequential run config (repeat for each model)")
    parser.add_argument("--dims", default="32,64,128,256",
                        help="comma-separated model.embedding_dim values (at least 2)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE", help="a config override applied to every run")
    parser.add_argument("--metric", default="ndcg@10",
                        help="the metric plotted (a key of the runs' test block)")
    parser.add_argument("--resume", action="store_true",
                        help="continue into an existing --out (finished runs are read back)")
    args = parser.parse_args(argv)
    try:
        args.dims = [int(value) for value in args.dims.split(",")]
    except ValueError:
        raise ConfigError(f"--dims {args.dims!r}: expected comma-separated integers") from None
    if len(args.dims) < 2 or min(args.dims) < 1 or len(set(args.dims)) != len(args.dims):
        raise ConfigError(f"--dims {','.join(map(str, args.dims))}: expected at least 2 "
                          "distinct integers >= 1")
    return args


def run_configs(args: argparse.Namespace) -> list[tuple[str, int, Any]]:
    """`(name, dim, config)` per run, every config read and checked before anything trains."""
    if any(setting.split("=", 1)[0].strip() == "model.embedding_dim"
           for setting in args.overrides):
        raise ConfigError("--set model.embedding_dim: the widths come from --dims")
    runs = []
    for path in args.config:
        base = load_config(path, args.overrides)
        if base.model.name not in SEQUENCE_MODELS:
            raise ConfigError(f"{path}: model.name = {base.model.name!r}; the scaling script "
                              f"trains sequential models ({', '.join(SEQUENCE_MODELS)})")
        known = [f"{name}@{k}" for name in base.eval.metrics for k in base.eval.ks]
        if args.metric not in known:
            raise ConfigError(f"--metric {args.metric!r}: {path} evaluates "
                              f"{', '.join(known)}")
        for dim in args.dims:
            config = load_config(path, [*args.overrides, f"model.embedding_dim={dim}"])
            check_sequential_config(config)
            runs.append((f"{config.model.name}_{dim}", dim, config))
    names = [name for name, _, _ in runs]
    if len(set(names)) != len(names):
        raise ConfigError("two --config files train the same model.name: give one per model")
    datasets = {(config.data.format, config.data.path) for _, _, config in runs}
    if len(datasets) > 1:
        raise ConfigError("the --config files read different data ("
                          + "; ".join(f"{form} {path}" for form, path in sorted(datasets))
                          + "): a scaling plot compares models on one dataset")
    return runs


def check_marker(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`OUT/scaling.json`, what this call trains; with `--resume`, refused unless OUT holds
    one of the same configs, widths and overrides (so a resumed call writes only into its own
    output and never mixes runs of another setting)."""
    # Overrides as parsed values, so that `data.path=X` and `data.path="X"` are one setting.
    sets = [list(parse_override(setting)) for setting in args.overrides]
    marker = {"configs": [str(path.resolve()) for path in args.config], "dims": args.dims,
              "sets": sets}
    if args.resume:
        try:
            stored = json.loads((out / MARKER).read_text())
        except (OSError, json.JSONDecodeError):
            raise ConfigError(f"--resume: {out} holds no readable {MARKER}, so it is not the "
                              "output of this script") from None
        if isinstance(stored, dict) and all(isinstance(item, str)
                                            for item in stored.get("sets", [])):
            # A marker written before overrides were stored parsed.
            stored["sets"] = [list(parse_override(item)) for item in stored["sets"]]
        if stored != marker:
            raise ConfigError(f"--resume: {out} was made with other --config, --dims or --set "
                              f"values ({out / MARKER}); use another --out")
    return marker


def parameter_count(folder: Path) -> int:
    """Learned parameters of one seed of the run in `folder` (its parameters are stacked over
    seeds, one or more)."""
    params = load_run(folder).parts.params
    return int(sum(leaf[0].size for leaf in jax.tree.leaves(params)))


def run_metrics(config: Any, folder: Path) -> dict[str, Any]:
    """The run's metrics: a finished run in `folder` is read back when it was trained with
    `config` (else a one-line error); an unfinished one resumes from its checkpoints; an
    empty folder is trained."""
    if (folder / "metrics.json").exists():
        stored = load_config(folder / "config.toml")
        changes = check_resumable(stored, absolute_data_path(config), folder)
        if changes:
            raise ConfigError(f"{folder}: finished with other values of "
                              f"{', '.join(changes)}; remove it or use another --out")
        metrics = read_run(folder).metrics
        if "diverged" in metrics:
            raise ConfigError(f"{folder}: that run diverged; remove it or use another --out")
        return metrics
    return run_train.sequence_run(config, folder, quiet=True,
                                  resume=(folder / "config.toml").exists())


def row_of(name: str, dim: int, folder: Path, metrics: dict[str, Any],
           metric: str) -> dict[str, Any]:
    timing = metrics.get("timing", {})
    return {
        "model": name.rsplit("_", 1)[0], "embedding_dim": dim,
        "parameters": parameter_count(folder), "seeds": len(metrics["seeds"]),
        f"test_{metric}": metrics["test"][metric],
        f"test_{metric}_std": metrics.get("test_std", {}).get(metric, 0.0),
        f"valid_{metric}": metrics["valid"][metric],
        "best_epochs": " ".join(str(seed["best_epoch"]) for seed in metrics["per_seed"]),
        "epoch_seconds": timing.get("epoch_seconds"),
        "total_seconds": timing.get("total_seconds"),
    }


def write_table(out: Path, rows: list[dict[str, Any]], metric: str, config: Any) -> Path:
    write_csv(out / "table.csv", rows, list(rows[0]))
    header = ["model", "embedding_dim", "parameters", f"test {metric} (mean ± std)",
              f"valid {metric}", "best epochs", "s / epoch", "s in all"]
    cells = [[row["model"], str(row["embedding_dim"]), f"{row['parameters']:,}",
              mean_std_cell(row[f"test_{metric}"], row[f"test_{metric}_std"]),
              f"{row[f'valid_{metric}']:.4f}", row["best_epochs"],
              *(f"{row[key]:.1f}" if isinstance(row[key], float) else ""
                for key in ("epoch_seconds", "total_seconds"))] for row in rows]
    path = out / "table.md"
    path.write_text(
        f"Protocol: data.split = {config.data.split}; test: "
        f"{block_protocol('sequential', 'test')}, every item ranked with the user's history "
        "masked; mean ± std over the config's seeds; parameters: every learned array of one "
        "seed, the item table included.\n\n" + markdown_table(header, cells) + "\n")
    return path


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    runs = run_configs(args)
    created = not (args.resume and args.out.exists())
    out = fresh_out(args.out, "scaling") if created else args.out
    marker = check_marker(out, args)
    rows: list[dict[str, Any]] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        for name, dim, config in runs:
            folder = out / "runs" / name
            rows.append(row_of(name, dim, folder, run_metrics(config, folder), args.metric))
            print(f"{name}: test {args.metric} {rows[-1][f'test_{args.metric}']:.4f}, "
                  f"{rows[-1]['parameters']:,} parameters", flush=True)
    except BaseException:
        if created and not rows:  # nothing finished: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    write_table(out, rows, args.metric, runs[0][2])
    data = Path(runs[0][2].data.path or "").name
    scaling_figure(out / "scaling.png", rows, args.metric,
                   f"{data}: test {args.metric} against size")
    return out / "table.md"


if __name__ == "__main__":
    raise SystemExit(run_script(main))
