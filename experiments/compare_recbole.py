"""Side by side with RecBole 1.2.1 on ml-100k: metrics, seconds per epoch, peak memory, and time
to quality (issue 7, item 5). Driven by `experiments/compare_recbole.sh`, which makes RecBole's
own environment; RecBole and torch are not dependencies of causalrec_jax.

    python experiments/compare_recbole.py recbole --model sasrec [--data DIR] [--epochs N]
        [--out DIR] [--work DIR]                     (in RecBole's venv)
    python experiments/compare_recbole.py ours --model sasrec [--data DIR] [--out DIR]
        [--runs DIR] [--reuse RUN_DIR]               (in the project's venv)
    python experiments/compare_recbole.py table [--out DIR]

Models: `sasrec` (RecBole SASRec vs configs/ml100k_sasrec.toml), `bpr` (BPR vs
configs/ml100k_mf.toml), `lightgcn` (LightGCN vs configs/ml100k_lightgcn.toml). Each `recbole`
and `ours` call writes `<out>/<library>_<model>.json` (one row: test and best-validation
metrics, the per-epoch validation curve in cumulative seconds since the start of training,
compilation included, seconds per epoch, epochs run, peak resident memory); `table` renders
every row found to `<out>/table.md` and `<out>/results.json`.

Protocols. SASRec: leave-one-out by time, full ranking over all items. RecBole does not mask
the user's history when ranking for sequential models; ours reports both, `test_unmasked`
(RecBole's protocol) and `test` (history masked). Our SASRec early-stops on validation with the
history masked, but also logs it unmasked (`unmasked_ndcg@10`), and the valid ndcg@10 curve and
the time to reach 0.0702 are read from that, RecBole's protocol. BPR and LightGCN: random
80/10/10 split per user, full ranking with training (and at test, validation) items masked, in
both libraries.

Time to quality: the first cumulative time (end of that epoch's validation) at which valid
ndcg@10 >= the threshold: for SASRec 0.0702, RecBole's best in the issue's measurement; for
BPR and LightGCN, RecBole's best valid ndcg@10 in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from causalrec_jax.report.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"
DEFAULT_OUT = ROOT / "experiments" / "results" / "compare_recbole"
MODELS = ("sasrec", "bpr", "lightgcn")
SASREC_THRESHOLD = 0.0702  # RecBole SASRec's best valid ndcg@10 in issue 7's measurement
OUR_CONFIGS = {"sasrec": "configs/ml100k_sasrec.toml", "bpr": "configs/ml100k_mf.toml",
               "lightgcn": "configs/ml100k_lightgcn.toml"}
PROTOCOLS = {
    "sasrec": "leave-one-out by time, full ranking; RecBole protocol = history not masked",
    "bpr": "random 80/10/10 per user, full ranking, seen items masked",
    "lightgcn": "random 80/10/10 per user, full ranking, seen items masked",
}
REFERENCE = """\
## Reference (from the issue, not measured by this run)

RecBole 1.2.1 SASRec on ml-100k, CPU, as measured in issue 7: 145–197 s per epoch, 4.7 GB peak
memory, best valid ndcg@10 0.0702 after 2,841 s, test ndcg@10 0.0609 and hit@10 0.1251 (history
not masked). RecBole LightGCN test ndcg@10 0.2116 vs RecBole BPR 0.2928.
"""


# ---------------------------------------------------------------------------------------------
# Pure parts (tested without RecBole or torch)
# ---------------------------------------------------------------------------------------------

def seconds_to_reach(curve: list[dict[str, Any]], threshold: float,
                     metric: str = "ndcg@10") -> float | None:
    """First cumulative `seconds` of a curve at which `metric` >= threshold; None if never."""
    for point in curve:
        if point.get(metric) is not None and point[metric] >= threshold:
            return float(point["seconds"])
    return None


def read_our_run(run_dir: str | Path, model: str, *, peak_mb: float | None = None,
                 command: str | None = None) -> dict[str, Any]:
    """One table row from a `causalrec train` run folder (metrics.json and log.jsonl, the
    first seed's lines: log.jsonl has one line per epoch and seed).

    The curve's `seconds` are cumulative from the start of training. Runs log training seconds
    per epoch (the first includes compilation), so each epoch also gets an equal share of
    `timing.eval_seconds` (sequential runs written before the one training core logged
    training plus validation seconds, and get none). Peak memory: `peak_mb` if given
    (measured on the child process), else `timing.peak_rss_mb` from metrics.json, else None.
    """
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()
             if line.strip()]
    first_seed = (metrics.get("seeds") or [0])[0]
    lines = [line for line in lines if line.get("seed", first_seed) == first_seed]
    timing = metrics.get("timing", {})
    sequential = "test_unmasked" in metrics
    # Sequential runs of the one core log like the others (training seconds, validation under
    # "valid"); runs written before it logged flat lines (validation metrics at the top) and
    # counted validation in each epoch's seconds.
    older_sequential = sequential and bool(lines) and "valid" not in lines[0]
    eval_share = (0.0 if older_sequential
                  else timing.get("eval_seconds", 0.0) / max(len(lines), 1))
    # Sequential runs also log the validation ranked without masking the history
    # (`unmasked_*`), RecBole's protocol: the curve then compares like with like.
    unmasked = sequential and bool(lines) and "unmasked_ndcg@10" in lines[0].get("valid",
                                                                                 lines[0])
    prefix = "unmasked_" if unmasked else ""
    curve, elapsed = [], 0.0
    for line in lines:
        valid = line.get("valid", line)
        epoch_seconds = float(line["seconds"]) + eval_share
        elapsed += epoch_seconds
        point = {"epoch": int(line["epoch"]), "epoch_seconds": epoch_seconds,
                 "seconds": elapsed}
        point.update({name: valid.get(prefix + name) for name in ("ndcg@10", "hit@10", "mrr@10")})
        if unmasked:
            point["masked_ndcg@10"] = valid.get("ndcg@10")
        curve.append(point)
    train_seconds = float(timing.get("train_seconds", elapsed))
    if not older_sequential:
        train_seconds += float(timing.get("eval_seconds", 0.0))
    if peak_mb is None:
        peak_mb = timing.get("peak_rss_mb")
    row = {
        "library": "causalrec_jax", "model": model, "protocol": PROTOCOLS[model],
        "run": _relative(run_dir.resolve()),
        # the column comparable with RecBole: unmasked for sequential, masked for general
        "test_recbole_protocol": metrics["test_unmasked"] if sequential else metrics["test"],
        "test_history_masked": metrics["test"] if sequential else None,
        "valid_best": ({"ndcg@10": max(p["ndcg@10"] for p in curve)} if unmasked and curve
                       else metrics.get("valid", {})),
        "valid_history_masked": sequential and not unmasked,
        "curve": curve,
        "seconds_per_epoch": (statistics.median(p["epoch_seconds"] for p in curve)
                              if curve else None),
        "epochs_run": len(curve), "capped_at": None,
        "train_seconds": train_seconds,
        "peak_mb": peak_mb,
        "data": {key: metrics.get("data", {}).get(key) for key in ("n_users", "n_items")},
        "versions": metrics.get("versions", {}),
        "command": command,
    }
    return row


def add_time_to_quality(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set each row's `threshold` and `seconds_to_threshold` (None: never reached)."""
    recbole_best = {row["model"]: (row["valid_best"] or {}).get("ndcg@10")
                    for row in rows if row["library"] == "recbole"}
    for row in rows:
        threshold = (SASREC_THRESHOLD if row["model"] == "sasrec"
                     else recbole_best.get(row["model"]))
        row["threshold"] = threshold
        row["seconds_to_threshold"] = (None if threshold is None
                                       else seconds_to_reach(row["curve"], threshold))
    return rows


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def render_table(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """The markdown report: header lines, the table, notes and the issue's reference block."""
    order = {model: i for i, model in enumerate(MODELS)}
    rows = sorted(rows, key=lambda r: (order.get(r["model"], 99), r["library"] != "recbole"))
    out = ["# causalrec_jax vs RecBole 1.2.1 on ml-100k", ""]
    for key, value in header.items():
        if isinstance(value, list):
            out.append(f"- {key}:")
            out.extend(f"  - `{item}`" for item in value)
        else:
            out.append(f"- {key}: {value}")
    header = ["library", "model", "test ndcg@10 (RecBole protocol)",
              "test hit@10 (RecBole protocol)", "test ndcg@10 / hit@10 (history masked)",
              "best valid ndcg@10", "s/epoch (median, train+valid)", "epochs run",
              "s to valid ndcg@10 ≥ threshold", "train s (incl. validation)", "peak memory MB"]
    align = ["---", "---", "---:", "---:", "---:", "---:", "---:", "---", "---", "---:", "---:"]
    cells = []
    for row in rows:
        test = row["test_recbole_protocol"] or {}
        masked = row.get("test_history_masked")
        masked_text = (f"{_number(masked.get('ndcg@10'))} / {_number(masked.get('hit@10'))}"
                       if masked else "—")
        epochs = str(row["epochs_run"])
        if row.get("capped_at"):
            epochs += f" (capped at {row['capped_at']} epochs (not converged))"
        valid = _number((row["valid_best"] or {}).get("ndcg@10"))
        if row.get("valid_history_masked"):
            valid += " (history masked)"
        threshold = row.get("threshold")
        if threshold is None:
            reach = "—"
        elif row.get("seconds_to_threshold") is None:
            reach = f"never reached {threshold:.4f}"
        else:
            reach = f"{_seconds(row['seconds_to_threshold'])} (≥ {threshold:.4f})"
        cells.append([row["library"], row["model"], _number(test.get("ndcg@10")),
                      _number(test.get("hit@10")), masked_text, valid,
                      _seconds(row["seconds_per_epoch"]), epochs, reach,
                      _seconds(row["train_seconds"]), _seconds(row["peak_mb"])])
    out += ["", markdown_table(header, cells, align)]
    out += ["", "Protocols (every column):", ""]
    out += [f"- {model}: {PROTOCOLS[model]}." for model in MODELS
            if any(r["model"] == model for r in rows)]
    out += [
        "- \"RecBole protocol\" columns: SASRec ranks all items without masking the user's "
        "history (RecBole's sequential evaluation; ours `test_unmasked`); BPR and LightGCN mask "
        "the training (and at test, validation) items, in both libraries.",
        "- \"history masked\": our SASRec's `test` (the user's history masked); RecBole does not "
        "compute it.",
        "- Best valid ndcg@10 and the time to reach 0.0702 (SASRec): unmasked in both "
        "libraries (our runs log `unmasked_ndcg@10` each epoch beside the history-masked "
        "figure they early-stop on); a row marked \"(history masked)\" comes from an older run "
        "without it and reads higher. BPR and LightGCN select on "
        "valid mrr@10 in both libraries; the threshold for them is RecBole's best valid "
        "ndcg@10 in this run.",
        "- Seconds are wall-clock from the start of training (ours: compilation included) to "
        "the end of the epoch's validation; peak memory is the process's peak resident set "
        "(ru_maxrss).",
        "", REFERENCE]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# RecBole side (runs in RecBole's venv)
# ---------------------------------------------------------------------------------------------

def recbole_config(model: str, data_root: Path, epochs: int, work: Path) -> dict[str, Any]:
    """RecBole config_dict matching our configs' protocol and budget."""
    common = {
        "data_path": str(data_root), "checkpoint_dir": str(work / "saved"), "use_gpu": False,
        "seed": 0, "reproducibility": True, "show_progress": False, "epochs": epochs,
        "stopping_step": 10, "eval_batch_size": 4096, "train_batch_size": 2048,
        "metric_decimal_place": 6,
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "user_inter_num_interval": None, "item_inter_num_interval": None, "val_interval": None,
    }
    if model == "sasrec":
        return {**common, "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2,
                "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5,
                "MAX_ITEM_LIST_LENGTH": 50, "loss_type": "CE", "train_neg_sample_args": None,
                "learning_rate": 1e-3,
                "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO",
                              "mode": "full", "group_by": "user"},
                "metrics": ["Hit", "NDCG", "MRR", "Recall"], "topk": [5, 10, 20],
                "valid_metric": "NDCG@10"}
    general = {**common, "embedding_size": 64,
               "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "group_by": "user",
                             "order": "RO", "mode": "full"},
               "metrics": ["Recall", "NDCG", "Hit", "MRR", "Precision"], "topk": [10],
               "valid_metric": "MRR@10"}
    if model == "bpr":
        return {**general, "learning_rate": 1e-3}
    return {**general, "n_layers": 3, "learning_rate": 5e-3}


def link_dataset(data: Path, work: Path) -> Path:
    """Symlink `<data>/<name>.inter` (and .user/.item) as `<work>/data/ml-100k/ml-100k.*`.

    RecBole reads `<data_path>/<dataset>/<dataset>.inter`; it downloads only when that folder
    is missing, which this rules out. Returns the data_path to give RecBole.
    """
    inters = sorted(Path(data).glob("*.inter"))
    if len(inters) != 1:
        raise SystemExit(f"{data}: expected one RecBole .inter file, found {len(inters)}")
    target = work / "data" / "ml-100k"
    target.mkdir(parents=True, exist_ok=True)
    for suffix in (".inter", ".user", ".item"):
        source = inters[0].with_suffix(suffix)
        link = target / f"ml-100k{suffix}"
        if source.exists() and not link.exists():
            link.symlink_to(source.resolve())
    return work / "data"


def run_recbole(model: str, data: Path, epochs: int | None, out: Path, work: Path) -> dict:
    """Train and test one RecBole model, recording the validation curve; write its row."""
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # checkpoint reload, torch>=2.6
    import recbole
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    work.mkdir(parents=True, exist_ok=True)
    data_root = link_dataset(data, work)
    os.chdir(work)  # RecBole writes ./log and ./log_tensorboard
    name = {"sasrec": "SASRec", "bpr": "BPR", "lightgcn": "LightGCN"}[model]
    budget = epochs if epochs else 1000
    config = Config(model=name, dataset="ml-100k",
                    config_dict=recbole_config(model, data_root, budget, work))
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    stats = {"n_users": dataset.user_num - 1, "n_items": dataset.item_num - 1,
             "n_interactions": dataset.inter_num}
    print(f"recbole {name}: {stats}", flush=True)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    network = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, network)

    curve: list[dict[str, Any]] = []
    clock = {"start": 0.0, "train": 0.0}
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def timed_train_epoch(*args, **kwargs):
        tic = time.perf_counter()
        loss = train_epoch(*args, **kwargs)
        clock["train"] = time.perf_counter() - tic
        return loss

    def timed_valid_epoch(*args, **kwargs):
        tic = time.perf_counter()
        score, result = valid_epoch(*args, **kwargs)
        now = time.perf_counter()
        curve.append({"epoch": len(curve), "epoch_seconds": clock["train"] + now - tic,
                      "train_seconds": clock["train"], "valid_seconds": now - tic,
                      "seconds": now - clock["start"],
                      **{key: float(value) for key, value in result.items()}})
        print(f"recbole {name} epoch {len(curve) - 1}: {curve[-1]['epoch_seconds']:.1f} s, "
              f"valid ndcg@10 {curve[-1].get('ndcg@10', float('nan')):.4f}", flush=True)
        return score, result

    trainer._train_epoch, trainer._valid_epoch = timed_train_epoch, timed_valid_epoch
    clock["start"] = time.perf_counter()
    _, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    train_seconds = time.perf_counter() - clock["start"]
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    row = {
        "library": "recbole", "model": model, "protocol": PROTOCOLS[model],
        "test_recbole_protocol": {key: float(value) for key, value in test.items()},
        "test_history_masked": None,
        "valid_best": {key: float(value) for key, value in (best_valid or {}).items()},
        "valid_history_masked": False,
        "curve": curve,
        "seconds_per_epoch": statistics.median(p["epoch_seconds"] for p in curve),
        "epochs_run": len(curve),
        "capped_at": epochs if epochs and len(curve) >= epochs else None,
        "train_seconds": train_seconds,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "data": stats,
        "versions": {"recbole": recbole.__version__, "torch": torch.__version__,
                     "python": platform.python_version(), "torch_threads":
                     torch.get_num_threads()},
        "command": " ".join(sys.argv),
        "config": {key: config[key] for key in recbole_config(model, data_root, budget, work)
                   if key not in ("data_path", "checkpoint_dir")},
    }
    _write_row(out, row)
    return row


# ---------------------------------------------------------------------------------------------
# Our side, the table, and the command line
# ---------------------------------------------------------------------------------------------

def run_ours(model: str, data: Path, out: Path, runs: Path, reuse: Path | None) -> dict:
    """Train ours with `causalrec train` in a child process (or read `reuse`); write its row."""
    if reuse is not None:
        row = read_our_run(reuse, model, command=f"(reused run folder {_relative(reuse)})")
        row["load_average"] = None  # trained earlier, under unknown load
    else:
        run_dir = runs / model
        # the script's own scratch run: trained afresh each time (causalrec refuses to overwrite)
        shutil.rmtree(ROOT / run_dir if not run_dir.is_absolute() else run_dir,
                      ignore_errors=True)
        command = [sys.executable, "-m", "causalrec_jax", "train", "--config",
                   OUR_CONFIGS[model], "--set", f'data.path="{os.path.relpath(data, ROOT)}"',
                   "--out", _relative(run_dir), "--quiet"]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        row = read_our_run(run_dir, model, peak_mb=peak_mb,
                           command=" ".join(["causalrec", *command[3:]]))
    _write_row(out, row)
    return row


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _write_row(out: Path, row: dict[str, Any]) -> None:
    if "load_average" not in row:  # other jobs on the machine skew timings
        row["load_average"] = round(os.getloadavg()[0], 2)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{'ours' if row['library'] == 'causalrec_jax' else 'recbole'}_{row['model']}.json"
    path.write_text(json.dumps(row, indent=2) + "\n")
    print(f"wrote {path}", flush=True)


def machine_header(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Date, machine and versions for the table's header."""
    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for row in rows:
        versions.update({k: str(v) for k, v in row.get("versions", {}).items()})
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()}, CPU only",
        "versions": ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
        "data": "; ".join(f"{r['library']} {r['model']}: {r['data']}" for r in rows),
        "load average (1 min) at the end of each run": ", ".join(
            f"{r['library']} {r['model']} {r['load_average']}" for r in rows
            if r.get("load_average") is not None),
        "commands": [r["command"] for r in rows if r.get("command")],
    }


def write_table(out: Path, note: str | None = None) -> str:
    rows = [json.loads(path.read_text()) for path in sorted(out.glob("*_*.json"))
            if path.name != "results.json"]
    rows = add_time_to_quality(rows)
    header = machine_header(rows)
    if note:
        header["note"] = note
    text = render_table(rows, header)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["recbole", "ours", "table"])
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, help="cap on RecBole's epochs (default: early "
                        "stopping, stopping_step 10)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work", type=Path, help="RecBole's scratch folder")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "compare_recbole",
                        help="where our run folders go")
    parser.add_argument("--reuse", type=Path, help="read this run folder instead of training")
    parser.add_argument("--note", help="table: a line on how this run was made")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.step == "table":
        write_table(out, args.note)
        return
    if args.model is None:
        parser.error(f"{args.step} needs --model")
    data = args.data.resolve()
    if args.step == "recbole":
        work = (args.work or Path("/tmp") / f"compare_recbole_{args.model}").resolve()
        run_recbole(args.model, data, args.epochs, out, work)
    else:
        run_ours(args.model, data, out, args.runs.resolve(),
                 args.reuse.resolve() if args.reuse else None)


if __name__ == "__main__":
    main()
