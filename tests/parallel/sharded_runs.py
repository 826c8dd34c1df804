"""Run in a subprocess with 8 virtual CPU devices (`test_sharded.py`): trains the same small
run on one device and on several meshes, and prints a JSON report.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/parallel/sharded_runs.py \
        OUT_DIR [--model mf] [--loss bpr] [--method naive] [--meshes 1x1,8x1,4x2,2x4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

from causalrec_jax.config import config_from_dict
from causalrec_jax.errors import ConfigError
from causalrec_jax.parallel import make_mesh, padded_count, table_all_gathers
from causalrec_jax.runs.load import load_run
from causalrec_jax.runs.train import train_run
from causalrec_jax.tasks import ordinary


def config(mesh, model: str, loss: str, method: str):
    sections = {
        "data": {"format": "simulator", "split": "random"},
        # 101 users and 53 items: neither divides 2, 4 or 8, so every table is padded
        "sim": {"n_users": 101, "n_items": 53, "mean_exposure": 0.2},
        "model": {"name": model, "embedding_dim": 8},
        "train": {"loss": loss, "epochs": 4, "batch_size": 64, "learning_rate": 0.05,
                  "seeds": 2, "patience": 10},
        "causal": {"method": method},
        "run": {"quiet": True},
    }
    if model != "mf":
        sections["model"]["hidden_dims"] = [16]
    if method != "naive":
        sections["causal"]["propensity"] = "true"
    if mesh:
        sections["parallel"] = {"mesh": mesh}
    return config_from_dict(sections)


def model_arrays(run: Path) -> dict[str, np.ndarray]:
    loaded = load_run(run)
    leaves = jax.tree_util.tree_flatten_with_path(loaded.parts.params)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--model", default="mf")
    parser.add_argument("--loss", default="bpr")
    parser.add_argument("--method", default="naive")
    parser.add_argument("--meshes", default="1x1,8x1,4x2,2x4")
    args = parser.parse_args(argv)
    out = Path(args.out)
    report: dict = {"devices": jax.device_count(), "runs": {}}
    base = train_run(config(None, args.model, args.loss, args.method), out / "single")
    reference = model_arrays(out / "single")
    report["runs"]["single"] = {"metrics": base["test"]}
    for name in args.meshes.split(","):
        mesh = [int(v) for v in name.split("x")]
        metrics = train_run(config(mesh, args.model, args.loss, args.method), out / name)
        arrays = model_arrays(out / name)
        report["runs"][name] = {
            "metrics": metrics["test"],
            "shapes_equal": all(arrays[k].shape == reference[k].shape for k in reference),
            "largest_difference": max(float(np.abs(arrays[k] - reference[k]).max())
                                      for k in reference),
        }
    # the compiled epoch of the 2 x 4 mesh: no all-gather as large as a padded table
    cfg = config([2, 4], args.model, args.loss, args.method)
    dataset, truth = ordinary.load_dataset(cfg.data, cfg.sim)
    split = ordinary.make_split(dataset, cfg.data, seed=cfg.run.seed)
    setup = ordinary.program_setup(cfg, split, truth)
    run_epoch, _ = ordinary._programs(setup.spec)
    program = run_epoch.program(setup.states, setup.data)
    hlo = program.lower(setup.states, setup.data, setup.keys,
                        jax.numpy.asarray(0, jax.numpy.int32)).compile().as_text()
    smallest = min(padded_count(101, 4), padded_count(53, 4))
    report["hlo"] = {"table_all_gathers": table_all_gathers(hlo, smallest),
                     "all_gathers": hlo.count("all-gather("),
                     "all_reduces": hlo.count("all-reduce(")}
    sharding = jax.tree.leaves(setup.states.params["prediction"])
    report["state_specs"] = sorted({str(leaf.sharding.spec) for leaf in sharding})
    errors = {}
    for bad in ([3, 1], [2, 3]):
        try:
            make_mesh(bad)
        except ConfigError as error:
            errors["x".join(map(str, bad))] = str(error)
    report["errors"] = errors
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    sys.exit(main() and 0)
