"""experiments/ope_sweep.py: the OPE sweep over log size and divergence runs and reports.

The sweep runs as a user runs it, a script in a subprocess, with JAX's persistent compilation
cache in a temporary folder (process-wide state, hence the subprocess) to keep the test short.
"""

import csv
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from causalrec_jax.config import load_config
from causalrec_jax.sim import policies

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "ope_sweep.py"
TINY = ["--set", "env.n_users=50", "--set", "env.n_items=30", "--set", "ope.truth_rounds=5000",
        "--set", 'ope.reward_model="oracle"']


def load_sweep_script():
    spec = importlib.util.spec_from_file_location("ope_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # make test-all (see Makefile)
def test_sweep_on_a_tiny_world(tmp_path):
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--sizes", "200,400", "--temperatures",
         "logging,1.0,0.5", "--seeds", "2", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "KL = " in done.stdout and "n =     400 seed 1" in done.stdout
    payload = json.loads((out / "ope_sweep.json").read_text())
    tmp_path = out
    for name in ("ope_sweep.csv", "ope_sweep.md", "ope_sweep.json", "ope_sweep.png"):
        assert (tmp_path / name).exists(), name
    estimators = payload["estimators"]
    with (tmp_path / "ope_sweep.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 2 * 2 * len(estimators)
    assert {row["estimator"] for row in rows} == set(estimators)
    assert {int(row["n_rounds"]) for row in rows} == {200, 400}
    for row in rows:
        error = float(row["relative_error"])
        assert math.isfinite(error) and error >= 0.0
        assert float(row["truth"]) > 0
    kl = {row["setting"]: float(row["kl"]) for row in rows}
    assert kl["target = logging"] == pytest.approx(0.0, abs=1e-6)
    assert kl["target T=1"] > 0 and kl["target T=0.5"] > kl["target T=1"]
    ess = {s["setting"]: s["ess_fraction"] for s in payload["settings"]}
    assert ess["target = logging"] == pytest.approx(1.0, abs=1e-5)
    assert ess["target T=0.5"] < ess["target T=1"] < 1.0
    # Target = logging: weights are 1, so ips is the log's mean click rate, ESS = n.
    same = [r for r in rows if r["setting"] == "target = logging" and r["estimator"] == "ips"]
    assert all(float(r["n_eff"]) == pytest.approx(float(r["n_rounds"]), rel=1e-4) for r in same)
    markdown = (tmp_path / "ope_sweep.md").read_text()
    assert "K = 1" in markdown and "5,000 on-policy rounds" in markdown
    assert markdown.count("## target") == 3 and "| dr |" in markdown
    assert payload["sizes"] == [200, 400] and len(payload["settings"]) == 3
    assert payload["settings"][0]["truth"] == pytest.approx(float(rows[0]["truth"]))


def test_slate_kl_is_over_the_first_slot():
    sweep = load_sweep_script()
    scores = np.random.default_rng(0).normal(size=(20, 15))
    kl = {}
    for k in (1, 3):
        logging = policies.softmax_policy(scores, k)
        target = policies.softmax_policy(scores + 1.0, k, temperature=0.5)
        kl[k] = sweep.divergence(target, logging, 20)
        assert sweep.divergence(logging, logging, 20)["kl"] == pytest.approx(0.0, abs=1e-6)
    # Slot 0 of a Plackett-Luce slate is the softmax itself: the same KL as K = 1.
    assert kl[3]["kl"] == pytest.approx(kl[1]["kl"], rel=1e-6) and kl[1]["kl"] > 0
    # An epsilon-greedy target: its first slot mixes the softmax with the top item.
    greedy = policies.epsilon_greedy_policy(scores, 3, 0.2)
    first = sweep.first_slot_distribution(greedy, 20)
    assert np.allclose(first.sum(axis=1), 1.0)
    assert np.allclose(first.max(axis=1), 0.8 + 0.2 / 15)
    config = load_config(SCRIPT.parents[1] / "configs" / "sim_ope.toml", ["env.slate_size=3"])
    assert "FIRST SLOT" in sweep.protocol_text(config, 2, 3)
    assert "FIRST SLOT" not in sweep.protocol_text(dataclasses.replace(config), 2, 1)


def test_replot_draws_every_estimator_visibly_with_legends_outside(tmp_path, monkeypatch):
    """`--replot JSON` redraws the saved sweep's figure without running anything: estimators
    with equal results are one line named after all of them, the others each a line with its
    own marker and style, shifted sideways, and the legends lie outside the panels."""
    import shutil

    import matplotlib.pyplot as plt

    sweep = load_sweep_script()
    saved = ROOT / "experiments" / "results" / "ope_sweep" / "ope_sweep.json"
    json_path = tmp_path / "ope_sweep.json"
    shutil.copyfile(saved, json_path)
    monkeypatch.setattr(sweep, "ope_seed", None)  # nothing may run
    monkeypatch.setattr(sweep, "ope_setup", None)
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    payload = sweep.main(["--replot", str(json_path)])
    assert (tmp_path / "ope_sweep.png").stat().st_size > 50_000
    # At K = 1 the slate estimators are ips itself: one line, not three on top of each other.
    groups = sweep.identical_groups(payload)
    assert ["ips", "pbm_ips", "iips"] in groups
    assert sorted(name for group in groups for name in group) == sorted(payload["estimators"])
    figure = figures[0]
    figure.canvas.draw()
    axes = figure.axes
    assert len(axes) == 2 * len(payload["settings"])
    labels = [text.get_text() for axis in axes for legend in [axis.get_legend()] if legend
              for text in legend.get_texts()]
    assert "ips = pbm_ips = iips (equal here, within 1e-05)" in labels
    assert len([label for label in labels if label != "1% error"]) == len(groups)
    for axis in axes:
        lines = [line for line in axis.lines if line.get_marker() not in (None, "None", "")]
        styles = {(line.get_marker(), line.get_linestyle()) for line in lines}
        assert len(styles) == len(lines)  # no two estimators drawn alike in a panel
        first_x = [line.get_xdata()[0] for line in lines]
        assert len(set(first_x)) == len(lines)  # nor at the same x
        assert axis.get_xscale() == axis.get_yscale() == "log"
        legend = axis.get_legend()
        if legend is not None:
            assert legend.get_window_extent().x0 >= axis.get_window_extent().x1
    title = figure.get_suptitle()
    assert "1,000 users × 1,000 items" in title and "5 seeds" in title and "K = 1" in title
    assert "KL(target‖logging)" in axes[0].get_title()
    assert axes[-1].get_xlabel() == "logged rounds n (log scale; k = 1,000)"
    assert [t.get_text() for t in axes[-1].get_xticklabels()] == ["1k", "3k", "10k", "30k",
                                                                   "100k"]
