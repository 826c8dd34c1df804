"""The README's commands run as written: every `causalrec` line of its bash blocks parses, and
the fast ones run, in README order, in a fresh folder laid out like a clone (configs/ beside
../shared/data), as a new user would type them after `make demo`."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from causalrec_jax.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
# Fast enough for the suite (seconds each); the rest (ml-100k, SASRec, tables) are parsed only.
FAST = (
    "causalrec train --config configs/quickstart.toml --out runs/quickstart",
    "causalrec data --format coat --path ../shared/data/coat",
    "causalrec data --format recbole --path ../shared/data/ml-100k",
    "causalrec data --format simulator --set sim.n_users=2000",
    "causalrec simulate --config configs/sim_log.toml --out runs/sim_log",
    'causalrec train --config configs/sim_log_mf.toml --set data.path="runs/sim_log" '
    "--out runs/sim_log_mf",
)


def readme_commands() -> list[str]:
    """The command lines of the README's bash blocks, continuations joined, comments cut."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def test_every_causalrec_line_parses():
    # an environment prefix (`XLA_FLAGS=... causalrec train ...`) is the shell's, not ours
    # (and a trailing `&`, a process started in the background)
    lines = [re.sub(r"\s*&$", "", re.sub(r"^(\w+=\S+\s+)+", "", line))
             for line in readme_commands()]
    lines = [line for line in lines if line.startswith("causalrec ")]
    assert len(lines) > 20
    assert any("parallel.mesh" in line for line in lines)
    parser = build_parser()
    for line in lines:
        if "..." in line:  # an elided example (`causalrec tune ... --resume`)
            continue
        parser.parse_args(shlex.split(line)[1:])  # exits (fails the test) on a bad flag


@pytest.mark.slow  # make test-all (see Makefile)
def test_the_fast_commands_run_as_written(tmp_path):
    commands = readme_commands()
    missing = [fast for fast in FAST if fast not in commands]
    assert not missing, f"README no longer has {missing}"
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "configs").symlink_to(ROOT / "configs")
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    # These commands run the README's real sizes (the simulator's 1,000-user log, 60 epochs):
    # their time goes into running programs, not compiling them, so they run with XLA's
    # default optimisation rather than the suite's (conftest.py): 47 s -> 41 s measured alone.
    flags = os.environ.get("XLA_FLAGS", "")
    for suites in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
        flags = flags.replace(suites, "")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": flags.strip()}
    for line in commands:
        if line not in FAST:
            continue
        if "../shared/data" in line and not SHARED.is_dir():
            continue  # the real datasets are optional
        argv = [sys.executable, "-m", "causalrec_jax", *shlex.split(line)[1:]]
        done = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
    assert (clone / "runs" / "quickstart" / "metrics.json").exists()
    assert (clone / "runs" / "sim_log_mf" / "metrics.json").exists()


@pytest.mark.parametrize("line", [
    "causalrec train --resume --out runs/ml100k_mf",
    "causalrec recommend --run runs/ml100k_sasrec --user 196 --k 10",
])
def test_the_tour_continues_a_run_by_its_folder_alone(line):
    # `--resume` and serving need only the run folder (no --config, no --set again)
    assert line in readme_commands()
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert getattr(args, "config", None) is None
