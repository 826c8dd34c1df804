"""The simulator registers its data formats, and the data layer reads them by name."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from causalrec_jax.config import DataConfig, SimConfig
from causalrec_jax.data.formats import get_format
from causalrec_jax.data.loader import load_dataset
from causalrec_jax.sim import formats as sim_formats
from causalrec_jax.sim.world import simulate_dataset


def test_importing_the_simulator_registers_its_formats():
    assert get_format("simulator").read_fn is sim_formats.read_simulator
    assert not get_format("simulator").needs_path
    assert get_format("simlog").read_fn is sim_formats.read_simlog_folder
    sim_formats.register_formats()  # registering again changes nothing
    assert get_format("simlog").read_fn is sim_formats.read_simlog_folder


def test_the_loader_reads_the_simulated_world_through_the_registry():
    sim = SimConfig(n_users=40, n_items=30, seed=3)
    dataset, truth = load_dataset(DataConfig(format="simulator", split="random"), sim)
    direct, direct_truth = simulate_dataset(sim)
    assert dataset.meta["format"] == direct.meta["format"]
    np.testing.assert_array_equal(dataset.user_ids, direct.user_ids)
    np.testing.assert_array_equal(np.asarray(truth.expected_rating),
                                  np.asarray(direct_truth.expected_rating))
    assert dataset.n_interactions <= direct.n_interactions  # cleaned, never more


def test_a_fresh_command_line_registers_the_simulator_before_reading_it():
    # A new process: nothing imported the simulator before `causalrec data` reads it.
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "causalrec_jax", "data", "--format", "simulator",
               "--set", "sim.n_users=30", "--set", "sim.n_items=20", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=root)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n_users"] == 30
