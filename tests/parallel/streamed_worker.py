"""One process of `test_streamed.py`'s localhost job: streams its row groups of a partitioned
log into two epochs of MSE-MF over a (2, 1) mesh; process 0 writes the trained parameters.

Usage: streamed_worker.py LOG_FOLDER OUT.npz BATCH WINDOW_BATCHES (with the JAX_* variables of
`jax.distributed` set)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for `tests`

from causalrec_jax.parallel.distributed import start  # noqa: E402

start()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from causalrec_jax.errors import CausalRecError  # noqa: E402
from causalrec_jax.models.base import row_tables  # noqa: E402
from causalrec_jax.parallel import (  # noqa: E402
    local_copy,
    make_mesh,
    state_shardings,
    streamed,
    to_global,
)
from tests.parallel.test_streamed import model_setup  # noqa: E402


def main() -> int:
    folder, out, batch, window_batches = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:])
    try:
        source = streamed.open_source(folder)
    except CausalRecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    mesh = make_mesh((2, 1))
    step, state = model_setup("mse", source.maps.n_users, source.maps.n_items)
    from causalrec_jax.config import ModelConfig
    from causalrec_jax.models.factory import init_params  # the graph, for its row tables

    graphdef = init_params(ModelConfig(name="mf", embedding_dim=4), n_users=2, n_items=2,
                           keys=jax.numpy.stack([jax.random.key(0)])).graphdef
    tables = row_tables(graphdef) or {}
    shardings = state_shardings(state, mesh, tables)
    state = jax.jit(lambda s: s, out_shardings=shardings)(to_global(state, mesh))
    run_epoch = streamed.make_stream_epoch(step, batch_size=batch, window_batches=window_batches,
                                           mesh=mesh, tables=tables)
    key = jax.random.key(11)
    for epoch in range(2):
        state, metrics = run_epoch(state, source, key, epoch)
        assert metrics["first_bad_batch"] == -1, metrics
    if jax.process_index() == 0:
        leaves = jax.tree_util.tree_leaves_with_path(state.params)
        np.savez(out, **{jax.tree_util.keystr(path): local_copy(value)
                         for path, value in leaves})
    return 0


if __name__ == "__main__":
    sys.exit(main())
