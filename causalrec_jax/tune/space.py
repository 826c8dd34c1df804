"""Search spaces for `causalrec tune`: the space file, its checks, samplers and trial grouping.

A space file is TOML with the sections of a config; each key gives the candidates of one
hyperparameter in one of three forms:

    [train]
    learning_rate = [1e-3, 3e-3, 1e-2]                              # a grid: these values
    weight_decay = { low = 1e-6, high = 1e-2, scale = "log" }       # a range (dynamic keys only)
    loss = { choice = ["bpr", "softmax"] }                          # a choice among these values

    [model]
    embedding_dim = [32, 64]

A trial is a flat dict `{"train.learning_rate": 0.003, "model.embedding_dim": 64, ...}` with
one value per key of the space, typed as the config field (floats for float keys, lists for
list keys). Keys in `DYNAMIC_KEYS` are traced numbers: trials that differ only in them train
together as one vmapped population. Every other key is static (it changes shapes or the
compiled program), so trials are grouped by their static values (`group_trials`) and each
group compiles once; static keys must therefore be enumerable (a list or a choice, no range).

Samplers, all deterministic given a seed: `grid_trials` (the cartesian product),
`random_trials` (independent uniform draws, no duplicates) and `OptunaSampler` (TPE,
Bergstra et al., "Algorithms for Hyper-Parameter Optimization", NeurIPS 2011, via optuna's
ask-and-tell interface). `trial_key` names a trial by its values so a resumed search skips
finished trials; `apply_trial` makes the trial's config.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from causalrec_jax.causal.training import CAUSAL_HPARAMS
from causalrec_jax.config import (
    _SECTION_TYPES,
    SECTIONS,
    Config,
    _coerce,
    _hint,
    config_from_dict,
    config_to_dict,
)
from causalrec_jax.errors import ConfigError

# Keys whose values are traced (they vary inside one vmapped population); all others are static:
# the optimiser's learning rate and weight decay, the model's dropout rate, and every causal
# knob of the objectives and their inference (`causal.training.CAUSAL_HPARAMS`: clip, imputed
# value, lambda, gamma, ...).
DYNAMIC_KEYS: frozenset[str] = frozenset(
    {"train.learning_rate", "train.weight_decay", "model.dropout"}
    | {f"causal.{name}" for name in CAUSAL_HPARAMS}
)

# Sections and keys a space may not vary, with the reason given in the error.
UNTUNABLE_SECTIONS: dict[str, str] = {
    "data": "data settings change the dataset itself, so trials would not be comparable; "
    "set data.* in the config and tune on one dataset",
    "sim": "sim settings change the simulated world, i.e. the dataset, so trials would not be "
    "comparable; set sim.* in the config",
    "planted": "planted settings change the planted world, i.e. the dataset, so trials would "
    "not be comparable; set planted.* in the config",
    "eval": "eval settings define how trials are measured and compared; set eval.* in the config",
    "run": "run settings (seed, name, output folder) are not hyperparameters",
    "privacy": "privacy settings set the guarantee (and every trial spends it); set "
    "privacy.* in the config",
}
UNTUNABLE_KEYS: dict[str, str] = {
    "train.seeds": "the number of seeds is set by `causalrec tune --seeds`, not searched",
}

SAMPLERS: tuple[str, ...] = ("grid", "random", "optuna")
SCALES: tuple[str, ...] = ("linear", "log")
_RANGE_FIELDS = ("low", "high", "scale", "integer")
_TABLE_FIELDS = ("choice",) + _RANGE_FIELDS
# Redraws of a duplicate random trial before giving up (only spaces with few points reach it).
_MAX_REDRAWS = 1000
_OPTUNA_MISSING = (
    "--sampler optuna needs the optional dependency: pip install 'causalrec_jax[tune]'"
)

_FIELD_TYPES: dict[str, dict[str, Any]] = {
    section: typing.get_type_hints(_SECTION_TYPES[section]) for section in SECTIONS
}


@dataclass(frozen=True)
class Param:
    """The candidates of one hyperparameter.

    Attributes:
        key: the dotted config key, e.g. "train.learning_rate".
        kind: "grid" (a list of values), "range" (low to high) or "choice" (a choice table).
        values: the candidates of a grid or choice, typed as the config field (list-valued
            fields are held as tuples so that a `Param` is immutable).
        low, high: the bounds of a range, both included for integer ranges.
        scale: "linear" (uniform) or "log" (log-uniform) for a range.
        integer: whether a range draws integers (always so for integer keys).
    """

    key: str
    kind: Literal["grid", "range", "choice"]
    values: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    scale: Literal["linear", "log"] = "linear"
    integer: bool = False

    @property
    def dynamic(self) -> bool:
        """Whether the key is traced, i.e. can vary inside one vmapped population."""
        return self.key in DYNAMIC_KEYS

    @property
    def size(self) -> int | None:
        """The number of distinct values; None for a range of floats."""
        if self.kind != "range":
            return len(self.values)
        if self.integer:
            return int(self.high) - int(self.low) + 1
        return None


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a search, in file order, and the file they came from."""

    params: tuple[Param, ...]
    source: str = "space"

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(param.key for param in self.params)

    @property
    def dynamic_keys(self) -> tuple[str, ...]:
        return tuple(param.key for param in self.params if param.dynamic)

    @property
    def static_keys(self) -> tuple[str, ...]:
        return tuple(param.key for param in self.params if not param.dynamic)

    @property
    def size(self) -> int | None:
        """The number of distinct trials; None when a range of floats makes it unbounded."""
        sizes = [param.size for param in self.params]
        return None if None in sizes else math.prod(sizes)


# ---------------------------------------------------------------------------------------------
# Parsing and checks


def load_space(path: str | Path) -> SearchSpace:
    """Reads and checks the space file at `path` (see the module docstring for the format)."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"search space file {source} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    return space_from_dict(raw, source)


def space_from_dict(raw: Mapping[str, Any], source: str = "space") -> SearchSpace:
    """Builds a checked `SearchSpace` from nested dicts (sections -> keys -> specs).

    Raises:
        ConfigError: naming `source` and the key, for an unknown or untunable section or key,
            a spec that is not a list, range or choice, an empty list, a candidate the config
            field rejects, a bad range, a range on a static key, or a space with no keys.
    """
    params = []
    for section, entries in raw.items():
        if section not in SECTIONS:
            owner = _section_of(section)
            hint = f"; did you mean [{owner}] {section}?" if owner else _hint(section, SECTIONS)
            raise ConfigError(
                f"{source}: unknown section [{section}]{hint} (valid sections: "
                f"{', '.join(SECTIONS)})"
            )
        if not isinstance(entries, dict):
            raise ConfigError(f"{source}: [{section}] must be a table of keys, got {entries!r}")
        if section in UNTUNABLE_SECTIONS and entries:
            key = f"{section}.{next(iter(entries))}"
            raise ConfigError(
                f"{source}: key {key}: [{section}] is not tunable: {UNTUNABLE_SECTIONS[section]}"
            )
        fields = _FIELD_TYPES[section]
        for name, spec in entries.items():
            key = f"{section}.{name}"
            if name not in fields:
                raise ConfigError(
                    f"{source}: unknown key '{key}'{_hint(name, fields)} "
                    f"(valid keys of [{section}]: {', '.join(sorted(fields))})"
                )
            if key in UNTUNABLE_KEYS:
                raise ConfigError(f"{source}: key {key} is not tunable: {UNTUNABLE_KEYS[key]}")
            params.append(_parse_param(key, spec, source))
    if not params:
        raise ConfigError(
            f"{source}: empty search space: give at least one key, e.g. "
            "[train] learning_rate = [1e-3, 1e-2]"
        )
    return SearchSpace(tuple(params), source)


def _section_of(name: str) -> str | None:
    """The section holding a field called `name` (for a key written outside its section)."""
    for section, fields in _FIELD_TYPES.items():
        if name in fields:
            return section
    return None


def _parse_param(key: str, spec: Any, source: str) -> Param:
    where = f"{source}: key {key}"
    if isinstance(spec, list):
        return Param(key, "grid", values=_check_candidates(key, spec, source))
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}: got {spec!r}, expected a list of values, a range table "
            "{ low = ..., high = ..., scale = \"log\" } or a choice table { choice = [...] } "
            "(a single fixed value belongs in the config or --set)"
        )
    unknown = [field for field in spec if field not in _TABLE_FIELDS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {unknown[0]!r}{_hint(unknown[0], _TABLE_FIELDS)} in "
            "the table (a range has low, high, scale, integer; a choice has choice)"
        )
    if "choice" in spec:
        if len(spec) > 1:
            raise ConfigError(
                f"{where}: a choice table holds only `choice`, got also "
                f"{', '.join(field for field in spec if field != 'choice')}"
            )
        choices = spec["choice"]
        if not isinstance(choices, list):
            raise ConfigError(f"{where}: choice must be a list of values, got {choices!r}")
        return Param(key, "choice", values=_check_candidates(key, choices, source))
    if not spec:
        raise ConfigError(f"{where}: empty table; expected a range {{ low, high }} or a choice")
    return _parse_range(key, spec, source)


def _check_candidates(key: str, values: list[Any], source: str) -> tuple[Any, ...]:
    """Checks each candidate against the config field; returns them typed (lists as tuples)."""
    if not values:
        raise ConfigError(f"{source}: key {key}: empty list of candidates; give at least one")
    checked = []
    seen = set()
    for index, value in enumerate(values):
        value = _check_value(key, value, f"{source}: key {key}, candidate {index + 1}")
        canonical = _canonical_json(value)
        if canonical in seen:
            raise ConfigError(f"{source}: key {key}: candidate {value!r} is given twice")
        seen.add(canonical)
        checked.append(_freeze(value))
    return tuple(checked)


def _check_value(key: str, value: Any, where: str) -> Any:
    """`value` typed as config field `key`, also passing the section's own checks."""
    section, name = key.split(".", 1)
    value = _coerce(value, _FIELD_TYPES[section][name], where)
    try:
        _SECTION_TYPES[section](**{name: value})
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return value


def _numeric_type(tp: Any) -> type | None:
    """int or float for a numeric field (None allowed in a union), else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(tp) if option is not type(None)]
        if len(options) != 1:
            return None
        tp = options[0]
    return tp if tp in (int, float) else None


def _parse_range(key: str, spec: dict[str, Any], source: str) -> Param:
    where = f"{source}: key {key}"
    if key not in DYNAMIC_KEYS:
        raise ConfigError(
            f"{where}: a range needs a dynamic key ({', '.join(sorted(DYNAMIC_KEYS))}); give "
            "a list or a choice for static keys, whose values must be few so that trials "
            "group into few compiled programs"
        )
    missing = [field for field in ("low", "high") if field not in spec]
    if missing:
        raise ConfigError(f"{where}: a range needs low and high, missing {', '.join(missing)}")
    section, name = key.split(".", 1)
    numeric = _numeric_type(_FIELD_TYPES[section][name])
    if numeric is None:
        raise ConfigError(f"{where}: a range needs a numeric key; give a list or a choice")
    scale = spec.get("scale", "linear")
    if scale not in SCALES:
        raise ConfigError(
            f"{where}: scale got {scale!r}, expected \"linear\" or \"log\""
            f"{_hint(str(scale), SCALES)}"
        )
    integer = spec.get("integer", numeric is int)
    if not isinstance(integer, bool):
        raise ConfigError(f"{where}: integer got {integer!r}, expected true or false")
    if integer != (numeric is int):
        raise ConfigError(
            f"{where}: integer = {str(integer).lower()} does not fit a key of type "
            f"{numeric.__name__}; integer = true is for integer keys only (and is their default)"
        )
    bounds = {}
    for field in ("low", "high"):
        value = spec[field]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {field} got {value!r}, expected a number")
        bounds[field] = _check_value(key, value, f"{where}, {field}")
    low, high = bounds["low"], bounds["high"]
    if not low < high:
        raise ConfigError(f"{where}: a range needs low < high, got low = {low}, high = {high}")
    if scale == "log" and low <= 0:
        raise ConfigError(f"{where}: a log-scale range needs low > 0, got low = {low}")
    return Param(key, "range", low=low, high=high, scale=scale, integer=integer)


# ---------------------------------------------------------------------------------------------
# Samplers


def grid_trials(space: SearchSpace) -> list[dict[str, Any]]:
    """Every combination of the candidates, the first key varying slowest (file order).

    Raises:
        ConfigError: when the space holds a range, which cannot be enumerated.
    """
    for param in space.params:
        if param.kind == "range":
            raise ConfigError(
                f"{space.source}: key {param.key}: a range ({param.low} to {param.high}) "
                "cannot be enumerated by --sampler grid; it needs --sampler random or optuna "
                "(or give a list of values)"
            )
    value_lists = [param.values for param in space.params]
    return [_trial(space, combination) for combination in itertools.product(*value_lists)]


def random_trials(space: SearchSpace, n_trials: int, seed: int) -> list[dict[str, Any]]:
    """`n_trials` distinct trials drawn independently per key with `numpy.random.Generator(seed)`.

    Lists and choices are drawn uniformly; ranges uniformly on their scale (log-uniform for
    "log"; integers with both bounds included). A trial equal to an earlier one is redrawn, so
    no trial repeats; a space with fewer than `n_trials` points gives all of them, in a random
    order. The first k trials do not depend on `n_trials` (a longer search extends a shorter
    one with the same seed).

    Raises:
        ConfigError: when `n_trials` < 1, or when no new trial turns up in 1000 redraws (only
            spaces with integer ranges and few points can reach it).
    """
    _check_n_trials(n_trials, "random")
    rng = np.random.default_rng(seed)
    size = space.size
    if size is not None:
        n_trials = min(n_trials, size)
    if size is not None and size < 2**62 and all(p.kind != "range" for p in space.params):
        return [_grid_point(space, index) for index in _distinct_indices(rng, size, n_trials)]
    trials: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(trials) < n_trials:
        for _ in range(_MAX_REDRAWS):
            trial = {param.key: _draw(param, rng) for param in space.params}
            key = trial_key(trial)
            if key not in seen:
                break
        else:
            raise ConfigError(
                f"{space.source}: found only {len(trials)} distinct trials of {n_trials} "
                f"asked in {_MAX_REDRAWS} draws; ask for fewer --trials or use --sampler grid"
            )
        seen.add(key)
        trials.append(trial)
    return trials


def _distinct_indices(rng: np.random.Generator, size: int, count: int) -> list[int]:
    """`count` distinct integers in [0, size), uniform: a lazy Fisher-Yates shuffle."""
    swapped: dict[int, int] = {}
    indices = []
    for position in range(count):
        other = int(rng.integers(position, size))
        indices.append(swapped.get(other, other))
        swapped[other] = swapped.get(position, position)
    return indices


def _grid_point(space: SearchSpace, index: int) -> dict[str, Any]:
    """The trial at `index` of `grid_trials(space)` (mixed radix, first key most significant)."""
    combination = []
    for param in reversed(space.params):
        index, digit = divmod(index, len(param.values))
        combination.append(param.values[digit])
    return _trial(space, reversed(combination))


def _draw(param: Param, rng: np.random.Generator) -> Any:
    """One value of `param`: uniform over candidates, or on the range's scale."""
    if param.kind != "range":
        return _thaw(param.values[int(rng.integers(len(param.values)))])
    low, high = param.low, param.high
    if param.integer:
        if param.scale == "log":
            value = int(math.floor(math.exp(rng.uniform(math.log(low), math.log(high + 1)))))
        else:
            value = int(rng.integers(low, high + 1))
        return min(max(value, int(low)), int(high))
    if param.scale == "log":
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        value = float(rng.uniform(low, high))
    return min(max(value, float(low)), float(high))


def make_trials(
    space: SearchSpace, sampler: str, n_trials: int | None, seed: int
) -> list[dict[str, Any]]:
    """The trials of a non-adaptive search: `sampler` "grid" or "random".

    Args:
        space: the search space.
        sampler: "grid" (every combination) or "random" (`random_trials`).
        n_trials: for grid, None or at least the grid's size (more gives the whole grid);
            for random, the number of trials (required).
        seed: seeds the random sampler.

    Raises:
        ConfigError: for "optuna" (adaptive: use `OptunaSampler`), an unknown sampler, a grid
            larger than `n_trials`, or random without `n_trials`.
    """
    if sampler == "grid":
        trials = grid_trials(space)
        if n_trials is not None:
            _check_n_trials(n_trials, "grid")
            if n_trials < len(trials):
                raise ConfigError(
                    f"{space.source}: the grid has {len(trials)} trials, more than --trials "
                    f"{n_trials}; drop --trials to run them all, or use --sampler random to "
                    f"draw {n_trials} of them"
                )
        return trials
    if sampler == "random":
        if n_trials is None:
            raise ConfigError("--sampler random needs --trials N")
        return random_trials(space, n_trials, seed)
    if sampler == "optuna":
        raise ConfigError("--sampler optuna is adaptive: ask OptunaSampler for trials in rounds")
    raise ConfigError(
        f"--sampler got {sampler!r}, expected one of {', '.join(SAMPLERS)}"
        f"{_hint(sampler, SAMPLERS)}"
    )


def _check_n_trials(n_trials: int, sampler: str) -> None:
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"--trials got {n_trials!r} for --sampler {sampler}, expected >= 1")


class OptunaSampler:
    """Adaptive search with optuna's TPE sampler, used ask-and-tell.

    `ask(n)` proposes n trials at once (a population; optuna's constant liar spreads pending
    trials apart), `tell(numbers, objectives)` reports their results, and `add` registers a
    trial finished earlier (to resume a search). Deterministic given the seed and the same
    sequence of calls. A non-finite objective (a diverged trial) is told as a failed trial,
    which TPE leaves out of its model.

    Args:
        space: the search space; lists and choices become categorical distributions, ranges
            float (or int) distributions, log-scaled for scale "log".
        seed: seeds `optuna.samplers.TPESampler`.
        direction: "maximize" or "minimize" the objective.

    Raises:
        ConfigError: when optuna is not installed, or for an unknown direction.
    """

    def __init__(self, space: SearchSpace, *, seed: int, direction: str = "maximize"):
        optuna = _import_optuna()
        if direction not in ("maximize", "minimize"):
            raise ConfigError(
                f"direction got {direction!r}, expected \"maximize\" or \"minimize\""
            )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self.space = space
        self.study = optuna.create_study(
            sampler=optuna.samplers.TPESampler(seed=seed), direction=direction
        )
        self._distributions: dict[str, Any] = {}
        # Per categorical key: optuna's choice (a JSON string when the value is not a scalar)
        # -> the value, and back.
        self._decode: dict[str, dict[Any, Any]] = {}
        self._encode: dict[str, dict[str, Any]] = {}
        distributions = optuna.distributions
        for param in space.params:
            if param.kind == "range":
                cls = distributions.IntDistribution if param.integer else (
                    distributions.FloatDistribution
                )
                self._distributions[param.key] = cls(
                    param.low, param.high, log=param.scale == "log"
                )
                continue
            scalar = all(
                value is None or isinstance(value, bool | int | float | str)
                for value in param.values
            )
            choices = [value if scalar else _canonical_json(value) for value in param.values]
            self._distributions[param.key] = distributions.CategoricalDistribution(choices)
            self._decode[param.key] = dict(zip(choices, param.values, strict=True))
            self._encode[param.key] = {
                _canonical_json(value): choice
                for value, choice in zip(param.values, choices, strict=True)
            }

    def ask(self, n: int = 1) -> list[tuple[int, dict[str, Any]]]:
        """`n` new trials as (optuna trial number, values) pairs."""
        proposals = []
        for _ in range(n):
            trial = self.study.ask(self._distributions)
            proposals.append((trial.number, self._values(trial.params)))
        return proposals

    def tell(self, numbers: Sequence[int], objectives: Sequence[float]) -> None:
        """Reports the objective of each asked trial; non-finite ones are told as failed."""
        if len(numbers) != len(objectives):
            raise ValueError(f"got {len(numbers)} trial numbers but {len(objectives)} objectives")
        for number, objective in zip(numbers, objectives, strict=True):
            objective = float(objective)
            if math.isfinite(objective):
                self.study.tell(int(number), objective)
            else:
                self.study.tell(int(number), state=self._optuna.trial.TrialState.FAIL)

    def add(self, values: Mapping[str, Any], objective: float) -> None:
        """Registers a trial finished before (e.g. by an interrupted search being resumed)."""
        missing = [key for key in self.space.keys if key not in values]
        if missing:
            raise ConfigError(f"trial {dict(values)!r} lacks key {missing[0]}")
        params = {}
        for key in self.space.keys:
            value = values[key]
            if key in self._encode:
                try:
                    value = self._encode[key][_canonical_json(value)]
                except KeyError:
                    raise ConfigError(
                        f"key {key}: {value!r} is not among the space's candidates"
                    ) from None
            params[key] = value
        objective = float(objective)
        finite = math.isfinite(objective)
        state = self._optuna.trial.TrialState
        try:
            frozen = self._optuna.trial.create_trial(
                params=params,
                distributions=self._distributions,
                value=objective if finite else None,
                state=state.COMPLETE if finite else state.FAIL,
            )
        except ValueError as error:
            raise ConfigError(f"trial {dict(values)!r} is outside the space: {error}") from None
        self.study.add_trial(frozen)

    def _values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        values = {}
        for param in self.space.params:
            value = params[param.key]
            if param.key in self._decode:
                value = _thaw(self._decode[param.key][value])
            elif param.integer:
                value = int(value)
            else:
                value = float(value)
            values[param.key] = value
        return values


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError(_OPTUNA_MISSING) from None
    return optuna


# ---------------------------------------------------------------------------------------------
# Trials


def trial_key(values: Mapping[str, Any]) -> str:
    """A short stable name of a trial: the first 12 hex digits of the SHA-1 of its values as
    canonical JSON (sorted keys). Trials from the samplers are typed per config field, so the
    same trial always gets the same key; 1 and 1.0 differ."""
    return hashlib.sha1(_canonical_json(dict(values)).encode()).hexdigest()[:12]


def apply_trial(config: Config, values: Mapping[str, Any], source: str = "trial") -> Config:
    """A new `Config` with each dotted key of `values` set, checked as a config file would be.

    Raises:
        ConfigError: naming the key, for an unknown key or a value the config rejects.
    """
    raw = config_to_dict(config)
    for key, value in values.items():
        section, _, name = key.partition(".")
        if not name or section not in raw:
            owner = _section_of(section) if not name else None
            hint = f"; did you mean {owner}.{section}?" if owner else ""
            raise ConfigError(f"{source}: key {key!r}: expected section.key{hint}")
        raw[section][name] = _thaw(value)
    return config_from_dict(raw, source)


def static_signature(values: Mapping[str, Any], space: SearchSpace) -> tuple[Any, ...]:
    """The static part of a trial, hashable: ((key, value), ...) in the space's key order."""
    return tuple((key, _freeze(values[key])) for key in space.static_keys)


def group_trials(trials: Sequence[Mapping[str, Any]], space: SearchSpace) -> list[list[int]]:
    """Indices of `trials` grouped by their static values (one compiled program per group).

    Groups come in order of first appearance and keep the trials' order within them.
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, values in enumerate(trials):
        groups.setdefault(static_signature(values, space), []).append(index)
    return list(groups.values())


def _trial(space: SearchSpace, combination: typing.Iterable[Any]) -> dict[str, Any]:
    return {key: _thaw(value) for key, value in zip(space.keys, combination, strict=True)}


def _freeze(value: Any) -> Any:
    """Lists as tuples, recursively, so that a value is hashable."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def _thaw(value: Any) -> Any:
    """Tuples back to (fresh) lists, as the config fields hold them; numpy scalars as Python's."""
    if isinstance(value, tuple | list):
        return [_thaw(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{value!r} ({type(value).__name__}) is not a JSON value")
