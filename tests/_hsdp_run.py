"""A Lightning run under hybrid sharding, launched as a script by tests/test_distributed.py.

    python tests/_hsdp_run.py OUTDIR

ModelParallelStrategy on 4 CPU processes (gloo; Lightning starts ranks 1-3 by re-running this script),
the classifier sharded with FSDP2's ``fully_shard`` over a 2 x 2 mesh: each parameter is sharded over
"shard" and replicated over "replicate". Each rank saves LRWatch's records and an independent reference
computed from the gathered full parameters to OUTDIR/rank<r>.npz.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lrwatch  # noqa: E402
from lrwatch._lightning import Callback, pl  # noqa: E402
from tests.conftest import DigitsMLP, ReferenceRecorder, digits_loader  # noqa: E402

WORLD = 4
STEPS = 6


class HybridShardedMLP(DigitsMLP):
    def __init__(self):
        super().__init__("sgd_momentum_groups")

    def configure_model(self):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        fully_shard(self.net, mesh=init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard")))


class Save(Callback):
    def __init__(self, folder: str):
        self.folder = folder

    def teardown(self, trainer, pl_module, stage):
        # Lightning leaves a gloo group alive at exit, which now and then aborts a process at shutdown
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def on_train_end(self, trainer, pl_module):
        watch = next(cb for cb in trainer.callbacks if isinstance(cb, lrwatch.LRWatch))
        watch.on_train_end(trainer, pl_module)  # flush now: this callback may run first
        reference = next(cb for cb in trainer.callbacks if isinstance(cb, ReferenceRecorder))
        reference.on_train_end(trainer, pl_module)  # gathers the final parameters (a collective: every rank)
        records = watch.records()
        np.savez(f"{self.folder}/rank{trainer.global_rank}.npz", displacement=records.displacement,
                 descent=records.descent, grad_norm=records.grad_norm, reference=reference.displacements(),
                 reference_descent=reference.descents(), reference_grad_norm=np.array(reference.grad_norms[0]))


def main(folder: str) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    trainer = pl.Trainer(
        strategy=pl.strategies.ModelParallelStrategy(data_parallel_size=WORLD, tensor_parallel_size=1),
        accelerator="cpu", devices=WORLD, max_steps=STEPS, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[lrwatch.LRWatch(flush_every=4, log=False), ReferenceRecorder(), Save(folder)],
    )
    trainer.fit(HybridShardedMLP(), digits_loader(batch_size=32))


if __name__ == "__main__":
    main(sys.argv[1])
