"""Overhead of ``StabilityProbe`` on a CPU run: bare Lightning fit vs the same fit with the probe.

Interleaves the two variants in one process (bare, probed, probed, bare, ...) so that drifts in machine load
hit both alike, and prints the ratio of the median total ``trainer.fit`` times (goal: <= 1.05 at the default
interval), in wall time and in this process's CPU time (the steadier figure on a shared machine: one torch
thread, data loading in-process). It also prints the time spent inside the probe's hook and what one probe
costs in bare training steps, from which the overhead at any interval follows: cost / every_n_steps.

Model: a 64 -> hidden -> 10 tanh MLP on scikit-learn's bundled digits, SGD, one thread. The default (hidden 64,
batch 64) is dominated by Lightning's per-step overhead; ``--hidden 1024 --batch-size 512`` is compute-bound,
where a probe costs more steps.

    python benchmarks/stability_overhead.py [--steps 2000] [--repeats 5] [--every-n-steps N] [--hidden 64]
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import time
import warnings

import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from lrwatch._lightning import pl
from lrwatch.callbacks.stability import StabilityProbe


class DigitsMLP(pl.LightningModule):
    def __init__(self, hidden: int):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def digits_loader(batch_size: int) -> DataLoader:
    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    data = TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))


class TimedProbe(StabilityProbe):
    """StabilityProbe that adds up the wall time spent in its hook."""

    seconds = 0.0
    products = 0  # Hessian-vector products over all probes

    def on_train_batch_end(self, *args) -> None:
        start = time.perf_counter()
        super().on_train_batch_end(*args)
        self.seconds += time.perf_counter() - start

    def _sharpness(self, *args):
        sharpness, negative, n_iters = super()._sharpness(*args)
        self.products += n_iters
        return sharpness, negative, n_iters


def timed_fit(steps: int, hidden: int, batch_size: int, probe: StabilityProbe | None) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one ``trainer.fit`` of ``steps`` optimizer steps."""
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[] if probe is None else [probe],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model, loader = DigitsMLP(hidden), digits_loader(batch_size)
    gc.collect()  # the previous fit's garbage is not charged to this one
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, loader)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per fit")
    parser.add_argument("--repeats", type=int, default=5, help="fits per variant, interleaved")
    parser.add_argument("--every-n-steps", type=int, default=StabilityProbe().every_n_steps, help="probe interval")
    parser.add_argument("--hidden", type=int, default=64, help="MLP width")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)

    timed_fit(50, args.hidden, args.batch_size, None)  # warm-up: first-call costs
    bare, probed, in_probe, products = [], [], [], []
    for repeat in range(args.repeats):
        for variant in ("bare", "probed") if repeat % 2 == 0 else ("probed", "bare"):  # ABBA: no order bias
            probe = TimedProbe(every_n_steps=args.every_n_steps) if variant == "probed" else None
            times = timed_fit(args.steps, args.hidden, args.batch_size, probe)
            if probe is None:
                bare.append(times)
            else:
                probed.append(times)
                in_probe.append(probe.seconds)
                products.append(probe.products)

    def median(runs, i):
        return statistics.median(run[i] for run in runs)

    n_probes = args.steps // args.every_n_steps
    per_probe = statistics.median(in_probe) / max(n_probes, 1)
    step_time = median(bare, 0) / args.steps
    print(
        f"MLP 64-{args.hidden}-10, batch {args.batch_size}, {args.steps} steps per fit, probe every "
        f"{args.every_n_steps} steps ({n_probes} probes), {args.repeats} interleaved repeats"
    )
    print(f"bare   wall {', '.join(f'{w:.2f}' for w, _ in bare)} s; cpu {', '.join(f'{c:.2f}' for _, c in bare)} s")
    print(f"probed wall {', '.join(f'{w:.2f}' for w, _ in probed)} s; cpu {', '.join(f'{c:.2f}' for _, c in probed)} s")
    print(
        f"one probe: {statistics.mean(products) / max(n_probes, 1):.1f} Hessian-vector products, "
        f"{1e3 * per_probe:.1f} ms = {per_probe / step_time:.1f} bare steps "
        f"({1e3 * step_time:.2f} ms each); inside the probe: {statistics.median(in_probe) / median(bare, 0):.1%} "
        f"of the bare fit"
    )
    print(f"cpu-time ratio (median probed / median bare): {median(probed, 1) / median(bare, 1):.3f}")
    print(f"overhead ratio (median probed / median bare wall time): {median(probed, 0) / median(bare, 0):.3f}"
          f"  (goal <= 1.05)")


if __name__ == "__main__":
    main()
