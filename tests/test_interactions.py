"""interactions: transients, Adam's bias factor and the weight-decay fade rule, against simulations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrwatch.interactions import WeightDecayFade, adam_bias_factor, momentum_transients


def _momentum_sgd(lrs, beta, folded):
    """Displacement of momentum SGD on a constant unit gradient, lr inside or outside the buffer."""
    v, out = 0.0, []
    for lr in lrs:
        v = beta * v + (lr if folded else 1.0)
        out.append(v if folded else lr * v)
    return np.array(out)


def test_transient_is_one_for_lr_outside_the_buffer_and_beta_over_gamma_when_folded():
    lrs = np.array([0.1] * 200 + [0.01] * 20)
    steps = np.arange(1, 221)
    (step, outside), = momentum_transients(steps, _momentum_sgd(lrs, 0.9, folded=False), lrs)
    assert step == 201 and outside == pytest.approx(1.0, abs=1e-9)
    (_, folded), = momentum_transients(steps, _momentum_sgd(lrs, 0.9, folded=True), lrs)
    assert folded == pytest.approx(0.9 / 0.1 + 0.1, rel=1e-6)  # (beta*v + gamma*lr) / (gamma*v) at steady state


def test_transients_skip_drops_without_a_baseline_and_non_finite_values():
    lrs = np.array([1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.01])
    m = np.array([1.0, 1.0, 0.1, 0.1, 0.1, np.nan, 0.1, 0.1, 0.01])
    assert momentum_transients(np.arange(9), m, lrs) == []  # first drop too early; second has a NaN baseline


def test_adam_bias_factor_matches_uncorrected_adam_on_a_constant_gradient():
    beta1, beta2, m, v, steps = 0.9, 0.999, 0.0, 0.0, []
    for t in range(1, 50):
        m = beta1 * m + (1 - beta1)
        v = beta2 * v + (1 - beta2)
        steps.append(m / np.sqrt(v))
    np.testing.assert_allclose(adam_bias_factor(np.arange(1, 50), beta1, beta2), steps, rtol=1e-12)


def test_weight_decay_fade_flags_while_lr_times_wd_is_down_tenfold_with_wd_unchanged():
    steps = np.arange(1, 41)
    lr = np.where(steps <= 20, 0.1, 0.005)[:, None].repeat(2, 1)
    wd = np.array([[0.01, 0.0]] * 40)
    wd[30:, 0] = 0.2  # compensated from step 31 on: lr*wd back to its start
    rule = WeightDecayFade()
    for chunk in np.array_split(np.arange(40), 7):
        rule.update(steps[chunk], lr[chunk], wd[chunk])
    (d,) = rule.diagnoses
    assert (d.kind, d.start, d.end) == ("weight_decay_faded", 21, 30)
    assert d.evidence["ratio_to_start"] == pytest.approx(0.05)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=8), st.integers(0, 2))
def test_weight_decay_fade_is_chunking_invariant(cuts, seed):
    rng = np.random.default_rng(seed)
    n = 60
    lr = np.exp(-0.08 * np.arange(n))[:, None] * np.array([[0.1, 0.05]])
    wd = np.where(rng.random((n, 2)) < 0.1, 0.02, 0.01)
    whole = WeightDecayFade()
    whole.update(np.arange(n), lr, wd)
    chunked, start = WeightDecayFade(), 0
    for size in cuts * 10:
        chunked.update(np.arange(n)[start:start + size], lr[start:start + size], wd[start:start + size])
        start += size
    chunked.update(np.arange(n)[start:], lr[start:], wd[start:])
    assert chunked.diagnoses == whole.diagnoses


def test_bad_fade():
    with pytest.raises(ValueError, match="fade"):
        WeightDecayFade(fade=1.0)


def test_weight_decay_fade_of_a_group_added_later_counts_from_its_own_first_step():
    """Group 1 joins at step 4 (NaN before, in a wider chunk): its reference is its own first lr·wd, not NaN."""
    fade = WeightDecayFade(fade=10.0)
    fade.update(np.arange(1, 4), np.full((3, 1), 1.0), np.full((3, 1), 0.1))
    lr = np.array([[1.0, np.nan], [1.0, 0.5], [1.0, 0.2], [1.0, 0.04]])
    fade.update(np.arange(4, 8), lr, np.where(np.isnan(lr), np.nan, 0.1))
    [d] = fade.diagnoses
    assert (d.start, d.end, d.evidence["group"]) == (7, None, 1.0)
    assert d.evidence["ratio_to_start"] == pytest.approx(0.04 / 0.5)
