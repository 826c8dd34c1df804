"""From a `[data]` config to a cleaned `Dataset` and its `Split`: the one entry point of data/.

`load_dataset` reads the configured format through the format registry
(`causalrec_jax.data.formats`), then cleans it (invalid rows, duplicates, k-core,
binarisation) as `clean.clean` documents. `load_split` adds the configured split. The
simulator's formats (`simulator`, `simlog`, `planted`) are registered by `causalrec_jax.sim`
when it is imported (the run modules and the command line import it); data/ never imports it.
The simulator's ground truth travels beside the dataset, never inside it, so no model can read it
by accident.
"""

from __future__ import annotations

from typing import Any

from causalrec_jax.config import DataConfig, PlantedConfig, SimConfig
from causalrec_jax.data.clean import clean
from causalrec_jax.data.dataset import Dataset, Split
from causalrec_jax.data.formats import Source, read_source
from causalrec_jax.data.split import make_split


def read_raw(
    data: DataConfig, sim: SimConfig | None = None, *, frame=None,
    planted: PlantedConfig | None = None,
) -> tuple[Dataset, Any]:
    """Reads the configured source without cleaning; returns `(dataset, ground_truth)`.

    `ground_truth` is what the format's reader returns beside the dataset: the simulator's
    `GroundTruth` (dense matrices) or `SparseGroundTruth` (large worlds) for
    `format = "simulator"`, the `PlantedTruth` for `format = "planted"` (from `planted`, the
    `[planted]` section), else None. `frame` is the pandas DataFrame of
    `format = "dataframe"`.
    """
    source = Source(
        path=data.path, columns=dict(data.columns) or None, sep=data.sep, frame=frame, sim=sim,
        planted=planted,
    )
    return read_source(data.format, source)


def load_dataset(
    data: DataConfig, sim: SimConfig | None = None, *, frame=None,
    planted: PlantedConfig | None = None,
) -> tuple[Dataset, Any]:
    """Reads and cleans the configured dataset; returns `(dataset, ground_truth or None)`."""
    dataset, truth = read_raw(data, sim, frame=frame, planted=planted)
    return clean(dataset, data), truth


def load_split(
    data: DataConfig, sim: SimConfig | None = None, *, seed: int, frame=None,
    planted: PlantedConfig | None = None,
) -> tuple[Split, Any]:
    """The cleaned dataset of `data`, split as `data` configures; returns
    `(split, ground_truth or None)`.

    Args:
        data: the `[data]` section (format, path, cleaning, split).
        sim: the `[sim]` section, read only by `format = "simulator"`.
        seed: the split's seed (a run passes `run.seed`).
        frame: the pandas DataFrame of `format = "dataframe"`.
        planted: the `[planted]` section, read only by `format = "planted"`.
    """
    dataset, truth = load_dataset(data, sim, frame=frame, planted=planted)
    return make_split(dataset, data, seed=seed), truth
