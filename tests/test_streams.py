"""Named random streams: unique ids per level, historic values, indices folded below a stream.

Besides the values, the call sites are read from the source (as `test_layering` reads imports):
every `fold_in` of the package goes through `streams.derive` (a named stream) or
`streams.index` (a data index), and no key gets both a stream id and a data index folded into
it. A key passed to a function counts with what that function (transitively) folds into it, so
`rollout_users(key, ...)` indexes `key` by user. The one call site that still folds both is
listed in `KNOWN_MIXED_LEVELS` with why: a new one fails, and so does a listed one that is gone.
"""

from __future__ import annotations

import ast
import enum
from pathlib import Path

import jax
import numpy as np
import pytest

from causalrec_jax import streams

ROOT = Path(streams.__file__).resolve().parent

# Every level and the values the library drew with before the streams had names: every
# published number depends on them, so a change here is a change of results.
HISTORIC_VALUES = {
    "Run": {"INIT": 0, "TRAIN": 1, "IMPUTATION": 2, "PROPENSITY_MODEL": 7919,
            "PRIVATE_ITEMS": 7927, "PRIVATE_ROWS": 7933, "SILOS": 7937},
    "Epoch": {"STEPS": 0, "ORDER": 1, "BUCKET_ORDER": 2, "BATCH_ORDER": 3,
              "STREAM_UNITS": 4, "STREAM_WINDOWS": 5},
    "Step": {"NEGATIVES": 0, "DROPOUT": 1, "CELLS": 2, "UNITS": 3, "UNIT": 4, "NOISE": 5,
             "LOCAL_STEPS": 6, "SELECTION": 7},
    "World": {"USERS": 0, "ITEMS": 1, "POPULARITY": 2, "CELLS": 3, "MAR": 5, "CALIBRATION": 6},
    "Env": {"NOISE": 16, "POLICY": 17, "ARRIVAL": 18, "USERS": 19, "ITEMS": 20,
            "POPULARITY": 21},
    "Policy": {"SCORES": 22},
    "Log": {"SLOT_PROPENSITIES": 1},
    "Ope": {"LOG": 0, "MARGINALS": 1, "FOLDS": 2, "REWARD_MODEL": 3, "TRUTH": 31},
    "Marginals": {"TARGET": 1, "LOGGING": 2},
    "Uplift": {"LOG": 0, "MODEL": 1, "TREATED_OUTCOME_MODEL": 2, "CONTROL_OUTCOME_MODEL": 3},
    "UpliftModel": {"INIT": 0, "FIT": 1},
    "Pairs": {"FIRST": 0, "SECOND": 1},
    "Planted": {"ITEMS": 40, "USERS": 41},
    "PlantedItems": {"TOPICS": 0, "POPULARITY": 1, "RULES": 2},
    "PlantedUser": {"TOPIC": 0, "BASE": 1, "ANTECEDENTS": 2, "CONFOUNDERS": 3,
                    "CONSEQUENTS": 4, "TIMES": 5},
}

# (module, function, key variable) folding both stream ids and data indices, each with why.
KNOWN_MIXED_LEVELS = {
    ("sim/logs.py", "simulate_log", "key"):
        "the users' episodes are indexed into the log key beside Log.SLOT_PROPENSITIES (user "
        "1's episode key is the marginals' key); moving either changes every simulated log",
}


def _levels() -> dict[str, type[enum.IntEnum]]:
    return {name: value for name, value in vars(streams).items()
            if isinstance(value, type) and issubclass(value, enum.IntEnum)
            and value.__module__ == streams.__name__}


def test_every_level_is_unique_and_keeps_the_historic_values():
    levels = _levels()
    assert set(levels) == set(HISTORIC_VALUES)
    for name, level in levels.items():
        values = [member.value for member in level]
        assert len(values) == len(set(values)), name  # @enum.unique: no alias of another id
        assert {member.name: member.value for member in level} == HISTORIC_VALUES[name], name
        assert level.__doc__ and "key" in level.__doc__, f"{name}: say which key it derives from"


def test_levels_whose_roots_can_be_the_same_key_are_disjoint():
    # key(env.seed), key(policy.seed), key(target.seed), key(sim.seed) and the seed roots of OPE
    # and uplift runs are the same key when their seeds are equal numbers.
    def ids(*levels):
        return [int(member) for level in levels for member in level]

    for group in ((streams.World, streams.Env, streams.Policy),
                  (streams.Ope, streams.Env, streams.Policy),
                  (streams.Uplift, streams.Env, streams.Policy)):
        values = ids(*group)
        assert len(values) == len(set(values)), group
    assert streams.Ope.TRUTH not in ids(streams.World)
    # key(planted.seed) can be any root, a run's key(run.seed) included (a run trains on it).
    roots = ids(streams.Run, streams.World, streams.Env, streams.Policy, streams.Ope,
                streams.Uplift)
    assert not set(ids(streams.Planted)) & set(roots)


def test_derive_refuses_an_unnamed_stream():
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="not a named stream"):
        streams.derive(key, 3)
    data = lambda k: np.asarray(jax.random.key_data(k))  # noqa: E731
    assert np.array_equal(data(streams.derive(key, streams.World.CELLS)),
                          data(jax.random.fold_in(key, 3)))


def test_an_index_never_equals_a_stream_of_the_same_number():
    key = jax.random.key(0)
    data = lambda k: np.asarray(jax.random.key_data(k))  # noqa: E731
    # "seed 2" of the seeds family and the stream Run.IMPUTATION (= 2) are different keys.
    seeds = streams.derive(key, streams.Run.TRAIN)
    assert not np.array_equal(data(streams.index(seeds, 2)),
                              data(streams.derive(key, streams.Run.IMPUTATION)))
    # The same name gives the same key; another name another.
    assert np.array_equal(data(streams.derive(key, streams.Run.INIT)),
                          data(jax.random.fold_in(key, 0)))
    assert not np.array_equal(data(streams.derive(key, streams.Run.INIT)),
                              data(streams.derive(key, streams.Run.PROPENSITY_MODEL)))


# ------------------------------------------------------------------ the call sites, from source


def _modules() -> dict[str, ast.Module]:
    return {path.relative_to(ROOT).as_posix(): ast.parse(path.read_text(), str(path))
            for path in sorted(ROOT.rglob("*.py")) if path.name != "streams.py"}


def _streams_call(node: ast.AST) -> str | None:
    """'derive' / 'index' for `streams.derive(...)` / `streams.index(...)`, else None."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "streams"
            and node.func.attr in ("derive", "index")):
        return node.func.attr
    return None


def _called_name(func: ast.AST) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def test_every_fold_in_goes_through_a_named_stream_or_an_index():
    levels = _levels()
    problems = []
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            if _called_name(node.func) == "fold_in":
                problems.append(f"{module}:{node.lineno}: raw fold_in (use streams.derive/index)")
            if _streams_call(node) == "derive" and len(node.args) == 2:
                stream = node.args[1]
                named = (isinstance(stream, ast.Attribute)
                         and isinstance(stream.value, ast.Attribute)
                         and isinstance(stream.value.value, ast.Name)
                         and stream.value.value.id == "streams"
                         and stream.attr in getattr(levels.get(stream.value.attr), "__members__",
                                                    {}))
                if not (named or isinstance(stream, ast.Name)):  # a Name: checked at run time
                    problems.append(f"{module}:{node.lineno}: derive of an unnamed stream")
    assert not problems, "\n".join(problems)


class _Function:
    """A function's scope: its parameters (positional order) and the names it binds."""

    def __init__(self, node, qualname: str):
        self.node, self.qualname = node, qualname
        arguments = node.args
        self.params = [a.arg for a in (*arguments.posonlyargs, *arguments.args)]
        self.bound = set(self.params) | {a.arg for a in arguments.kwonlyargs}
        self.bound |= {a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None}
        for child in _own_nodes(node):
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                self.bound.add(child.id)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.bound.add(child.name)


def _own_nodes(node):
    """The nodes of a function's body, not descending into nested functions or classes."""
    body = node.body if isinstance(node.body, list) else [node.body]
    stack = list(body)
    while stack:
        child = stack.pop()
        yield child
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                  ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(child))


def _unwrap_alias(value: ast.AST) -> str | None:
    """`f` of `jax.jit(f, ...)`, `jax.jit(jax.vmap(f))`, ... (a compiled alias), else None."""
    while isinstance(value, ast.Call) and _called_name(value.func) in ("jit", "vmap"):
        if not value.args:
            return None
        value = value.args[0]
    return _called_name(value) if isinstance(value, (ast.Name, ast.Attribute)) else None


def _mixed_levels(modules: dict[str, ast.Module]) -> set[tuple[str, str, str]]:
    """(module, function, variable) where one key gets both a stream id and a data index."""
    # Module-level functions by name (names defined twice are left out), and compiled aliases.
    functions: dict[str, tuple[str, ast.FunctionDef]] = {}
    twice: set[str] = set()
    aliases: dict[str, str] = {}
    for module, tree in modules.items():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                twice |= {node.name} & set(functions)
                functions[node.name] = (module, node)
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                    node.targets[0], ast.Name):
                target = _unwrap_alias(node.value)
                if target is not None:
                    aliases[node.targets[0].id] = target
    for name in twice:
        functions.pop(name)
    # summary[f][param]: the kinds of fold ({"derive", "index"}) f applies to its parameter.
    summary: dict[str, dict[str, set[str]]] = {name: {} for name in functions}

    def analyse(module, node):
        """Calls `record(module, scope, variable, kinds)` for every fold and summarised call."""

        def visit(scope_stack, node, qualname):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    name = getattr(child, "name", "<lambda>")
                    scope = _Function(child, f"{qualname}.{name}" if qualname else name)
                    visit([*scope_stack, scope], child, scope.qualname)
                    continue
                if isinstance(child, ast.ClassDef):
                    visit(scope_stack, child, f"{qualname}.{child.name}" if qualname
                          else child.name)
                    continue
                if isinstance(child, ast.Call):
                    for argument, kinds in argument_kinds(child):
                        if isinstance(argument, ast.Name):
                            owner = next((s for s in reversed(scope_stack)
                                          if argument.id in s.bound), None)
                            if owner is not None:
                                record(module, owner, argument.id, kinds)
                visit(scope_stack, child, qualname)

        visit([], node, "")

    def argument_kinds(call):
        """`(argument, kinds)` of a fold's key, or of a summarised function's arguments."""
        kind = _streams_call(call)
        if kind is not None:
            return [(call.args[0], frozenset({kind}))] if call.args else []
        name = _called_name(call.func)
        name = aliases.get(name, name)
        if name not in summary:
            return []
        params = functions[name][1]
        positional = [a.arg for a in (*params.args.posonlyargs, *params.args.args)]
        pairs = []
        for position, argument in enumerate(call.args):
            if isinstance(argument, ast.Starred) or position >= len(positional):
                break
            pairs.append((argument, positional[position]))
        pairs += [(k.value, k.arg) for k in call.keywords if k.arg is not None]
        return [(argument, frozenset(summary[name][param])) for argument, param in pairs
                if summary[name].get(param)]

    records: dict[tuple[str, int, str], list[frozenset[str]]] = {}
    scopes: dict[tuple[str, int], _Function] = {}

    def record(module, scope, variable, kinds):
        records.setdefault((module, id(scope.node), variable), []).append(kinds)
        scopes[(module, id(scope.node))] = scope

    while True:  # to a fixed point: summaries only grow
        records.clear()
        for module, tree in modules.items():
            analyse(module, tree)
        changed = False
        for name, (module, node) in functions.items():
            for param in [a.arg for a in (*node.args.posonlyargs, *node.args.args)]:
                kinds = set().union(*records.get((module, id(node), param), [frozenset()]))
                if kinds - summary[name].get(param, set()):
                    summary[name].setdefault(param, set()).update(kinds)
                    changed = True
        if not changed:
            break
    mixed = set()
    for (module, scope_id, variable), kinds in records.items():
        # Both kinds from separate sites here; a callee that folds both is reported in itself.
        if frozenset({"derive"}) in kinds and frozenset({"index"}) in kinds:
            mixed.add((module, scopes[(module, scope_id)].qualname, variable))
    return mixed


def test_no_key_gets_both_a_stream_id_and_a_data_index():
    mixed = _mixed_levels(_modules())
    new = sorted(mixed - set(KNOWN_MIXED_LEVELS))
    gone = sorted(set(KNOWN_MIXED_LEVELS) - mixed)
    assert not new, f"a data index folded at the level of stream ids: {new}"
    assert not gone, f"listed in KNOWN_MIXED_LEVELS but no longer found (delete it): {gone}"


def test_the_reader_of_call_sites_finds_a_mixed_level():
    # The analysis itself: a function that indexes a key by user after deriving a stream from
    # it, directly and through a callee that indexes its argument.
    source = (
        "def by_user(key, users):\n"
        "    return [streams.index(key, u) for u in users]\n"
        "def mixed(key):\n"
        "    return streams.derive(key, streams.Log.SLOT_PROPENSITIES), by_user(key, [0, 1])\n"
        "def fine(key):\n"
        "    return by_user(streams.derive(key, streams.Log.SLOT_PROPENSITIES), [0, 1])\n"
    )
    assert _mixed_levels({"example.py": ast.parse(source)}) == {("example.py", "mixed", "key")}
