"""The same callbacks drive a trainer of the unified ``lightning`` package (``lightning.pytorch``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lrwatch
from tests.conftest import digits_loader

L = pytest.importorskip("lightning.pytorch", reason="the unified lightning package is not installed")


class Digits(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(64, 10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 10, 0.5),
                                                   "interval": "step"}}


class DropAt(lrwatch.EarlyStepDrop):
    def decide(self, report, step, last_analyzed):
        return "drop" if step == 4 else None


def test_lightning_pytorch_trainer_runs_lrwatch_and_early_step_drop():
    watch, drop = lrwatch.LRWatch(flush_every=3), DropAt(decide_every=1)
    trainer = L.Trainer(max_steps=12, accelerator="cpu", logger=False, callbacks=[watch, drop],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Digits(), digits_loader())
    records = watch.records()
    np.testing.assert_array_equal(records.steps, np.arange(1, 13))
    # The drop due at step 10 is taken after step 4; the next one 10 steps later.
    np.testing.assert_allclose(records.lr[:, 0], [0.5] * 4 + [0.25] * 8)
    assert np.all(records.displacement > 0) and [a.step for a in drop.actions] == [5]
