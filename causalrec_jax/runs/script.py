"""Experiment scripts report errors as the command line does: one line, exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from causalrec_jax.errors import CausalRecError


def error_line(error: BaseException) -> str:
    """The one line a user reads for an error they can fix: a `CausalRecError`'s message, or
    an `OSError`'s file and reason (a read-only or impossible folder, a full disk)."""
    if isinstance(error, OSError) and not isinstance(error, CausalRecError):
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror or error}"
    return str(error)


def run_script(script_main: Callable[[], object], name: str | None = None) -> int:
    """Runs an experiment script's `main()`: an error the user can fix (`CausalRecError`,
    `OSError`) is one line on stderr and exit status 2, Ctrl-C one line and 130, no
    traceback."""
    prog = name or Path(sys.argv[0]).name
    try:
        script_main()
    except (CausalRecError, OSError) as error:
        print(f"{prog}: error: {error_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
