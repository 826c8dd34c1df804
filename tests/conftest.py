"""Shared test fixtures."""

from __future__ import annotations

import gc
import os
from pathlib import Path

# The suite's programs are tiny: compiling them costs more than running them. XLA's CPU
# backend without LLVM's optimisation passes compiles about a third faster (measured on
# tests/runs/test_train_run.py + tests/train/test_sequence_step.py: 139 s -> 90 s on 2 cores)
# and computes the same operations. Set before JAX starts its backend, and inherited by the
# command-line subprocesses tests start; CAUSALREC_TEST_XLA_OPT=1 keeps XLA's default.
# Timings are measured by `make bench`, never under this flag.
if os.environ.get("CAUSALREC_TEST_XLA_OPT") != "1":
    _flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in _flags:
        os.environ["XLA_FLAGS"] = f"{_flags} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

# JAX's persistent compilation cache, for the suite and the command-line subprocesses it
# starts, when CAUSALREC_TEST_COMPILATION_CACHE=1 (programs compiled by one run are read back
# by the next). Off by default: with jaxlib 0.10.2 on the CPU, writing an executable to the
# cache segfaulted once in a full run of the suite (not reproduced alone), and a crash must not
# cost CI its run. Users switch the cache on with JAX_COMPILATION_CACHE_DIR (README).
_CACHE_DIR = Path(__file__).resolve().parents[1] / ".jax_cache"
if os.environ.get("CAUSALREC_TEST_COMPILATION_CACHE") == "1":
    jax.config.update("jax_compilation_cache_dir", str(_CACHE_DIR))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE_DIR))  # for subprocesses

# The real datasets live next to the repository (../shared/data from its root); they are
# optional, so tests that need them skip when the folder is absent.
SHARED_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder of real datasets (`coat/`, `ml-100k/`); skips the test when it is absent."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA_DIR} (optional, read-only)")
    return SHARED_DATA_DIR


class CompileCounter:
    """Counts XLA compilations while active (`with counter:`); `counter.count` is the total."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self) -> None:
        self.count = 0

    def _listener(self, event: str, duration: float, **kwargs) -> None:
        if event == self.EVENT:
            self.count += 1

    def __enter__(self) -> CompileCounter:
        import jax

        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        import jax

        jax.monitoring.unregister_event_duration_listener(self._listener)


@pytest.fixture
def compile_counter() -> CompileCounter:
    """A fresh `CompileCounter` (use as `with compile_counter: ...`)."""
    return CompileCounter()


def _memory_mappings() -> int:
    """How many memory mappings this process holds (Linux; 0 where /proc is absent)."""
    try:
        with open("/proc/self/maps") as handle:
            return sum(1 for _ in handle)
    except OSError:
        return 0


# Far below Linux's default vm.max_map_count (65,530).
_MAPPINGS_LIMIT = 20_000


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops JAX's compiled programs after a test module once the process holds many
    memory mappings.

    Every compiled XLA CPU executable keeps memory mappings; a process that compiled the whole
    suite's programs (well over a thousand) hit a segmentation fault inside the XLA compiler
    late in the run, twice (the mapping limit is the suspected cause). Clearing only past
    `_MAPPINGS_LIMIT` keeps the programs that later modules share compiled.
    """
    yield
    if _memory_mappings() > _MAPPINGS_LIMIT:
        jax.clear_caches()
        gc.collect()
