"""Utility of private training against epsilon: full-ranking quality and popularity side
effects of DP-SGD, user level and example level, and of DP-FedAvg, on one config.

    python experiments/privacy_utility.py --config configs/ml100k_mf_dp.toml \\
        [--reference configs/ml100k_mf.toml] [--epsilons 1,2,4,8,inf] \\
        [--levels user,example] [--fedavg configs/ml100k_mf_fedavg.toml] [--seeds 3] \\
        [--out DIR] [--set section.key=value ...]

For each level and each epsilon, trains the config with `privacy.level` and
`privacy.target_epsilon` set (the noise calibrated so that the run's `train.epochs` epochs
spend epsilon at delta = 1/n_users), with `--seeds` seeds in one vmapped program, through
`runs.train.train_run` into `DIR/<level>_eps<epsilon>`. The example level counts
`train.batch_size` in rows (`--example-batch`, default 4096) and runs with every parameter
noised and negatives drawn without excluding the user's items, as a row-level guarantee
needs. The non-private row (`inf`) is `--reference` (default: the same config without
`[privacy]`; for ml-100k, the shipped non-private BPR-MF, tuned as such), trained once into
`DIR/not_private`; "kept" is each row's ndcg@10 over its. `--fedavg CONFIG` (a config of
`privacy.mechanism = "fedavg"`, its own optimiser and rounds) adds DP-FedAvg at each finite
epsilon (`DIR/fedavg_eps<epsilon>`, the same calibration, a round's clients the units) and,
with `inf`, the same FedAvg without noise (`DIR/fedavg`).
Writes to `DIR` (default `runs/privacy_utility`):

- `table.md` / `table.csv` / `table.json`: per run, the test ndcg@10 and recall@10 (mean and
  std over seeds), the share of the non-private ndcg@10 kept, the popularity of what is
  recommended (mean training popularity of the top-10 items, their Gini index, the share of
  the catalogue recommended), the accounted epsilon and the noise multiplier;
- `privacy_utility.png`: ndcg@10 and the mean popularity of the top-10 against epsilon.

A sequential config (SASRec, HSTU, BERT4Rec) runs the same rows at user level (a unit is a
user's windows, every parameter noised); the example level is refused for it (windows
overlap, so a window is not one interaction).

Protocol: the config's (for `configs/ml100k_mf_dp.toml`, RecBole's: random 80/10/10 split per
user, every rating a positive, full ranking with training and validation items masked, users
without a test item left out); the best epoch is chosen on validation ndcg, which reads the
validation data without noise (said in every run's `metrics.json`, `privacy.not_private`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

from causalrec_jax.config import PrivacyConfig, load_config, set_keys
from causalrec_jax.errors import ConfigError
from causalrec_jax.report import tables as report_tables
from causalrec_jax.report.plots import privacy_figure
from causalrec_jax.runs import train as run_train
from causalrec_jax.runs.folder import fresh_out
from causalrec_jax.runs.script import run_script
from causalrec_jax.tasks.ordinary import check_ordinary_keys
from causalrec_jax.tasks.sequential import SEQUENCE_MODELS, check_sequential_config

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("user", "example")
COLUMNS = ("ndcg@10", "recall@10", "averagepopularity@10", "giniindex@10", "itemcoverage@10")
LIST_METRICS = ("averagepopularity", "giniindex", "itemcoverage")


def _epsilons(text: str) -> list[float]:
    values = []
    for part in text.split(","):
        part = part.strip().lower()
        value = math.inf if part in ("inf", "infinity") else float(part)
        if not value > 0:
            raise ValueError(f"--epsilons: {part!r} is not a number > 0 (or inf)")
        values.append(value)
    return values


def _plain(config, args) -> list[str]:
    """The overrides every run of the table gets: `--seeds`, the config's metrics plus the
    popularity columns, the `--set`s."""
    names = [m for m in config.eval.metrics if m.lower() not in LIST_METRICS]
    return [f"train.seeds={args.seeds}",
            f"eval.metrics={json.dumps(names + list(LIST_METRICS))}", *args.overrides]


def _reset(keys) -> list[str]:
    """Overrides setting the `[privacy]` keys `keys` back to their defaults."""
    defaults = PrivacyConfig()
    return [f"privacy.{key}={json.dumps(getattr(defaults, key))}" for key in keys]


def check_keys(config) -> None:
    """The run's own checks of a config (an ordinary or a sequential run), before any run."""
    if config.model.name in SEQUENCE_MODELS:
        check_sequential_config(config)
    else:
        check_ordinary_keys(config)


def run_one(config_path: str, overrides: list[str], out: Path, mechanism: str,
            epsilon: float) -> dict[str, Any]:
    """Trains one setting; returns its table row."""
    config = load_config(config_path, overrides)
    train = (run_train.sequence_run if config.model.name in SEQUENCE_MODELS
             else run_train.train_run)
    metrics = train(config, out, quiet=True)
    row: dict[str, Any] = {"mechanism": mechanism, "epsilon": epsilon, "run": out.name,
                           "seeds": len(metrics["per_seed"]),
                           "train_seconds": metrics["timing"].get("train_seconds")}
    for name in COLUMNS:
        row[name] = metrics["test"].get(name)
        row[f"{name}_std"] = metrics.get("test_std", {}).get(name)
    privacy = metrics.get("privacy") or {}
    row["accounted_epsilon"] = privacy.get("epsilon", math.inf)
    row["noise_multiplier"] = privacy.get("noise_multiplier")
    row["delta"] = privacy.get("delta")
    return row


def _cell(value: Any, std: Any = None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "inf" if value == math.inf else "n/a"
    text = f"{value:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    header = ["mechanism", "epsilon", "ndcg@10", "kept", "recall@10", "mean popularity@10",
              "gini@10", "coverage@10", "accounted epsilon", "noise multiplier"]
    body = [[row["mechanism"], _cell(row["epsilon"], digits=0),
             _cell(row["ndcg@10"], row["ndcg@10_std"]),
             _cell(row.get("kept"), digits=3), _cell(row["recall@10"], row["recall@10_std"]),
             _cell(row["averagepopularity@10"], digits=1), _cell(row["giniindex@10"], digits=3),
             _cell(row["itemcoverage@10"], digits=3), _cell(row["accounted_epsilon"], digits=3),
             _cell(row["noise_multiplier"], digits=3)] for row in rows]
    return report_tables.markdown_table(header, body)


def main(argv=None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True,
                        help="a config of an ordinary or a sequential run")
    parser.add_argument("--reference", help="the config of the non-private row (default: "
                        "--config without [privacy])")
    parser.add_argument("--epsilons", default="1,2,4,8,inf")
    parser.add_argument("--levels", help="of DP-SGD: user,example (default; user alone for a "
                        "sequential config, whose windows overlap)")
    parser.add_argument("--fedavg", help="a config of privacy.mechanism = 'fedavg': adds its "
                        "DP-FedAvg rows (and, with inf, FedAvg without noise)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--example-batch", type=int, default=4096,
                        help="train.batch_size (rows) of the example-level runs")
    parser.add_argument("--out", help="a new or empty folder (default: a fresh "
                        "runs/privacy_utility-DATE-TIME)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="section.key=value, applied to every run")
    args = parser.parse_args(argv)
    for name in ("config", "reference", "fedavg"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"--{name} {path}: no such file")
    try:
        epsilons = _epsilons(args.epsilons)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    sequential = load_config(args.config, args.overrides).model.name in SEQUENCE_MODELS
    text = args.levels or ("user" if sequential else "user,example")
    levels = [level.strip() for level in text.split(",") if level.strip()]
    if not levels or any(level not in LEVELS for level in levels):
        raise ConfigError(f"--levels {text}: expected some of {', '.join(LEVELS)}")
    if sequential and "example" in levels:
        raise ConfigError(f"--levels {text}: a sequential config ({args.config}) trains at "
                          "user level only (its windows overlap, so a window is not an "
                          "interaction)")
    if args.seeds < 1:
        raise ConfigError("--seeds: expected an integer >= 1")
    federated_runs = []  # (overrides, folder, mechanism, epsilon), checked before any is run
    if args.fedavg is not None:
        federated = load_config(args.fedavg, args.overrides)
        if federated.privacy.mechanism != "fedavg":
            raise ConfigError(f"--fedavg {args.fedavg}: key privacy.mechanism is "
                              f"{federated.privacy.mechanism!r}, expected 'fedavg'")
        plain = [*_plain(federated, args), 'privacy.level="user"']
        # the keys only a noised run reads, back to their defaults for the run without noise
        noised_only = [key for key in set_keys(federated).get("privacy", ())
                       if key in ("clip", "delta", "accountant", "noise", "target_epsilon")]
        if math.inf in epsilons:
            federated_runs.append((plain + _reset(noised_only), "fedavg", "FedAvg, no noise",
                                   math.inf))
        federated_runs += [(plain + [f"privacy.target_epsilon={epsilon}", "privacy.noise=0"],
                            f"fedavg_eps{epsilon:g}", "DP-FedAvg", epsilon)
                           for epsilon in sorted(e for e in epsilons if math.isfinite(e))]
        for overrides, *_ in federated_runs:
            check_keys(load_config(args.fedavg, overrides))
    out = fresh_out(args.out, "privacy_utility")
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(args.config, args.overrides)
    shared = _plain(base, args)
    # the config's own [privacy] keys: all back to their defaults for the run without
    # privacy, the per-user cap for the example level (neither reads them)
    def reset(*keys):
        return _reset(keys)

    rows = []
    if math.inf in epsilons:
        if args.reference is not None:
            rows.append(run_one(args.reference,
                                _plain(load_config(args.reference, args.overrides), args),
                                out / "not_private", "not private", math.inf))
        else:
            rows.append(run_one(args.config, shared + reset(*set_keys(base).get("privacy", ())),
                                out / "not_private", "not private", math.inf))
        print(f"not private: ndcg@10 {_cell(rows[-1]['ndcg@10'])}", flush=True)
    for level in levels:
        # the example level counts rows, and needs every parameter noised and negatives drawn
        # without the user's other rows (`privacy.dpsgd`, "Example level")
        batch = ([f"train.batch_size={args.example_batch}", *reset("max_examples_per_user"),
                  'privacy.user_rows="noised"', "train.exclude_seen_negatives=false"]
                 if level == "example" else [])
        for epsilon in sorted(e for e in epsilons if math.isfinite(e)):
            settings = [f'privacy.level="{level}"', f"privacy.target_epsilon={epsilon}",
                        "privacy.noise=0", 'privacy.mechanism="dp_sgd"']
            row = run_one(args.config, shared + batch + settings,
                          out / f"{level}_eps{epsilon:g}", f"DP-SGD, {level} level", epsilon)
            rows.append(row)
            print(f"{level} eps={epsilon:g}: ndcg@10 {_cell(row['ndcg@10'])}", flush=True)
    for overrides, folder, mechanism, epsilon in federated_runs:
        rows.append(run_one(args.fedavg, overrides, out / folder, mechanism, epsilon))
        print(f"{mechanism} eps={epsilon:g}: ndcg@10 {_cell(rows[-1]['ndcg@10'])}", flush=True)
    reference = next((row["ndcg@10"] for row in rows if row["mechanism"] == "not private"),
                     None)
    for row in rows:
        row["kept"] = (row["ndcg@10"] / reference if reference and row["ndcg@10"] is not None
                       else None)
    table = markdown(rows)
    source = args.config + (f" (DP-FedAvg: {args.fedavg})" if args.fedavg else "")
    (out / "table.md").write_text(f"# Private training on {source}\n\n{table}\n")
    with (out / "table.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "table.json").write_text(json.dumps(
        {"config": args.config, "seeds": args.seeds, "overrides": args.overrides,
         "rows": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                   for k, v in row.items()} for row in rows]}, indent=2) + "\n")
    privacy_figure(out / "privacy_utility.png", rows, ["ndcg@10", "averagepopularity@10"],
                   f"{Path(args.config).name}: private training, {args.seeds} seeds")
    print(f"\n{table}\n\nwrote {out / 'table.md'}, table.csv, table.json, privacy_utility.png")
    return rows


if __name__ == "__main__":
    raise SystemExit(run_script(main))
