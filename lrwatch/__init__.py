"""lrwatch: watch how the learning-rate schedule drives training, and act on it.

The pure layers (``schedules``, ``signature``, ``diagnosis``) import numpy only, so
``lrwatch.analyze`` works without torch. The Lightning callbacks are imported lazily on first
attribute access, which keeps ``import lrwatch`` cheap for offline analysis.
"""

from lrwatch.diagnosis import Analyzer, Diagnosis, Report, analyze

__version__ = "0.1.0"

_CALLBACKS = {
    "LRWatch": "lrwatch.callbacks.watch",
    "EarlyStepDrop": "lrwatch.callbacks.early_drop",
    "StabilityProbe": "lrwatch.callbacks.stability",
}

__all__ = ["Analyzer", "Diagnosis", "Report", "analyze", *_CALLBACKS]


def __getattr__(name: str):
    if name in _CALLBACKS:
        import importlib

        return getattr(importlib.import_module(_CALLBACKS[name]), name)
    raise AttributeError(f"module 'lrwatch' has no attribute {name!r}")
