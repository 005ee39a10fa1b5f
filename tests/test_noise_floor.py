"""lrwatch.noise_floor: the excess-loss estimate, and the windowed figures against an independent
least-squares fit on the block means."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrwatch.noise_floor import NoiseFloorWindow, block_summaries, excess_loss


def test_excess_loss_is_descent_over_four_one_minus_beta_and_unknown_beta_counts_as_plain_sgd():
    descent = np.array([0.4, 0.4, 0.4, -0.4])
    np.testing.assert_array_equal(excess_loss(descent, np.array([0.0, 0.5, np.nan, 0.0])), [0.1, 0.2, 0.1, -0.1])


def _reference(loss_means: np.ndarray, step_means: np.ndarray) -> tuple[float, float]:
    """Fall per step and its standard error from numpy's own least squares on block means against their steps."""
    x = step_means - step_means[0]
    (slope, _), cov = np.polyfit(x, loss_means, 1, cov="unscaled")
    residual = loss_means - np.polyval((slope, _), x)
    se = np.sqrt(cov[0, 0] * (residual @ residual) / (len(loss_means) - 2))
    return -slope, se


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), offset=st.sampled_from([0.0, 1e8]), cut=st.integers(1, 11),
       every=st.sampled_from([1, 10]), first_step=st.sampled_from([0, 10**6]))
def test_window_figures_equal_an_independent_fit_on_the_block_means_in_any_chunking(seed, offset, cut, every,
                                                                                   first_step):
    rng = np.random.default_rng(seed)
    block, k, n_blocks = 4, 5, 12
    steps = first_step + every * np.arange(n_blocks * block).reshape(n_blocks, block)  # every k-th step measured
    loss = offset + rng.normal(2.0, 0.3, (n_blocks, block)) - 0.001 * (steps - first_step)
    descent = rng.uniform(0.1, 1.0, (n_blocks, block))
    lr = np.ones((n_blocks, block))
    whole = NoiseFloorWindow(k, block, None).add(block_summaries(descent / 4, descent, loss, lr, steps))
    chunked = NoiseFloorWindow(k, block, None)
    first = chunked.add(block_summaries(*(a[:cut] for a in (descent / 4, descent, loss, lr, steps))))
    second = chunked.add(block_summaries(*(a[cut:] for a in (descent / 4, descent, loss, lr, steps))))
    for name in whole:
        np.testing.assert_array_equal(np.concatenate([first[name], second[name]]), whole[name])
    for end in range(n_blocks):  # window: the last min(k, end + 1) blocks
        means = loss[max(0, end - k + 1) : end + 1].mean(axis=1)
        assert whole["samples"][end] == len(means) * block
        assert whole["loss"][end] == pytest.approx(means.mean(), rel=1e-12)
        assert whole["descent"][end] == pytest.approx(descent[max(0, end - k + 1) : end + 1].mean(), rel=1e-12)
        if len(means) >= 3:
            fall, se = _reference(means, steps[max(0, end - k + 1) : end + 1].mean(axis=1))
            # an offset of 1e8 leaves ~1e-8 of rounding in each block mean: 1e-7 absolute covers it
            assert whole["fall"][end] == pytest.approx(fall, rel=1e-6, abs=1e-7)
            assert whole["fall_se"][end] == pytest.approx(se, rel=1e-6, abs=1e-7)


def test_the_window_restarts_after_the_lr_falls_and_skips_non_finite_blocks():
    block, k = 2, 4
    lr = np.repeat([[1.0], [1.0], [1.0], [0.1], [0.1], [0.1]], block, axis=1)
    lr[3, 0] = 1.0  # the drop lands inside block 3: that block (largest lr 1 > 2 x 0.1) is cut too
    loss = np.ones((6, block))
    steps = np.arange(6 * block).reshape(6, block)
    figures = NoiseFloorWindow(k, block, 0.5).add(block_summaries(loss, loss, loss, lr, steps))
    np.testing.assert_array_equal(figures["samples"], [2, 4, 6, 0, 2, 4])
    np.testing.assert_array_equal(figures["block_lr"], [1.0, 1.0, 1.0, 0.1, 0.1, 0.1])
    uncut = NoiseFloorWindow(k, block, None).add(block_summaries(loss, loss, loss, lr, steps))
    np.testing.assert_array_equal(uncut["samples"], [2, 4, 6, 8, 8, 8])
    loss[1, 1] = np.nan  # a block with a NaN loss ends every window that reaches back to it
    gapped = NoiseFloorWindow(k, block, None).add(block_summaries(loss, loss, loss, lr, steps))
    np.testing.assert_array_equal(gapped["samples"], [2, 0, 2, 4, 6, 8])
