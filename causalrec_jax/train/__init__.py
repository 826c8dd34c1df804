"""Training: losses, objectives, the train step and the epoch loop."""
