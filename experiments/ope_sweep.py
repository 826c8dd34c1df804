"""Off-policy estimators against log size and policy divergence, on the dynamic simulator.

    python experiments/ope_sweep.py [--config configs/sim_ope.toml] [--seeds N]
        [--sizes 1000,3000,10000,30000,100000] [--temperatures 1.0,0.7,0.4]
        [--set section.key=value ...] [--out experiments/results/ope_sweep]
    python experiments/ope_sweep.py --replot experiments/results/ope_sweep/ope_sweep.json

Each divergence setting is the config (with the `--set` overrides) plus
`target.temperature=<t>`; the token `logging` instead makes the target a copy of the logging
policy `[policy]` (KL = 0: a sanity row). Per setting: one `ope_setup` (world, policies and the
target's on-policy truth, computed once), then for every log size and seed one `ope_seed`
(`ope.n_rounds` = the size), for the seeds `run.seed + i`, `i < --seeds` (default: the
config's `train.seeds`, the seeds of every run kind). The divergence of a setting is the mean
over users of KL(target || logging) between the policies' first-slot distributions (for K = 1
slates, the whole action distribution: the softmax over items) and the exact
effective-sample-size fraction of importance weighting, `1 / E_logging[w^2]`, over the same
distributions; the measured Kish ESS of the ips weights is reported per log size. Writes to
`--out`:

- `ope_sweep.csv`: one line per (setting, n_rounds, estimator, seed);
- `ope_sweep.md`: per setting, relative error |estimate - truth| / truth, mean ± std over seeds,
  estimator × log size, with the truth and the protocol;
- `ope_sweep.json`: the same with every per-seed number, divergences and timings;
- `ope_sweep.png`: relative error vs log size (log-log), one column per setting and one row
  per estimator family, mean over seeds with ± 1 standard error bars (`plot`, drawn by
  `causalrec_jax.report.plots.ope_sweep_figure`).

`--replot JSON` runs nothing: it redraws the figure of a saved `ope_sweep.json` as
`<JSON stem>.png` beside it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from causalrec_jax.config import load_config

# identical_groups: part of this script's interface (which estimators the figure merges)
from causalrec_jax.report.plots import identical_groups, ope_sweep_figure  # noqa: F401
from causalrec_jax.report.tables import markdown_table
from causalrec_jax.runs.script import run_script
from causalrec_jax.tasks.ope import ope_seed, ope_setup

ROOT = Path(__file__).resolve().parents[1]
LOGGING = "logging"
COLUMNS = ("setting", "temperature", "kl", "ess_fraction", "n_rounds", "estimator", "seed",
           "estimate", "stderr", "n_eff", "truth", "relative_error")


def first_slot_distribution(policy, n_users: int) -> np.ndarray:
    """`[n_users, n_items]` exact P(item at slot 0): `eps softmax + (1 - eps) top-K part`."""
    users = jnp.arange(n_users)
    softmax = policy.probabilities[users if policy.probabilities.shape[0] > 1 else 0 * users]
    top = policy.top_items[users if policy.top_items.shape[0] > 1 else 0 * users]
    n_items, k = softmax.shape[1], top.shape[1]
    top_part = np.zeros((n_users, n_items), np.float64)
    if policy.shuffle:
        np.put_along_axis(top_part, np.asarray(top), 1.0 / k, axis=1)
    else:
        np.put_along_axis(top_part, np.asarray(top[:, :1]), 1.0, axis=1)
    epsilon = float(policy.epsilon)
    return epsilon * np.asarray(softmax, np.float64) + (1.0 - epsilon) * top_part


def divergence(target, logging, n_users: int) -> dict[str, float]:
    """Mean over users of KL(target || logging) (nats, float round-off clipped at 0) and the
    exact ESS fraction 1 / E_logging[w^2] of the first-slot distributions."""
    p, q = first_slot_distribution(target, n_users), first_slot_distribution(logging, n_users)
    support = p > 0
    ratio = np.where(support, p / np.where(q > 0, q, 1e-300), 0.0)
    kl = np.sum(np.where(support, p * np.log(np.where(support, ratio, 1.0)), 0.0), axis=1)
    second_moment = np.sum(np.where(support, p * ratio, 0.0), axis=1)  # E_logging[w^2]
    return {"kl": max(float(kl.mean()), 0.0), "ess_fraction": float(1.0 / second_moment.mean())}


def setting_config(args, token: str):
    """The config of one divergence setting (a target temperature, or `logging`)."""
    if token == LOGGING:
        config = load_config(args.config, args.overrides)
        return dataclasses.replace(config, target=config.policy), None
    temperature = float(token)
    return load_config(args.config, [*args.overrides, f"target.temperature={temperature}"]), \
        temperature


def _label(token: str) -> str:
    return "target = logging" if token == LOGGING else f"target T={float(token):g}"


def _stats(values) -> dict[str, float]:
    array = np.asarray(values, np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1
            else 0.0, "min": float(array.min()), "max": float(array.max())}


def summarize(rows: list[dict], settings: list[dict], sizes: list[int],
              estimators: list[str]) -> dict[str, Any]:
    """`[setting][estimator][size]` relative-error stats; `[setting]["n_eff_ips"][size]`."""
    out: dict[str, Any] = {}
    for setting in settings:
        label = setting["setting"]
        mine = [r for r in rows if r["setting"] == label]
        block = {name: {str(n): _stats([r["relative_error"] for r in mine
                                         if r["estimator"] == name and r["n_rounds"] == n])
                        for n in sizes} for name in estimators}
        block["n_eff_ips"] = {str(n): _stats([r["n_eff"] for r in mine
                                               if r["estimator"] == "ips" and r["n_rounds"] == n])
                              for n in sizes} if "ips" in estimators else {}
        out[label] = block
    return out


def protocol_text(config, seeds: int, slate_size: int) -> str:
    kl_scope = ("K = 1: one item per round, so the first-slot distribution is the whole "
                "action distribution (the softmax over items)" if slate_size == 1 else
                f"K = {slate_size}: the KL and the exact ESS fraction are over the FIRST SLOT "
                "only (the slate-level divergence is larger); estimators use slate-level "
                "probabilities")
    return (
        f"Protocol: `{config.env.n_users}` users, `{config.env.n_items}` items, slates of "
        f"K = {slate_size}; a round is one arriving user shown one slate by the logging policy "
        f"(`[policy]`: {config.policy.kind} over {config.policy.scores} scores, noise "
        f"{config.policy.score_noise}, T = {config.policy.temperature}); reward = clicks of the "
        f"round{' (one click or none)' if slate_size == 1 else ''}. Truth = mean expected reward "
        f"of {config.ope.truth_rounds:,} on-policy rounds of the target, computed once per "
        f"setting. Reward model of dm / dr family: `{config.ope.reward_model}`, cross-fitted over "
        f"{config.ope.reward_model_folds} folds. Relative error = |estimate - truth| / truth, "
        f"mean ± std over {seeds} seeds (each seed logs a fresh log). KL(target || logging) is "
        f"the mean over users in nats; {kl_scope}. ESS/n (exact) = 1 / E_logging[w^2] over "
        "those distributions; n_eff (ips) = measured Kish ESS of the ips weights, mean over "
        "seeds."
    )


def markdown(summary, settings, sizes, estimators, protocol: str) -> str:
    lines = ["# Off-policy estimators vs log size and policy divergence", "", protocol]
    for setting in settings:
        label = setting["setting"]
        lines += ["", f"## {label}: KL(target || logging) = {setting['kl']:.4f} nats, "
                  f"ESS/n (exact) = {setting['ess_fraction']:.3f}", "",
                  f"Truth {setting['truth']:.5f} ± {setting['truth_stderr']:.5f} (stderr)"
                  + (f", exact {setting['exact']:.5f}" if setting["exact"] is not None else "")
                  + ".", ""]
        block = summary[label]
        rows = [[name] + [f"{block[name][str(n)]['mean']:.4f} ± "
                          f"{block[name][str(n)]['std']:.4f}" for n in sizes]
                for name in estimators]
        if block.get("n_eff_ips"):
            rows.append(["n_eff (ips)"] + [f"{block['n_eff_ips'][str(n)]['mean']:,.0f}"
                                           for n in sizes])
        lines.append(markdown_table(["estimator", *(f"n = {n:,}" for n in sizes)], rows))
    return "\n".join(lines) + "\n"


def plot(path: Path, payload: dict[str, Any]) -> None:
    """Relative error vs log size, one column per divergence setting and one row per
    estimator family, mean over seeds ± one standard error (`report.plots.ope_sweep_figure`,
    which also groups estimators with identical results: `identical_groups`)."""
    ope_sweep_figure(path, payload)


def replot(json_path: Path) -> Path:
    """Redraws the figure of a saved `ope_sweep.json` (no sweep): `<stem>.png` beside it."""
    path = json_path.with_suffix(".png")
    plot(path, json.loads(json_path.read_text()))
    return path


def main(argv=None) -> dict[str, Any]:
    """Runs the sweep, writes the four files and returns the json payload."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "sim_ope.toml"))
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per log size (default: the config's train.seeds)")
    parser.add_argument("--sizes", default="1000,3000,10000,30000,100000")
    parser.add_argument("--temperatures", default="1.0,0.7,0.4",
                        help="target temperatures; the token 'logging' means target = logging")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "ope_sweep"))
    parser.add_argument("--replot", metavar="JSON",
                        help="run nothing: redraw the figure of a saved ope_sweep.json into "
                        "<JSON stem>.png beside it")
    args = parser.parse_args(argv)
    if args.replot is not None:
        if not Path(args.replot).is_file():
            parser.error(f"--replot {args.replot}: no such file")
        print(f"wrote {replot(Path(args.replot))}")
        return json.loads(Path(args.replot).read_text())
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    tokens = [t.strip() for t in args.temperatures.split(",") if t.strip()]
    if args.seeds is None:
        args.seeds = load_config(args.config, args.overrides).train.seeds
    if args.seeds < 1 or not sizes or min(sizes) < 1 or not tokens:
        parser.error("--seeds, --sizes and --temperatures need positive values")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    rows, settings = [], []
    for token in tokens:
        config, temperature = setting_config(args, token)
        label = _label(token)
        setup_started = time.perf_counter()
        setup = ope_setup(config)
        div = divergence(setup.target, setup.logging, setup.sizes.n_users)
        seconds = time.perf_counter() - setup_started
        settings.append({"setting": label, "temperature": temperature, **div,
                         "truth": setup.truth, "truth_stderr": setup.truth_stderr,
                         "exact": setup.exact, "setup_seconds": seconds})
        print(f"[{label}] KL = {div['kl']:.4f}, ESS/n = {div['ess_fraction']:.3f}, truth = "
              f"{setup.truth:.5f} ({seconds:.1f} s)", flush=True)
        for n_rounds in sizes:
            sized = dataclasses.replace(config, ope=dataclasses.replace(config.ope,
                                                                        n_rounds=n_rounds))
            for seed in (config.run.seed + index for index in range(args.seeds)):
                seed_started = time.perf_counter()
                result = ope_seed(sized, seed, setup.env_params, setup.logging, setup.target)
                for name, value in result["estimates"].items():
                    rows.append({"setting": label, "temperature": temperature, **div,
                                 "n_rounds": n_rounds, "estimator": name, "seed": seed,
                                 **value, "truth": setup.truth,
                                 "relative_error": abs(value["estimate"] - setup.truth)
                                 / abs(setup.truth)})
                dr = result["estimates"].get("dr")
                print(f"  n = {n_rounds:>7,} seed {seed}: "
                      + (f"dr rel. err. {abs(dr['estimate'] - setup.truth) / setup.truth:.4f}, "
                         if dr else "")
                      + f"{time.perf_counter() - seed_started:.1f} s", flush=True)

    estimators = list(config.ope.estimators)
    summary = summarize(rows, settings, sizes, estimators)
    protocol = protocol_text(config, args.seeds, setup.sizes.slate_size)
    with (out / "ope_sweep.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    text = markdown(summary, settings, sizes, estimators, protocol)
    (out / "ope_sweep.md").write_text(text)
    payload = {"config": str(args.config), "overrides": args.overrides, "seeds": args.seeds,
               "sizes": sizes, "estimators": estimators, "slate_size": setup.sizes.slate_size,
               "world": {"n_users": config.env.n_users, "n_items": config.env.n_items},
               "protocol": protocol, "settings": settings, "summary": summary, "rows": rows,
               "total_seconds": time.perf_counter() - started}
    (out / "ope_sweep.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(out / "ope_sweep.png", payload)
    print(f"\n{text}\nwrote {out}/ope_sweep.{{csv,md,json,png}} in "
          f"{payload['total_seconds']:.0f} s")
    return payload


if __name__ == "__main__":
    raise SystemExit(run_script(main))
