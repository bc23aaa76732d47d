"""Experiment loggers: Weights & Biases run naming, grouping, offline fallback and end-of-job logging."""
