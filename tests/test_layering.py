"""The package's import graph keeps the layering of DESIGN.md §1.

Layers, bottom-up: `errors, streams -> config -> data -> models -> eval -> train -> causal ->
sim -> explain, privacy, robust, parallel -> tasks -> runs, report, tune -> cli`; a module
imports only from its own layer or below. The graph is read from the source (every `import`
and `from ... import`, function-level ones included), so an import hidden in a function to
dodge a cycle counts as much as one at the top.

What still breaks a rule, in files other sessions are restructuring, is listed in
`ALLOWED_UPWARD_IMPORTS` and `ALLOWED_CYCLES` with a reason: a new violation fails, and so does
an allowlisted one that is gone (delete it from the list, so that the list only shrinks).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = "causalrec_jax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Bottom-up; a module's layer is that of the longest prefix of its name listed here.
LAYERS = (
    ("errors", "streams", "xla_cpu"),
    ("config",),
    ("data",),
    ("models",),
    ("eval",),
    ("train",),
    ("causal",),
    ("sim",),
    ("explain", "privacy", "robust", "parallel"),
    ("tasks",),
    ("runs", "report", "tune"),
    ("cli", "__main__"),
)

# (importer, imported): upward imports left in modules other sessions own, each with why.
ALLOWED_UPWARD_IMPORTS = {
}

# Strongly connected sets of modules (import cycles) left in modules other sessions own.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """Every module name an `import` anywhere in the file names (absolute, as written)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import submodule` imports the submodule, `from module import
            # name` the module: `internal_target` takes the longest prefix that is a module.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def internal_target(imported: str, modules: dict[str, Path]) -> str | None:
    """The package module an imported name resolves to (the longest existing prefix)."""
    parts = imported.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """`(internal, external)`: package modules each module imports, and top-level others."""
    modules = all_modules()
    internal: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for name, path in modules.items():
        internal[name], external[name] = set(), set()
        for imported in imported_names(path, name):
            if imported.split(".")[0] != PACKAGE:
                external[name].add(imported.split(".")[0])
                continue
            target = internal_target(imported, modules)
            if target is not None and target not in (name, PACKAGE):
                internal[name].add(target)
    return internal, external


def layer(name: str) -> int:
    parts = name.split(".")[1:]
    for index, names in enumerate(LAYERS):
        if parts and parts[0] in names:
            return index
    raise AssertionError(f"module {name} is in no layer of LAYERS: add it")


def upward_imports(internal: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {
        (importer, imported)
        for importer, targets in internal.items()
        if importer != PACKAGE
        for imported in targets
        if layer(imported) > layer(importer)
    }


def cycles(internal: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected sets of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(internal.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for node in sorted(internal):
        if node not in index:
            visit(node)
    return found


def test_every_module_is_in_a_layer():
    for name in all_modules():
        if name != PACKAGE:
            layer(name)


def test_modules_import_only_from_their_layer_or_below():
    internal, _ = import_graph()
    found = upward_imports(internal)
    new = sorted(found - set(ALLOWED_UPWARD_IMPORTS))
    assert not new, "imports from a higher layer (DESIGN.md §1):\n" + "\n".join(
        f"{importer} -> {imported}" for importer, imported in new
    )
    gone = sorted(set(ALLOWED_UPWARD_IMPORTS) - found)
    assert not gone, f"fixed, delete from ALLOWED_UPWARD_IMPORTS: {gone}"


def test_there_are_no_import_cycles():
    internal, _ = import_graph()
    found = cycles(internal)
    new = [sorted(component) for component in found - set(ALLOWED_CYCLES)]
    assert not new, f"import cycles: {new}"
    gone = [sorted(component) for component in set(ALLOWED_CYCLES) - found]
    assert not gone, f"fixed or changed, update ALLOWED_CYCLES: {gone}"


def test_data_imports_neither_jax_flax_nor_the_simulator():
    internal, external = import_graph()
    data = [name for name in internal if name.startswith(f"{PACKAGE}.data")]
    assert f"{PACKAGE}.data.formats.registry" in data  # the walk sees the data layer
    for name in data:
        assert not external[name] & {"jax", "jaxlib", "flax", "optax", "orbax"}, name
        assert not {target for target in internal[name] if layer(target) > layer(name)}, name


def test_models_know_no_losses_propensities_or_training():
    internal, _ = import_graph()
    models = [name for name in internal if name.startswith(f"{PACKAGE}.models")]
    assert f"{PACKAGE}.models.mf" in models
    forbidden = (f"{PACKAGE}.train", f"{PACKAGE}.causal", f"{PACKAGE}.eval")
    for name in models:
        assert not [target for target in internal[name] if target.startswith(forbidden)], name


def test_nothing_imports_the_command_line():
    internal, _ = import_graph()
    importers = sorted(name for name, targets in internal.items() if f"{PACKAGE}.cli" in targets)
    assert importers == [f"{PACKAGE}.__main__"]  # the `python -m causalrec_jax` entry point


def test_the_walk_sees_function_level_imports(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("def f():\n    from causalrec_jax.sim import logs\n    import jax.numpy\n")
    assert imported_names(source, "causalrec_jax.data.module") >= {
        "causalrec_jax.sim.logs",
        "jax.numpy",
    }
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == {frozenset("abc")}


def test_importing_the_data_layer_loads_neither_jax_flax_nor_the_simulator():
    code = (
        "import sys, causalrec_jax.data, causalrec_jax.data.loader, causalrec_jax.data.formats, "
        "causalrec_jax.data.readers, causalrec_jax.data.stats, causalrec_jax.data.sequences; "
        "loaded = [name for name in ('jax', 'flax', 'optax', 'causalrec_jax.sim') "
        "if name in sys.modules]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=ROOT.parent,
    )
    assert result.returncode == 0, result.stderr
