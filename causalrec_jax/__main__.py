"""`python -m causalrec_jax` runs the `causalrec` command."""

from causalrec_jax.cli import entry

entry()
