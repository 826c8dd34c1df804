"""Causal inference for recommendation: propensities, weighted losses, off-policy estimators."""
