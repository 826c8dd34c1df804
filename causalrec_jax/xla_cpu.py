"""Faster random numbers on CPUs, as an option: jax's unrolled Threefry lowering (the one its
GPU backends use) in place of its rolled CPU lowering, registered when `causalrec_jax` is
imported with `CAUSALREC_UNROLLED_THREEFRY=1` in the environment.

Every random draw of jax (`jax.random.*`, key splitting and folding) hashes counters with
Threefry-2x32, 20 rounds of integer additions, rotations and xors. On CPUs jax lowers it as a
`fori_loop` of 5 iterations of 4 rounds, to keep programs small; XLA's CPU runtime then pays a
loop's dispatch for each draw, about 0.25 ms whatever its size. A training step draws several
times (negatives, uniform cells, dropout, each DP unit's key, DP noise): on the 2-core CPU the
unrolled lowering made BPR-MF's ordinary step at ml-100k size 1.45x faster, the user-level
DP step 1.39x (`bench/privacy.py` times both lowerings side by side) and a SASRec epoch on
ml-100k 1.2x. It costs compilation: each draw becomes about a hundred operations (the
ordinary BPR epoch compiled in 1.68 s instead of 1.57 s, and the test suite, which mostly
compiles, took 644 s instead of about 560 s), which is why it is not the default: it pays in
long runs on CPUs.

The unrolled lowering computes the same integer operations in the same order: every key,
random bit, integer and permutation is bit for bit the same (tested against a process with
jax's own lowering); floats drawn from them (`normal`, `uniform`) can differ in their last
bit, since XLA fuses the conversion with the hash differently (99 of 2,112 normals in the
test, by one unit in the last place). So a run with the option set matches one without to
float rounding, not to the bit: set it for every run you compare, or for none.

It uses jax's private module `jax._src.random.threefry2x32` (the rule jax registers for other
platforms); where a jax release lacks it, nothing is registered (`use_unrolled` returns False
and `UNROLLED` is False).
"""

from __future__ import annotations

import os


def use_unrolled(unrolled: bool = True) -> bool:
    """Registers jax's unrolled (True) or its own rolled (False) Threefry lowering for CPU
    programs compiled from now on (`jax.clear_caches()` to recompile the others); returns
    whether jax has the rules (False: nothing changed)."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32
        rule = (threefry2x32._threefry2x32_lowering_rule if unrolled
                else threefry2x32._threefry2x32_cpu_lowering_rule)
        primitive = threefry2x32.threefry2x32_p
    except (ImportError, AttributeError):
        return False
    # out of line, as jax registers the unrolled rule for the other platforms
    mlir.register_lowering(primitive, rule, platform="cpu", inline=not unrolled)
    global UNROLLED
    UNROLLED = unrolled
    return True


# The environment variable that asks for the unrolled lowering at import ("1" or "true").
ENVIRONMENT = "CAUSALREC_UNROLLED_THREEFRY"


def _refusal() -> str | None:
    """The one line naming `ENVIRONMENT`'s value when it is neither on ("1", "true") nor off
    ("", "0", "false"); None otherwise."""
    value = os.environ.get(ENVIRONMENT, "")
    if value.strip().lower() in ("", "0", "false", "1", "true"):
        return None
    return f"{ENVIRONMENT}={value!r}: expected 1 or true (on), 0 or false (off)"


def check_environment() -> None:
    """Raises ConfigError (one line) when `ENVIRONMENT` holds neither on nor off: the command
    line refuses it before anything runs, and `train.loop.fit` before any epoch (an import
    registers nothing and says nothing)."""
    if (line := _refusal()) is not None:
        from causalrec_jax.errors import ConfigError

        raise ConfigError(line)


# Whether CPU programs use the unrolled Threefry lowering: registered at import when
# `ENVIRONMENT` asks for it, or later by `use_unrolled`.
UNROLLED = False
if os.environ.get(ENVIRONMENT, "").strip().lower() in ("1", "true"):
    use_unrolled(True)


def threefry_cpu() -> str | None:
    """The Threefry lowering this process's programs compile with when they run on a CPU
    ("unrolled" or "rolled", as `use_unrolled` last set it), None on other backends (where
    the option changes nothing): recorded in a run's checkpoints and metrics, and checked on
    resume."""
    import jax

    if jax.default_backend() != "cpu":
        return None
    return "unrolled" if UNROLLED else "rolled"
