"""causalrec_jax."""

# CAUSALREC_UNROLLED_THREEFRY=1: the unrolled Threefry lowering on CPUs (`xla_cpu`)
from causalrec_jax import xla_cpu  # noqa: F401
