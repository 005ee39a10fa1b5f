"""lrwatch demo: five short runs on scikit-learn's bundled digits, each with LRWatch attached.

- ``tuned``: SGD+momentum, lr 0.05, StepLR halving every 150 steps — at most a short ``lr_too_high`` just
  before the first halving (a drop would pay soon, and the schedule's own halving comes), and at the last
  step a ``decay_too_aggressive``: at 1/8 of its peak lr the loss still falls at ~70% of the rate the steps
  promise, so the run ends lr-limited (more steps, or a slower decay, would still pay).
- ``too_high``: lr 0.15, StepLR drop only at step 450 — the loss sits on a high noise floor until the drop
  (``lr_too_high`` most of the way), then falls to ~0 within a few dozen steps.
- ``too_high_early_drop``: the same run with ``EarlyStepDrop()`` at its defaults — it waits until the loss has
  made no new low for a long horizon as well, then takes the scheduled drop early (at step 301 of 600), so
  the run spends its last half at the lower lr (on this run the full-data loss ends ~75x lower).
- ``diverging``: lr 1.0 with momentum 0.9 (an effective step of 10), StepLR drop only at step 450 — the
  loss explodes within a few dozen steps (``diverging``, flagged while the values are still finite).
- ``too_aggressive``: ExponentialLR with α = 0.97 per step — the lr collapses before the loss has
  converged (``decay_too_aggressive``).

Writes TensorBoard logs under LOGDIR (default ``runs/``), prints what LRWatch found, then runs
``lrwatch report`` on the logs and saves its figure. About a minute on a laptop CPU.

    python examples/demo.py [--logdir runs] [--steps 600]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import lrwatch
from lrwatch._lightning import pl

RUNS = {
    # name: (lr, scheduler factory); every run is SGD with momentum 0.9, scheduler stepped per step
    "tuned": (0.05, lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=150, gamma=0.5)),
    "too_high": (0.15, lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=450, gamma=0.1)),
    "too_high_early_drop": (0.15, lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=450, gamma=0.1)),
    "diverging": (1.0, lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=450, gamma=0.1)),
    "too_aggressive": (0.05, lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.97)),
}


class DigitsClassifier(pl.LightningModule):
    def __init__(self, lr: float, make_scheduler):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        self.lr, self.make_scheduler = lr, make_scheduler

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.make_scheduler(opt), "interval": "step"}}


def digits_loader(batch_size: int = 32) -> DataLoader:
    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    data = TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train five short runs with LRWatch attached.")
    parser.add_argument("--logdir", default="runs", help="TensorBoard log folder (default: runs)")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message="EarlyStepDrop at step")  # printed below with the diagnoses
    root = Path(args.logdir) / "demo"
    shutil.rmtree(root, ignore_errors=True)
    for name, (lr, make_scheduler) in RUNS.items():
        watch = lrwatch.LRWatch(warn=False)
        acting = [lrwatch.EarlyStepDrop()] if name.endswith("early_drop") else []
        trainer = pl.Trainer(
            max_steps=args.steps, accelerator="cpu", devices=1, callbacks=[watch, *acting],
            logger=pl.loggers.TensorBoardLogger(str(root), name=name, version=""),
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )
        trainer.fit(DigitsClassifier(lr, make_scheduler), digits_loader())
        report = watch.report
        drops = ", ".join(f"{s} (x{f:.2f})" for s, f in zip(report.schedule.drops, report.schedule.factors)) or "none"
        print(f"\n[{name}] lr {lr}: schedule {report.schedule.kind}, drops {drops}")
        for d in report.diagnoses:
            span = f"{d.start}-{d.end if d.end is not None else 'end'}"
            print(f"  {d.kind} (steps {span}): {d.message}")
        if not report.diagnoses:
            print("  no diagnosis")
        for action in (a for callback in acting for a in callback.actions):
            print(f"  EarlyStepDrop at step {action.step}: {action.reason}; lr now {action.lr:.3g}")

    from lrwatch.cli import main as lrwatch_cli

    figure = root / "report.png"
    print(f"\n$ lrwatch report {root} --plot {figure}")
    code = lrwatch_cli(["report", str(root), "--plot", str(figure)])
    print(f"\nLogs: {root}/<run>/  Figure: {figure}")
    print(f"Live view: tensorboard --logdir {root}")
    return code


if __name__ == "__main__":
    sys.exit(main())
