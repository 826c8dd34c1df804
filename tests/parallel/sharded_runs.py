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
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from stopped_runs import stopped_after

from causalrec_jax.config import config_from_dict
from causalrec_jax.errors import ConfigError
from causalrec_jax.parallel import (
    make_mesh,
    padded_count,
    sharded_lookup,
    sharded_top_k,
    table_collectives,
)
from causalrec_jax.runs.load import load_run
from causalrec_jax.runs.train import train_run
from causalrec_jax.tasks import ordinary

# `--privacy`: the [privacy] keys of every run (DP-SGD on the mesh as on one device).
PRIVACY: dict = {}


def config(mesh, model: str, loss: str, method: str, checkpoint_every: int = 5):
    sections = {
        "data": {"format": "simulator", "split": "random"},
        # 301 users and 203 items: neither divides 2, 4 or 8, so every table is padded; both
        # above the batch, so a table-sized collective cannot be mistaken for a batch-sized one
        "sim": {"n_users": 301, "n_items": 203, "mean_exposure": 0.1},
        "model": {"name": model, "embedding_dim": 8},
        "train": {"loss": loss, "epochs": 4, "batch_size": 64, "learning_rate": 0.05,
                  "seeds": 2, "patience": 10, "checkpoint_every": checkpoint_every},
        "causal": {"method": method},
        "run": {"quiet": True},
    }
    if model != "mf":
        sections["model"]["hidden_dims"] = [16]
    if method != "naive":
        sections["causal"]["propensity"] = "true"
    if mesh:
        sections["parallel"] = {"mesh": mesh}
    if PRIVACY:
        sections["privacy"] = {"noise": 1.0, **PRIVACY}
        sections["train"]["batch_size"] = 32
        if PRIVACY.get("level") == "example":  # a row's negatives may not read other rows
            sections["train"]["exclude_seen_negatives"] = False
    return config_from_dict(sections)


def model_arrays(run: Path) -> dict[str, np.ndarray]:
    loaded = load_run(run)
    leaves = jax.tree_util.tree_flatten_with_path(loaded.parts.params)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def shard_map_checks() -> dict:
    """`sharded_lookup` and `sharded_top_k` on a 2 x 4 mesh against the dense operations:
    the largest differences of rows, gradients and scores, and whether the items agree."""
    mesh = make_mesh([2, 4])
    rng = np.random.default_rng(0)
    n_items, n_padded, dim = 53, padded_count(53, 4), 8
    table = np.zeros((n_padded, dim), np.float32)
    table[:n_items] = rng.normal(size=(n_items, dim))
    table[[3, 20, 41]] = table[7]  # ties across shards
    ids = jnp.asarray(rng.integers(0, n_items, 16))
    sharded_table = jax.device_put(jnp.asarray(table),
                                   NamedSharding(mesh, P("model", None)))
    rows = sharded_lookup(sharded_table, ids, mesh)

    def loss(lookup, table):
        return jnp.sum(jnp.sin(lookup(table)) * jnp.arange(dim))

    gradient = jax.grad(loss, argnums=1)(lambda t: sharded_lookup(t, ids, mesh),
                                         sharded_table)
    dense_gradient = jax.grad(loss, argnums=1)(lambda t: t[ids], jnp.asarray(table))
    queries = jnp.asarray(rng.normal(size=(6, dim)).astype(np.float32))
    queries = queries.at[1].set(0.0)  # every score ties: the lowest ids win
    exclude = np.zeros((6, n_padded), bool)
    exclude[0, :10] = True
    scores, items = sharded_top_k(queries, sharded_table, 10, n_items, mesh,
                                  exclude=jnp.asarray(exclude))
    dense = jnp.where(jnp.asarray(exclude[:, :n_items]), -jnp.inf,
                      queries @ jnp.asarray(table[:n_items]).T)
    dense_scores, dense_items = jax.lax.top_k(dense, 10)
    return {"lookup": float(jnp.abs(rows - table[np.asarray(ids)]).max()),
            "lookup_gradient": float(jnp.abs(gradient - dense_gradient).max()),
            "top_k_scores": float(jnp.abs(scores - dense_scores).max()),
            "top_k_items_equal": bool(np.array_equal(items, dense_items)),
            "top_k_tied_row": np.asarray(items[1]).tolist()}


def serve_checks(out: Path) -> dict:
    """`recommend --all` of the one-device run over its item table split by rows over 8 and 4
    model shards, each shard's top-10 merged, against the one-device lists: whether users,
    ranks and items agree, the largest score difference; and the refusal of a K above one
    shard's items."""
    import pyarrow.parquet as pq

    from causalrec_jax.errors import RunError
    from causalrec_jax.runs.serve import recommend_all

    run = load_run(out / "single")
    recommend_all(run, 10, out=out / "serve_single.parquet", fallback="popularity")
    single = pq.read_table(out / "serve_single.parquet").to_pandas()
    report = {}
    for shape in ([1, 8], [2, 4]):
        name = "x".join(map(str, shape))
        path = out / f"serve_{name}.parquet"
        summary = recommend_all(run, 10, out=path, fallback="popularity",
                                mesh=make_mesh(shape))
        table = pq.read_table(path).to_pandas()
        same = (len(table) == len(single) and all(
            table[column].tolist() == single[column].tolist()
            for column in ("user", "rank", "item", "fallback")))
        report[name] = {"rows": summary.rows, "lists_equal": same,
                        "score_difference": float(np.abs(table["score"].to_numpy()
                                                         - single["score"].to_numpy()).max())
                        if same else None}
    try:
        recommend_all(run, 30, out=out / "serve_k30.parquet", mesh=make_mesh([1, 8]))
        report["k_refused"] = None
    except RunError as error:
        report["k_refused"] = str(error)
    report["single_rows"] = len(single)
    return report


def checkpoint_checks(out: Path, args, reference: dict[str, np.ndarray]) -> dict:
    """A run on the 2 x 4 mesh (8 devices) stopped after epoch 2, its checkpoint read back on
    2 x 4, 2 x 2 (4 devices) and one device, and the run resumed on 2 x 2 and on one device:
    the largest differences between the checkpoint's values as each mesh reads them, and
    between each resumed run's model and the uninterrupted one-device run's."""
    import shutil

    from causalrec_jax.runs import train as run_train
    from causalrec_jax.train.checkpoint import latest_epoch, restore_checkpoint

    interrupted = stopped_after(ordinary, 2, lambda: run_train.train_run(
        config([2, 4], args.model, args.loss, args.method, checkpoint_every=1),
        out / "stopped"))
    checkpoints = out / "stopped" / "checkpoints"
    epoch = latest_epoch(checkpoints)
    read = {}
    for mesh in ([2, 4], [2, 2], None):
        cfg = config(mesh, args.model, args.loss, args.method, checkpoint_every=1)
        dataset, truth = ordinary.load_dataset(cfg.data, cfg.sim)
        setup = ordinary.program_setup(cfg, ordinary.make_split(dataset, cfg.data,
                                                                seed=cfg.run.seed), truth)
        like = {"states": setup.states, "best_params": setup.states.params,
                "keys": jax.random.key_data(setup.keys)}
        view = ordinary.sharded_checkpoints(setup.spec)
        arrays, _ = restore_checkpoint(checkpoints, like if view is None else view.stored(like))
        if view is not None:
            arrays = view.load(arrays, like)
        read[str(mesh)] = [np.asarray(leaf) for leaf in jax.tree.leaves(
            ordinary.unpadded(setup.spec, arrays["states"].params, row_axis=1))]
    report = {"interrupted": interrupted, "epoch": epoch, "read_differences": {
        name: max(float(np.abs(a - b).max()) for a, b in zip(leaves, read["[2, 4]"],
                                                               strict=True))
        for name, leaves in read.items()}}
    for mesh in ([2, 2], None):
        name = "resumed_" + ("x".join(map(str, mesh)) if mesh else "single")
        shutil.copytree(out / "stopped", out / name)
        run_train.train_run(config(mesh, args.model, args.loss, args.method,
                                   checkpoint_every=1), out / name, resume=True)
        arrays = model_arrays(out / name)
        report[name] = max(float(np.abs(arrays[k] - reference[k]).max()) for k in reference)
    return report


def halving_checks(args, meshes: list[list[int] | None]) -> dict:
    """A population of 4 learning rates under successive halving (rungs of 2 epochs, half
    kept) on each of `meshes`: the members each rung dropped, every member's best epoch and
    validation ndcg@10, and the largest parameter difference from the first mesh's."""
    import dataclasses

    report, reference = {}, None
    for mesh in meshes:
        cfg = config(mesh, args.model, args.loss, args.method)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(
            cfg.train, epochs=6, seeds=1, halving_rung=2, halving_keep=0.5))
        dataset, truth = ordinary.load_dataset(cfg.data, cfg.sim)
        split = ordinary.make_split(dataset, cfg.data, seed=cfg.run.seed)
        members = [ordinary.Member(seed=0, hparams={"learning_rate": lr})
                   for lr in (0.002, 0.01, 0.05, 0.1)]
        trained = ordinary.train_split(cfg, split, members=members, evaluate_test=False,
                                       truth=truth)
        leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(trained.parts.params)]
        reference = leaves if reference is None else reference
        report["x".join(map(str, mesh)) if mesh else "single"] = {
            "dropped": [e["halving_dropped"] for e in trained.history
                        if "halving_dropped" in e],
            "best_epochs": [e["best_epoch"] for e in trained.per_seed],
            "valid": [e["valid"]["ndcg@10"] for e in trained.per_seed],
            "largest_difference": max(float(np.abs(a - b).max())
                                      for a, b in zip(leaves, reference, strict=True))}
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--model", default="mf")
    parser.add_argument("--loss", default="bpr")
    parser.add_argument("--method", default="naive")
    parser.add_argument("--meshes", default="1x1,8x1,4x2,2x4")
    parser.add_argument("--checkpoints", action="store_true",
                        help="also stop a 2x4 run and resume it on 2x2 and on one device")
    parser.add_argument("--halving", action="store_true",
                        help="also train a population under successive halving on one device "
                             "and on 4x2")
    parser.add_argument("--privacy", type=json.loads, default={},
                        help="[privacy] keys as JSON, e.g. '{\"level\": \"user\"}'")
    args = parser.parse_args(argv)
    global PRIVACY
    PRIVACY = args.privacy
    out = Path(args.out)
    report: dict = {"devices": jax.device_count(), "runs": {}}
    base = train_run(config(None, args.model, args.loss, args.method), out / "single")
    reference = model_arrays(out / "single")
    report["runs"]["single"] = {"metrics": base["test"], "privacy": base.get("privacy")}
    for name in args.meshes.split(","):
        mesh = [int(v) for v in name.split("x")]
        metrics = train_run(config(mesh, args.model, args.loss, args.method), out / name)
        arrays = model_arrays(out / name)
        report["runs"][name] = {
            "metrics": metrics["test"], "privacy": metrics.get("privacy"),
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
    smallest = min(padded_count(301, 4), padded_count(203, 4))
    report["hlo"] = {"table_collectives": table_collectives(hlo, smallest),
                     "all_gathers": hlo.count("all-gather("),
                     "all_reduces": hlo.count("all-reduce(")}
    sharding = jax.tree.leaves(setup.states.params["prediction"])
    report["state_specs"] = sorted({str(leaf.sharding.spec) for leaf in sharding})
    if not PRIVACY:
        report["ops"] = shard_map_checks()
        report["serve"] = serve_checks(out)
    if args.checkpoints:
        report["checkpoints"] = checkpoint_checks(out, args, reference)
    if args.halving:
        report["halving"] = halving_checks(args, [None, [4, 2]])
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
