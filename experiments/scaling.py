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

`--resume` continues into an existing OUT: finished runs are read back, an unfinished one
resumes from its checkpoints (`causalrec train --resume`). Without it OUT must be new.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from causalrec_jax.config import load_config  # noqa: E402
from causalrec_jax.errors import ConfigError  # noqa: E402
from causalrec_jax.report.plots import scaling_figure  # noqa: E402
from causalrec_jax.report.tables import markdown_table, mean_std_cell, write_csv  # noqa: E402
from causalrec_jax.runs import train as run_train  # noqa: E402
from causalrec_jax.runs.folder import fresh_out  # noqa: E402
from causalrec_jax.runs.script import run_script  # noqa: E402
from causalrec_jax.tasks.sequential import check_sequential_config  # noqa: E402

SEQUENCE_MODELS = ("sasrec", "bert4rec", "hstu")


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
    runs = []
    for path in args.config:
        base = load_config(path, args.overrides)
        if base.model.name not in SEQUENCE_MODELS:
            raise ConfigError(f"{path}: model.name = {base.model.name!r}; the scaling script "
                              f"trains sequential models ({', '.join(SEQUENCE_MODELS)})")
        for dim in args.dims:
            config = load_config(path, [*args.overrides, f"model.embedding_dim={dim}"])
            if config.model.embedding_dim % config.model.n_heads:
                raise ConfigError(f"{path}: model.embedding_dim {dim} is not divisible by "
                                  f"model.n_heads {config.model.n_heads}")
            check_sequential_config(config)
            runs.append((f"{config.model.name}_{dim}", dim, config))
    names = [name for name, _, _ in runs]
    if len(set(names)) != len(names):
        raise ConfigError("two --config files train the same model.name: give one per model")
    return runs


def parameter_count(folder: Path) -> int:
    """Learned parameters of one seed of the run in `folder`."""
    import jax

    from causalrec_jax.runs.load import load_run

    params = load_run(folder).parts.params
    return int(sum(leaf[0].size for leaf in jax.tree.leaves(params)))


def train_or_read(config: Any, folder: Path, resume: bool) -> dict[str, Any]:
    """The run's metrics: read back when `folder` holds a finished run (with `resume`), else
    trained (resumed from its checkpoints where it has some)."""
    if resume and (folder / "metrics.json").exists():
        return json.loads((folder / "metrics.json").read_text())
    return run_train.sequence_run(config, folder, quiet=True,
                                  resume=resume and (folder / "config.toml").exists())


def row_of(name: str, dim: int, folder: Path, metrics: dict[str, Any],
           metric: str) -> dict[str, Any]:
    if metric not in metrics["test"]:
        raise ConfigError(f"--metric {metric!r}: the runs' test block has "
                          f"{', '.join(sorted(metrics['test']))}")
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


def write_table(out: Path, rows: list[dict[str, Any]], metric: str) -> Path:
    write_csv(out / "table.csv", rows, list(rows[0]))
    header = ["model", "embedding_dim", "parameters", f"test {metric} (mean ± std)",
              f"valid {metric}", "best epochs", "s / epoch", "s in all"]
    cells = [[row["model"], str(row["embedding_dim"]), f"{row['parameters']:,}",
              mean_std_cell(row[f"test_{metric}"], row[f"test_{metric}_std"]),
              f"{row[f'valid_{metric}']:.4f}", row["best_epochs"],
              _seconds(row["epoch_seconds"]), _seconds(row["total_seconds"])] for row in rows]
    path = out / "table.md"
    path.write_text(
        "Protocol: each run's own (leave-one-out, full ranking over all items, the user's "
        "history masked, pessimistic ties; mean ± std over the config's seeds); parameters: "
        "every learned array of one seed, the item table included.\n\n"
        + markdown_table(header, cells) + "\n")
    return path


def _seconds(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.1f}"


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    runs = run_configs(args)
    out = args.out if args.resume and args.out.exists() else fresh_out(args.out, "scaling")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, dim, config in runs:
        folder = out / "runs" / name
        metrics = train_or_read(config, folder, args.resume)
        rows.append(row_of(name, dim, folder, metrics, args.metric))
        print(f"{name}: test {args.metric} {rows[-1][f'test_{args.metric}']:.4f}, "
              f"{rows[-1]['parameters']:,} parameters", flush=True)
    write_table(out, rows, args.metric)
    data = Path(runs[0][2].data.path or "").name
    scaling_figure(out / "scaling.png", rows, args.metric,
                   f"{data}: test {args.metric} against size")
    return out / "table.md"


if __name__ == "__main__":
    raise SystemExit(run_script(main))
