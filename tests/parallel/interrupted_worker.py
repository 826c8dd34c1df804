"""`causalrec train ARGS` stopped by Ctrl-C after the log line of epoch STOP, in every process
of a job alike (a job cut off once its checkpoints are written):

    python tests/parallel/interrupted_worker.py STOP ARGS...
"""

import sys

from stopped_runs import stopping

from causalrec_jax import cli
from causalrec_jax.tasks import ordinary, sequential


def main() -> int:
    stop, argv = int(sys.argv[1]), sys.argv[2:]
    for task in (ordinary, sequential):  # an ordinary or a sequential run's (first) fit
        task.fit = stopping(task.fit, stop)
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
