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

import lrwatch
from _timing import MLP, interleaved, ratio_table, synthetic_loader
from lrwatch._lightning import pl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a 2-core box steady)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    loader = synthetic_loader(args.width, args.batch, args.steps)
    n_params = sum(p.numel() for p in MLP(args.width, args.depth).parameters())
    arms = {
        "bare": lambda: [],
        "LearningRateMonitor": lambda: [pl.callbacks.LearningRateMonitor(logging_interval="step")],
        "LRWatch()": lambda: [lrwatch.LRWatch()],
        "LRWatch(every_n_steps=10)": lambda: [lrwatch.LRWatch(every_n_steps=10)],
    }
    times = interleaved(arms, lambda: MLP(args.width, args.depth), loader, args.repeats, args.steps, args.warmup,
                        accelerator="cpu", devices=1)
    print(f"{n_params / 1e6:.1f}M parameters, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats x {args.steps - args.warmup - 1} timed steps per arm")
    print(ratio_table(times, "bare"))


if __name__ == "__main__":
    main()
