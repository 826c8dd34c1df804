"""The run folder's writing: atomic files, refusal to overwrite, resume checks, versions.

Every run kind writes through these functions, so every folder has the same files written the
same way: `config.toml` (tomli-w), `metrics.json` (NaN as null), `log.jsonl`, `plots/`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import causalrec_jax.sim  # noqa: F401  registers the data formats "simulator" and "simlog"
from causalrec_jax.config import (
    Config,
    config_to_dict,
    dump_config,
)
from causalrec_jax.errors import RunError


def versions() -> dict[str, str]:
    names = ("causalrec_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def absolute_data_path(config: Config) -> Config:
    if not config.data.path:
        return config
    path = str(Path(config.data.path).expanduser().resolve())
    return dataclasses.replace(config, data=dataclasses.replace(config.data, path=path))


def plot_learning_curve(path: Path, history: list[dict[str, Any]], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [record["epoch"] for record in history]
    figure, left = plt.subplots(figsize=(6, 3.5))
    left.plot(epochs, [record["loss"] for record in history], color="tab:blue", label="loss")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss (mean over seeds)", color="tab:blue")
    if history and "valid" in history[0]:
        right = left.twinx()
        right.plot(epochs, [r["valid"].get(metric, math.nan) for r in history],
                   color="tab:orange", label=f"valid {metric}")
        right.set_ylabel(f"validation {metric}", color="tab:orange")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def json_safe(value: Any) -> Any:
    """NaN / Inf -> None (JSON null) and numpy scalars -> Python numbers, recursively."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_run_folder(
    out: str | Path, config: Config, metrics: dict[str, Any], log_lines: Any = (),
    write_more: Callable[[Path], None] | None = None,
) -> None:
    """Writes a run folder that has no checkpoints (ope, uplift and sequential runs).

    `config.toml`, `metrics.json` (with `versions` added), `log.jsonl` (one JSON line per
    entry of `log_lines`) and whatever `write_more(folder)` writes (a sequential run's `model/`
    and `data.npz`) go into a sibling `NAME.partial` folder that replaces `out` only when
    complete, so a failure leaves no half-written run.
    """
    out = Path(out)
    metrics.setdefault("versions", versions())
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    dump_config(config, staging / "config.toml")
    (staging / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2))
    with open(staging / "log.jsonl", "w") as handle:
        for line in log_lines:
            handle.write(json.dumps(json_safe(line)) + "\n")
    if write_more is not None:
        write_more(staging)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


# Keys a resumed run may change: they do not affect what is computed.
_RESUME_FREE_KEYS = {("run", "quiet"), ("run", "name"), ("run", "out_dir")}


def check_resumable(stored: Config, new: Config, out: Path) -> None:
    """Refuses to resume a run with a config that would compute something else."""
    old_values, new_values = config_to_dict(stored), config_to_dict(new)
    for section, values in new_values.items():
        for key in sorted(set(values) | set(old_values.get(section, {}))):
            if (section, key) in _RESUME_FREE_KEYS:
                continue
            before, after = old_values.get(section, {}).get(key), values.get(key)
            if before != after:
                raise RunError(
                    f"{out}: cannot resume with {section}.{key} = {after!r}: the run was "
                    f"started with {before!r} (resume with the same config and --set values)"
                )


def refuse_existing_run(out: str | Path, resumable: bool = True) -> None:
    """Raises RunError when `out` already holds something: a new run never overwrites one."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        hint = "pass --resume to continue it or" if resumable else "remove it or pass"
        raise RunError(f"{out} already holds a run; {hint} another --out")
