"""Run in a subprocess with 8 virtual CPU devices (`test_sharded_sequences.py`): trains the same
small sequential run on one device and on meshes, and prints a JSON report.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python \
        tests/parallel/sharded_sequence_runs.py OUT_DIR [--model sasrec] \
        [--loss sampled_softmax] [--meshes 4x2] [--checkpoints]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from stopped_runs import stopped_after

from causalrec_jax.config import config_from_dict
from causalrec_jax.data.loader import load_split
from causalrec_jax.parallel import table_collectives
from causalrec_jax.runs.load import load_run
from causalrec_jax.runs.train import sequence_run
from causalrec_jax.tasks import sequential

# 101 items: the item table (101 rows) and the token table (102, or 103 with BERT4Rec's
# [mask]) divide none of 4 and 8 and are larger than every batch axis (16 windows of 8, 16
# negatives, width 8, 32 in the feed-forward layer), so a table-sized collective cannot be
# mistaken for a batch-sized one.
N_ITEMS = 101


def write_walks(path: Path) -> None:
    """80 users' walks over `N_ITEMS` items: each next item mostly fixed by the last."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(80):
        item = int(rng.integers(N_ITEMS))
        for time in range(int(rng.integers(4, 14))):
            rows.append((user, item, time))
            item = int((item * 7 + 3 + rng.integers(2)) % N_ITEMS)
    pd.DataFrame(rows, columns=["user", "item", "time"]).to_csv(path, index=False)


# `--one-width`: windows in one bucket (one compiled step per run instead of two).
BUCKETS = [4]


def config(path: Path, mesh, model: str, loss: str, checkpoint_every: int = 5):
    sections = {
        "data": {"format": "csv", "path": str(path), "split": "leave_one_out",
                 "columns": {"user": "user", "item": "item", "timestamp": "time"}},
        # two bucket widths (4 and 8) unless --one-width: a compiled step each, over the
        # mesh as on one device
        "model": {"name": model, "embedding_dim": 8, "n_layers": 1, "n_heads": 1,
                  "max_len": 8, "length_buckets": BUCKETS, "dropout": 0.2},
        "train": {"loss": loss, "learning_rate": 0.01, "batch_size": 16, "epochs": 4,
                  "patience": 10, "checkpoint_every": checkpoint_every},
        "eval": {"metrics": ["hit", "ndcg"], "ks": [1, 10], "positive_threshold": 0.0},
        "run": {"quiet": True},
    }
    if loss == "sampled_softmax":
        sections["train"]["n_negatives"] = 16
    if mesh:
        sections["parallel"] = {"mesh": mesh}
    return config_from_dict(sections)


ROOT = Path(__file__).resolve().parents[2]


def slate_log_config(folder: Path, mesh):
    """`configs/sim_sasrec_ips.toml` (SASRec trained on a confounded slate log, every shown
    item weighted by its logged propensity) on a 200-user log written into `folder` once,
    3 epochs."""
    from causalrec_jax.config import load_config
    from causalrec_jax.sim.logs import simulate_log
    from causalrec_jax.sim.simlog import write_simlog

    if not (folder / "log").exists():
        log_config = load_config(ROOT / "configs" / "sim_seq_log.toml", ["env.n_users=200"])
        log, truth = simulate_log(log_config.env, log_config.policy, jax.random.key(0))
        write_simlog(folder / "log", log, truth, log_config)
    extra = [f'data.path="{folder / "log"}"', "train.epochs=3", "run.quiet=true"]
    if mesh:
        extra.append(f"parallel.mesh={list(mesh)}")
    return load_config(ROOT / "configs" / "sim_sasrec_ips.toml", extra)


def model_arrays(run: Path) -> dict[str, np.ndarray]:
    loaded = load_run(run)
    leaves = jax.tree_util.tree_flatten_with_path(loaded.parts.params)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def differences(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict:
    """Per parameter, the largest difference from the reference (None: another shape)."""
    return {name: float(np.abs(arrays[name] - value).max())
            if arrays[name].shape == value.shape else None
            for name, value in reference.items()}


def hlo_report(path: Path, args, mesh: list[int]) -> dict:
    """The compiled step of each bucket width over `mesh`: its collectives with an axis as
    long as the item table, and how many all-gathers it holds; the states' shardings."""
    cfg = config(path, mesh, args.model, args.loss)
    split, _ = load_split(cfg.data, seed=cfg.run.seed)
    setup = sequential.seed_setup(cfg, split, cfg.run.seed)
    step = setup.run_epoch.bucket_step
    found, gathers = [], 0
    for rows in setup.data["buckets"]:
        order = jnp.zeros((cfg.train.batch_size,), jnp.int32)
        hlo = step.program(setup.states, rows).lower(
            setup.states, rows, order, setup.data["shared"], setup.key[0],
            jnp.asarray(-1, jnp.int32), jnp.asarray(0, jnp.int32)).compile().as_text()
        found += table_collectives(hlo, N_ITEMS)
        gathers += hlo.count("all-gather(")
    specs = sorted({str(leaf.sharding.spec) for leaf in jax.tree.leaves(setup.states)
                    if leaf.ndim == 3})
    return {"table_collectives": found, "all_gathers": gathers,
            "widths": len(setup.data["buckets"]), "state_specs": specs}


def checkpoint_report(path: Path, out: Path, args, stop_mesh: list[int],
                      reference: dict[str, np.ndarray]) -> dict:
    """A run on `stop_mesh` stopped after epoch 2's checkpoint, then resumed on one device:
    its model's differences from the uninterrupted one-device run's, and its log's epochs."""
    stopped = out / "stopped"
    interrupted = stopped_after(sequential, 2, lambda: sequence_run(
        config(path, stop_mesh, args.model, args.loss, checkpoint_every=1), stopped))
    resumed = out / "resumed_single"
    shutil.copytree(stopped, resumed)
    sequence_run(config(path, None, args.model, args.loss, checkpoint_every=1), resumed,
                 resume=True)
    epochs = [json.loads(line)["epoch"] for line in
              (resumed / "log.jsonl").read_text().splitlines()]
    return {"interrupted": interrupted, "epochs": epochs,
            "differences": differences(model_arrays(resumed), reference)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--loss", default="sampled_softmax")
    parser.add_argument("--meshes", default="1x1,8x1,4x2,2x4")
    parser.add_argument("--checkpoints", action="store_true",
                        help="also stop a 4x2 run after epoch 2 and resume it on one device")
    parser.add_argument("--slate-log", action="store_true",
                        help="train the IPS-weighted SASRec of a simulated slate log instead")
    parser.add_argument("--one-width", action="store_true",
                        help="windows in one bucket width (8) instead of two (4 and 8)")
    args = parser.parse_args(argv)
    if args.one_width:
        BUCKETS.clear()
    out = Path(args.out)
    out.mkdir(parents=True)
    path = out / "walks.csv"
    write_walks(path)
    report: dict = {"devices": jax.device_count(), "runs": {}}
    if args.slate_log:
        single = sequence_run(slate_log_config(out, None), out / "single")
        reference = model_arrays(out / "single")
        report["runs"]["single"] = {"test_truth": single["test_truth"]}
        for name in args.meshes.split(","):
            mesh = [int(v) for v in name.split("x")]
            metrics = sequence_run(slate_log_config(out, mesh), out / name)
            report["runs"][name] = {"test_truth": metrics["test_truth"], "differences":
                                    differences(model_arrays(out / name), reference)}
        print(json.dumps(report))
        return report
    single = sequence_run(config(path, None, args.model, args.loss), out / "single")
    reference = model_arrays(out / "single")
    report["runs"]["single"] = {"test": single["test"]}
    meshes = [[int(v) for v in name.split("x")] for name in args.meshes.split(",")]
    for mesh in meshes:
        name = "x".join(map(str, mesh))
        metrics = sequence_run(config(path, mesh, args.model, args.loss), out / name)
        report["runs"][name] = {"test": metrics["test"], "best_epoch":
                                metrics["per_seed"][0]["best_epoch"],
                                "differences": differences(model_arrays(out / name), reference)}
    report["runs"]["single"]["best_epoch"] = single["per_seed"][0]["best_epoch"]
    report["hlo"] = hlo_report(path, args, meshes[-1])
    if args.checkpoints:
        report["checkpoints"] = checkpoint_report(path, out, args, [4, 2], reference)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    sys.exit(main() and 0)
