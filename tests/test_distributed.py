"""Real multi-process runs on CPU (gloo). DDP (ddp_spawn, two processes): every rank measures the same exact
update, rank zero alone logs, and EarlyStepDrop's decisions leave every rank with the same lr at every step.
DTensor parameters (ModelParallelStrategy, four processes: FSDP2 hybrid sharding on a 2 x 2 mesh, or tensor
parallelism with FSDP2): every rank measures the exact update of the whole model, each replica counted once,
and follows rank zero's EarlyStepDrop decisions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lrwatch
from lrwatch._lightning import pl
from tests.conftest import DigitsMLP, RecordingLogger, ReferenceRecorder, RankDependentDrop, SaveRankRecords, digits_loader

pytestmark = pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")


def _ddp_fit(tmp_path, model, callbacks, max_steps):
    trainer = pl.Trainer(
        strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=max_steps, logger=RecordingLogger(),
        callbacks=[SaveRankRecords(str(tmp_path)), ReferenceRecorder(), *callbacks], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, digits_loader(batch_size=32))
    return [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)]


def test_ddp_every_rank_measures_the_exact_update_and_rank_zero_logs(tmp_path):
    ranks = _ddp_fit(tmp_path, DigitsMLP("sgd_momentum_groups"), [lrwatch.LRWatch(flush_every=4)], max_steps=12)
    for rank in ranks:
        np.testing.assert_array_equal(rank["steps"], np.arange(1, 13))
        np.testing.assert_allclose(rank["displacement"], rank["reference"], rtol=1e-5)
        # the descent uses the all-reduced gradient the update used; error relative to |dw||g|
        error = np.abs(rank["descent"] - rank["reference_descent"]) / (rank["reference"] * rank["reference_grad_norm"])
        assert error.max() < 1e-5
    np.testing.assert_allclose(ranks[0]["displacement"], ranks[1]["displacement"], rtol=1e-6)
    np.testing.assert_allclose(ranks[0]["descent"], ranks[1]["descent"], rtol=1e-6)
    np.testing.assert_allclose(ranks[0]["logged"][:, 1], ranks[0]["displacement"], rtol=1e-12)
    assert len(ranks[1]["logged"]) == 0  # Lightning's loggers write on rank zero only


class StepScheduled(DigitsMLP):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=8, gamma=0.5), "interval": "step"}}


def test_ddp_ranks_take_rank_zeros_decision_at_the_same_step(tmp_path):
    callbacks = [lrwatch.LRWatch(flush_every=4), RankDependentDrop(6, 3, decide_every=1, cooldown=0)]
    ranks = _ddp_fit(tmp_path, StepScheduled(), callbacks, max_steps=14)
    np.testing.assert_array_equal(ranks[0]["lrs"], ranks[1]["lrs"])
    # Rank zero's drop after step 6 brings the step-8 drop forward; the next comes 8 later.
    np.testing.assert_allclose(ranks[0]["lrs"][:, 0], [0.5] * 6 + [0.25] * 8)


@pytest.mark.parametrize("layout", ["hybrid", "tensor"])
def test_dtensor_parameters_measure_the_whole_update_once(tmp_path, layout):
    """Lightning starts the ranks by re-running a script, so the run is a script of its own. Without
    counting replicas once, "hybrid" is off by sqrt(2) and "tensor" (a replicated bias) by ~1e-3."""
    script = Path(__file__).with_name("_dtensor_run.py")
    done = subprocess.run([sys.executable, str(script), str(tmp_path), layout], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in range(4):
        r = np.load(tmp_path / f"rank{rank}.npz")
        assert len(r["displacement"]) == 6
        np.testing.assert_allclose(r["displacement"], r["reference"], rtol=1e-5)
        np.testing.assert_allclose(r["grad_norm"], r["reference_grad_norm"], rtol=1e-5)
        error = np.abs(r["descent"] - r["reference_descent"]) / (r["reference"] * r["reference_grad_norm"])
        assert error.max() < 1e-5
        # rank zero's drop after step 2 is every rank's: body lr 0.1, head lr 0.025, both 10x lower from step 3
        np.testing.assert_allclose(r["lrs"], [[0.1, 0.025]] * 2 + [[0.01, 0.0025]] * 4, rtol=1e-12)