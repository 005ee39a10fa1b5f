"""How much loss an lr's gradient noise holds the run at, from the measured descent (numpy only).

Near a minimum, minibatch noise keeps the weights bouncing in a ball whose size grows with the lr,
and the loss sits above its minimum by an *excess* that the lr sets. For SGD on a locally quadratic
loss with gradient-noise covariance C the stationary excess is E[L − L*] ≈ η·tr(C)/4; heavy-ball
momentum β multiplies it by 1/(1 − β), and an Adam-style preconditioner P replaces tr(C) by tr(PC).
The same noise makes each update promise a first-order decrease of its own minibatch loss, the
*descent* d_t = −⟨w_t − w_{t−1}, g_t⟩, with E[d_t] ≈ η'·tr(PC), where η' is the lr times the weight
of the current gradient in the momentum average (1 for SGD, 1 − dampening for torch's SGD, 1 − β₁ for
Adam's normalised average). In both formulations the two combine to

    excess ≈ mean(d_t) / (4 (1 − β)),

β being the momentum average's coefficient (0 for plain SGD). StepMeter measures d_t exactly at every
step (`lrwatch.measure`), so the excess is read off the run without knowing the curvature or the noise.

Dropping the lr 10× removes about nine tenths of that excess (``DROP_GAIN``) within a few relaxation
times. Keeping it keeps the loss falling at its current rate. So the lr is what holds training back
where the excess is a large share of the loss *and* a drop would gain more than the loss falls over a
horizon of H steps at its current rate: ``DROP_GAIN · excess ≥ H · fall``. That is the ``lr_too_high``
rule of `lrwatch.diagnosis`. While the run still descends fast, d_t also contains the true decrease
η‖∇L‖² and the excess estimate is inflated, but then the fall is large too, so the comparison holds
the lr; a high lr that still makes progress (as a well-tuned one early in training) is left alone.

The estimate is a small-lr, near-quadratic approximation: far from a minimum, at the edge of stability
or on a loss with no minimum (separable data under cross-entropy) it is only a scale, which is why the
rule also demands a stalled loss.
"""

from __future__ import annotations

import numpy as np

from lrwatch.signature import Tail

DROP_GAIN = 0.9
"""Share of the excess loss a 10× lr drop removes (the excess is proportional to the lr)."""


def excess_loss(descent: np.ndarray, momentum: np.ndarray) -> np.ndarray:
    """Per-sample excess-loss estimate d_t / (4 (1 − β_t)) in loss units; shapes (n,).

    An unknown (NaN) β counts as 0, the plain-SGD case, which underestimates the excess of a
    momentum optimizer (so the rule flags less, never more)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return descent / (4.0 * (1.0 - np.where(np.isnan(momentum), 0.0, momentum)))


def _block_means(blocks: np.ndarray) -> np.ndarray:
    """Mean of each row of ``blocks`` (n_blocks, block) by a fixed-order sum, so chunking never
    changes it; NaN where a row holds a NaN."""
    with np.errstate(invalid="ignore", over="ignore"):
        total = blocks[:, 0].copy()
        for j in range(1, blocks.shape[1]):
            total += blocks[:, j]
        return total / blocks.shape[1]


def block_summaries(excess: np.ndarray, descent: np.ndarray, loss: np.ndarray, lr: np.ndarray,
                    steps: np.ndarray) -> dict[str, np.ndarray]:
    """Per-block summaries the windows are built from, each (n_blocks,): the means of excess, descent,
    loss and step, and the block's least and largest lr. Arguments: complete blocks, each (n_blocks,
    block); ``steps`` the optimizer step of each sample (samples need not be consecutive steps, e.g. a
    run measured every k-th step). Computed once per block however many windows use them."""
    with np.errstate(all="ignore"):
        return {"excess": _block_means(excess), "descent": _block_means(descent), "loss": _block_means(loss),
                "step": _block_means(steps), "lr_low": np.min(lr, axis=1), "lr_high": np.max(lr, axis=1)}


class NoiseFloorWindow:
    """Windowed loss and descent figures at each block end, over the blocks since the lr last fell.

    A window is the last ``blocks_per_window`` blocks, cut to those after the latest block whose
    largest lr is above ``1 / lr_fall_fraction`` times the current block's smallest (so the samples of
    an earlier, higher lr never speak for the current one; None: never cut), and to a contiguous run of
    blocks whose loss and descent are finite. Unknown lr (NaN) never cuts. State: the last few block
    summaries.
    """

    def __init__(self, blocks_per_window: int, block: int, lr_fall_fraction: float | None):
        self.k, self.block, self.fall = blocks_per_window, block, lr_fall_fraction
        self.tails = {name: Tail(self.k - 1) for name in ("excess", "descent", "loss", "step", "lr_low", "lr_high")}

    def assume_consecutive_steps(self, last_step: float) -> None:
        """Give a window pickled before windows kept their blocks' mean steps the steps of consecutive blocks
        of consecutive samples ending at ``last_step``: right for a run measured at every step; for one
        measured every k-th step the fall is off until the window has moved past the resume."""
        if "step" not in self.tails:
            keep = len(self.tails["loss"].values)
            self.tails["step"] = Tail(keep)
            self.tails["step"].values = last_step - (self.block - 1) / 2 - self.block * np.arange(keep - 1, -1, -1.0)

    def add(self, summaries: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Take the `block_summaries` of new complete blocks; figures at their ends:

        samples: samples in the window (0 where none); excess_loss, loss, descent: their means over it;
        excess_fraction: excess_loss / loss; fall: the loss's fall per optimizer step (minus the slope
        of the least-squares line through the block means against the blocks' mean steps, so a run
        measured every k-th step gets the same figure; NaN under two blocks); fall_se: its standard
        error from the residuals about that line (NaN under three blocks); block_lr: the block's own
        least lr.
        """
        joined = {name: self.tails[name].extend(values) for name, values in summaries.items()}
        n_new = len(summaries["loss"])
        current = slice(self.k - 1, self.k - 1 + n_new)
        lr_floor = joined["lr_low"][current]
        included = np.ones(n_new, dtype=bool)
        masks = []
        count, s_x, s_y, s_excess, s_descent = (np.zeros(n_new) for _ in range(5))
        with np.errstate(all="ignore"):
            for lag in range(self.k):  # fixed order: exact under any chunking
                at = slice(self.k - 1 - lag, self.k - 1 - lag + n_new)
                loss_mean, descent_mean = joined["loss"][at], joined["descent"][at]
                included &= np.isfinite(loss_mean) & np.isfinite(descent_mean) & np.isfinite(joined["excess"][at])
                if self.fall is not None:
                    included &= ~(joined["lr_high"][at] * self.fall > lr_floor)
                masks.append(included.copy())
                count += included
                s_x += np.where(included, joined["step"][at], 0.0)
                s_y += np.where(included, loss_mean, 0.0)
                s_excess += np.where(included, joined["excess"][at], 0.0)
                s_descent += np.where(included, descent_mean, 0.0)
            mean_x, mean_loss, mean_excess, mean_descent = s_x / count, s_y / count, s_excess / count, s_descent / count
            # least squares on deviations from the means (a second pass: no cancellation of large sums)
            s_xx, s_xy, s_yy = (np.zeros(n_new) for _ in range(3))
            for lag, mask in enumerate(masks):
                at = slice(self.k - 1 - lag, self.k - 1 - lag + n_new)
                dx, dy = joined["step"][at] - mean_x, joined["loss"][at] - mean_loss
                s_xx += np.where(mask, dx * dx, 0.0)
                s_xy += np.where(mask, dx * dy, 0.0)
                s_yy += np.where(mask, dy * dy, 0.0)
            slope = s_xy / s_xx  # loss per step
            residual = np.maximum(s_yy - slope * s_xy, 0.0)
            slope_se = np.sqrt(residual / (count - 2) / s_xx)
            enough = count >= 2
            return {
                "block_lr": summaries["lr_low"],
                "samples": count * self.block,
                "excess_loss": np.where(count > 0, mean_excess, np.nan),
                "loss": np.where(count > 0, mean_loss, np.nan),
                "descent": np.where(count > 0, mean_descent, np.nan),
                "excess_fraction": np.where((count > 0) & (mean_loss > 0), mean_excess / mean_loss, np.nan),
                "fall": np.where(enough, -slope, np.nan),
                "fall_se": np.where(count >= 3, slope_se, np.nan),
            }
