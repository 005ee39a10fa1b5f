"""The one place that imports Lightning, so every adapter agrees on which package it talks to.

``pytorch_lightning`` is the supported import; the unified ``lightning`` package
(``lightning.pytorch``) is used when only it is installed.
"""

try:
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover - exercised only where just `lightning` is installed
    import lightning.pytorch as pl

Callback = pl.Callback
Trainer = pl.Trainer
LightningModule = pl.LightningModule
rank_zero_warn = pl.utilities.rank_zero_warn

__all__ = ["pl", "Callback", "Trainer", "LightningModule", "rank_zero_warn"]
