"""Step-time overhead of LRWatch with many param groups: the per-group series it logs every step.

An AdamW with one param group per parameter (layer-wise lr decay taken to its extreme) gets three
per-group series a step (lr, Adam's step per lr, AdamW's effective decay); TensorBoard's writer costs
tens of µs a scalar on the training thread. Arms interleaved in one process, order rotated every
repeat; prints median and mean step times (the mean carries the flushes, where logging happens) and
their ratios to the bare run. Only the ratios measured side by side in one run mean anything.

    .venv/bin/python benchmarks/group_overhead.py [--repeats 3] [--steps 110] [--depth 51] [--width 64]
"""

from __future__ import annotations

import argparse
import warnings

import torch

import lrwatch
from _timing import MLP, interleaved, ratio_table, size_arguments, synthetic_loader

ARMS = {
    "bare": lambda: [],
    "LRWatch() (group_series=8)": lambda: [lrwatch.LRWatch()],
    "LRWatch(group_series=None)": lambda: [lrwatch.LRWatch(group_series=None)],
    "LRWatch(log=False)": lambda: [lrwatch.LRWatch(log=False)],
}


def main() -> None:
    parser = size_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                            repeats=3, steps=110, warmup=10, batch=64, width=64, depth=51)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    loader = synthetic_loader(args.width, args.batch, args.steps)
    model = MLP(args.width, args.depth, per_parameter_groups=True)
    n_groups = len(model.configure_optimizers().param_groups)
    times = interleaved(ARMS, lambda: MLP(args.width, args.depth, per_parameter_groups=True), loader, args.repeats,
                        args.steps, args.warmup, accelerator="cpu", devices=1)
    print(f"AdamW, {n_groups} param groups (one per parameter), {sum(p.numel() for p in model.parameters())} "
          f"parameters, batch {args.batch}, 1 thread, {args.repeats} repeats x {args.steps - args.warmup - 1} timed "
          "steps per arm")
    print(ratio_table(times, "bare"))


if __name__ == "__main__":
    main()
