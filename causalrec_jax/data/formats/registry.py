"""The registry of dataset formats: a reader registered under each `data.format` name.

The data layer registers the file formats it reads (`causalrec_jax.data.formats`); packages
above it register their own: `causalrec_jax.sim` registers `simulator`, `simlog` and
`planted` when it is imported, so that `data/` never imports the simulator. A reader takes a
`Source` and returns `(dataset, ground_truth)`, the ground truth being None for every format
but the simulator's (`simulator`, `planted`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from causalrec_jax.config import PlantedConfig, SimConfig
from causalrec_jax.data.dataset import Dataset
from causalrec_jax.errors import ConfigError


@dataclass(frozen=True)
class Source:
    """What a format reader is asked to read (the `[data]`, `[sim]` and `[planted]` values it
    may use).

    Attributes:
        path: the file or folder (`data.path`); None or "" when there is none.
        columns: role (`user`, `item`, `rating`, `timestamp`) to column name, or None.
        sep: field separator of delimited tables (`data.sep`).
        frame: the pandas DataFrame of the `dataframe` format.
        sim: the `[sim]` section of the `simulator` format.
        planted: the `[planted]` section of the `planted` format.
    """

    path: str | os.PathLike | None = None
    columns: Mapping[str, str] | None = None
    sep: str = ","
    frame: Any = None
    sim: SimConfig | None = None
    planted: PlantedConfig | None = None


ReadFn = Callable[[Source], tuple[Dataset, Any]]


@dataclass(frozen=True)
class DataFormat:
    """A registered format.

    Attributes:
        name: the `data.format` value.
        read_fn: `read_fn(source) -> (dataset, ground_truth or None)`.
        needs_path: whether `source.path` must name an existing file or folder.
    """

    name: str
    read_fn: ReadFn
    needs_path: bool = True


# Formats a package above data/ provides, and the module that registers them on import.
PROVIDERS = {"simulator": "causalrec_jax.sim", "simlog": "causalrec_jax.sim",
             "planted": "causalrec_jax.sim"}

_REGISTRY: dict[str, DataFormat] = {}


def register_format(
    name: str, read_fn: ReadFn, *, needs_path: bool = True, replace: bool = False
) -> DataFormat:
    """Registers `read_fn` as the reader of `data.format = name`.

    Args:
        name: the format name.
        read_fn: `read_fn(source) -> (dataset, ground_truth or None)`.
        needs_path: whether the format reads `source.path`.
        replace: allow replacing a reader already registered under `name` (registering the
            same function again is always allowed).

    Returns:
        The registered `DataFormat`.
    """
    entry = DataFormat(name, read_fn, needs_path)
    existing = _REGISTRY.get(name)
    if existing is not None and existing.read_fn is not read_fn and not replace:
        raise ConfigError(
            f"data format {name!r} is already registered (by {_origin(existing.read_fn)}); "
            "pass replace=True to replace it"
        )
    _REGISTRY[name] = entry
    return entry


def format_names() -> tuple[str, ...]:
    """The registered format names, sorted."""
    return tuple(sorted(_REGISTRY))


def get_format(name: str) -> DataFormat:
    """The format registered under `name`.

    Raises:
        ConfigError: naming `data.format` and the known names (with a "did you mean"), or,
            for `simulator` / `simlog` / `planted` before `causalrec_jax.sim` registered
            them, the module to import.
    """
    entry = _REGISTRY.get(name)
    if entry is not None:
        return entry
    if name in PROVIDERS:
        raise ConfigError(
            f"key data.format: {name!r} is registered by {PROVIDERS[name]}, which has not been "
            f"imported; import {PROVIDERS[name]} first (the causalrec command and the run "
            "modules do)"
        )
    known = format_names()
    close = difflib.get_close_matches(str(name), known + tuple(PROVIDERS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"key data.format: unknown format {name!r}; expected one of "
        f"{', '.join(sorted(set(known) | set(PROVIDERS)))}{hint}"
    )


def _origin(function: Callable) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"
