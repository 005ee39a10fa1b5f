"""Step-time overhead of LRWatch on CPU: bare Lightning vs LearningRateMonitor vs LRWatch().

A ~4.2M-parameter MLP (4 layers of 1024x1024, Adam), arms interleaved in one process with the order
rotated every repeat; prints median step times and their ratio to the bare run. Machines are noisy:
only the ratios measured side by side in one run mean anything.

    .venv/bin/python benchmarks/overhead.py [--repeats 5] [--steps 60] [--batch 512] [--threads 1]
"""

from __future__ import annotations

import argparse
import warnings

import torch

from _timing import MLP, OVERHEAD_ARMS, interleaved, ratio_table, size_arguments, synthetic_loader


def main() -> None:
    parser = size_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                            repeats=5, steps=60, warmup=10, batch=512, width=1024, depth=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a 2-core box steady)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    loader = synthetic_loader(args.width, args.batch, args.steps)
    n_params = sum(p.numel() for p in MLP(args.width, args.depth).parameters())
    times = interleaved(OVERHEAD_ARMS, lambda: MLP(args.width, args.depth), loader, args.repeats, args.steps, args.warmup,
                        accelerator="cpu", devices=1)
    print(f"{n_params / 1e6:.1f}M parameters, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats x {args.steps - args.warmup - 1} timed steps per arm")
    print(ratio_table(times, "bare"))


if __name__ == "__main__":
    main()
