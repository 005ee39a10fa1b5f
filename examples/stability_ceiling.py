"""Cross the stability ceiling on purpose, then let a scheduled lr drop bring the run back under it.

Least-squares regression of the digit label on scikit-learn's bundled 8x8 digits, full batch, plain SGD. The
loss is quadratic, so its sharpness is known exactly: λ_max = 2·λ_max(XᵀX/n), and gradient descent is stable
iff lr < 2/λ_max. The run starts at 1.1x that lr, so the component of the error along the sharpest direction
grows by |1 − lr·λ_max| = 1.2 per step and the loss climbs; a MultiStepLR drop (x0.5) at step 40 puts it at
0.55x the ceiling and the run recovers. ``lrwatch.StabilityProbe`` measures λ_max every 5 steps by power
iteration, flags ``above_stability_ceiling`` while lr·λ_max > 2, and logs everything to TensorBoard.

    python examples/stability_ceiling.py [--logdir runs/stability]
"""

from __future__ import annotations

import argparse
import logging
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import lrwatch
from lrwatch._lightning import pl

OVER_CEILING = 1.1  # starting lr as a multiple of the critical lr 2/λ_max
DROP_STEP, DROP_FACTOR = 40, 0.5
PROBE_EVERY, STEPS = 5, 100


def digits_regression() -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised features X (n, 64) and the centred digit label y (n,), float32."""
    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y - y.mean(), dtype=torch.float32)


class LeastSquares(pl.LightningModule):
    def __init__(self, n_features: int, lr: float):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(n_features, 1, bias=False)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[DROP_STEP], gamma=DROP_FACTOR)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def print_probes(log_dir: str, analytic_sharpness: float) -> None:
    """The probe's series as TensorBoard recorded them, next to the analytic sharpness and the loss."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir)
    events.Reload()
    series = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    loss = series["train_loss"]  # logged at step s: the loss at the weights after s updates, as probed at s
    print(" step  sharpness  rel.error  ceiling  ratio  flag  train_loss")
    for step, value in sorted(series["lrwatch/sharpness"].items()):
        print(
            f"{step:5d}  {value:9.4f}  {abs(value - analytic_sharpness) / analytic_sharpness:9.1e}  "
            f"{series['lrwatch/stability_ceiling'][step]:7.3f}  {series['lrwatch/sharpness_ratio'][step]:5.2f}  "
            f"{series['lrwatch/diagnosis/above_stability_ceiling'][step]:4.0f}  {format(loss[step], '10.4g') if step in loss else '':>10}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/stability", help="TensorBoard log directory")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)

    x, y = digits_regression()
    sharpness = 2 * np.linalg.eigvalsh((x.T @ x / len(x)).double().numpy())[-1]
    lr = OVER_CEILING * 2 / sharpness
    print(f"analytic sharpness λ_max = 2·λ_max(XᵀX/n) = {sharpness:.4f};"
          f" critical lr 2/λ_max = {2 / sharpness:.4f}")
    print(f"lr {lr:.4f} ({OVER_CEILING}x critical) until step {DROP_STEP}, then {lr * DROP_FACTOR:.4f}")

    probe = lrwatch.StabilityProbe(every_n_steps=PROBE_EVERY)
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=pl.loggers.TensorBoardLogger(args.logdir, name=""),
        callbacks=[probe, pl.callbacks.LearningRateMonitor(logging_interval="step")],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))  # full batch: the Hessian is the analytic one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the probe's one-time warning repeats what is printed below
        trainer.fit(LeastSquares(x.shape[1], lr), loader)

    print_probes(trainer.logger.log_dir, sharpness)
    if not probe.diagnoses:
        print("above_stability_ceiling: never flagged")
    for diagnosis in probe.diagnoses:
        ended = "still holds at the end" if diagnosis.end is None else f"ended after step {diagnosis.end}"
        print(f"{diagnosis.kind}: started at step {diagnosis.start}, {ended} (probes every {PROBE_EVERY} steps)")
        print(f"  {diagnosis.message}")
    print(f"tensorboard --logdir {args.logdir}")


if __name__ == "__main__":
    main()
