"""Entry-point tasks: train(cfg), evaluate(cfg)."""

from anomaly_vlm.tasks.runner import evaluate, train

__all__ = ["evaluate", "train"]
