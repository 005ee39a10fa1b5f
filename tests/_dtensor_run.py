"""A Lightning run with DTensor parameters on a 2 x 2 mesh, launched as a script by tests/test_distributed.py.

    python tests/_dtensor_run.py OUTDIR {hybrid,tensor}

ModelParallelStrategy on 4 CPU processes (gloo; Lightning starts ranks 1-3 by re-running this script).
``hybrid``: the classifier sharded with FSDP2's ``fully_shard`` over a 2 x 2 mesh, each parameter sharded
over "shard" and replicated over "replicate" (HSDP). ``tensor``: tensor parallelism over the strategy's
"tensor_parallel" dimension (first layer column-wise, second row-wise, whose bias is replicated) and
``fully_shard`` over "data_parallel". Each rank saves LRWatch's records, an independent reference
computed from the gathered full parameters, and the lrs of every step to OUTDIR/rank<r>.npz. An
EarlyStepDrop that would drop at a different step on each rank shows whether they all follow rank zero.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lrwatch  # noqa: E402
from lrwatch._lightning import pl  # noqa: E402
from tests.conftest import DigitsMLP, RankDependentDrop, ReferenceRecorder, SaveRankRecords, digits_loader  # noqa: E402

WORLD = 4
STEPS = 6


class ParallelMLP(DigitsMLP):
    def __init__(self, layout: str):
        super().__init__("sgd_momentum_groups")
        self.layout = layout

    def configure_model(self):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        if self.layout == "hybrid":
            fully_shard(self.net, mesh=init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard")))
        else:
            plan = {"0": ColwiseParallel(), "2": RowwiseParallel()}  # the second layer's bias stays replicated
            parallelize_module(self.net, self.device_mesh["tensor_parallel"], plan)
            fully_shard(self.net, mesh=self.device_mesh["data_parallel"])


def main(folder: str, layout: str) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    tensor = 2 if layout == "tensor" else 1
    trainer = pl.Trainer(
        strategy=pl.strategies.ModelParallelStrategy(data_parallel_size=WORLD // tensor, tensor_parallel_size=tensor),
        accelerator="cpu", devices=WORLD, max_steps=STEPS, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[lrwatch.LRWatch(flush_every=4, log=False), RankDependentDrop(2, 1, decide_every=1, cooldown=0),
                   ReferenceRecorder(), SaveRankRecords(folder)],
    )
    trainer.fit(ParallelMLP(layout), digits_loader(batch_size=32))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
