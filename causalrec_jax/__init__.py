"""causalrec_jax."""
