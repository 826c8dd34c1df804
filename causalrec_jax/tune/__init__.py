"""Hyperparameter search: search spaces, samplers and population training of trials."""
