"""Writing through the trainer's loggers, shared by the callbacks."""

from __future__ import annotations


def log_metrics(trainer, metrics: dict[str, float], step: int) -> None:
    """Send scalars to every logger of the trainer (any Lightning logger), at ``step``."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def summary_writers(trainer):
    """The SummaryWriters of the trainer's TensorBoard loggers: text and layouts are TensorBoard-only."""
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            yield experiment
