"""Training beyond one device: a `('data', 'model')` mesh, row-sharded embedding tables and
data-parallel batches (`mesh`, `sharding`), through `jax.sharding` and the partitioner; the
same lookups and the catalogue's top-K written per shard with `jax.shard_map` (`lookup`)."""

from causalrec_jax.parallel.distributed import (
    agree,
    from_first,
    host_values,
    is_multiprocess,
    local_copy,
    start,
    to_global,
    together,
)
from causalrec_jax.parallel.lookup import sharded_lookup, sharded_rows_top_k, sharded_top_k
from causalrec_jax.parallel.mesh import (
    AXES,
    check_mesh_shape,
    check_run_mesh,
    make_mesh,
    padded_count,
)
from causalrec_jax.parallel.sharding import (
    batch_sharding,
    checkpoint_view,
    make_sharded_run_epoch,
    pad_rows,
    replicated,
    state_shardings,
    table_collectives,
    table_kind,
    unpad_rows,
    whole_tables,
)

__all__ = [
    "AXES", "agree", "batch_sharding", "check_mesh_shape", "check_run_mesh", "checkpoint_view",
    "from_first", "host_values", "is_multiprocess", "local_copy", "make_mesh",
    "make_sharded_run_epoch", "pad_rows", "padded_count", "replicated", "sharded_lookup",
    "sharded_rows_top_k", "sharded_top_k", "start", "state_shardings", "table_collectives",
    "table_kind", "to_global", "together", "unpad_rows", "whole_tables",
]
