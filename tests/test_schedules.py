"""lrwatch.schedules against independent step-by-step computations: schedules stepped like a torch
scheduler (multiply the lr when it is due), gradient descent, momentum and Adam moments iterated one
step at a time, SGD escape simulated with noise, least squares by numpy.polyfit and by a grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrwatch.schedules import (
    ExponentialDecay,
    StepDecay,
    adam_effective_step,
    constant_effective_step_rate,
    discretization_divergence,
    escape_probability,
    first_contraction_step,
    inverse_weight_decay,
    log_gap,
    match_endpoint,
    match_per_period,
    momentum_steady_state,
    stability_ceiling,
)

FAST = settings(max_examples=40, deadline=None)

eta0s = st.floats(1e-4, 10.0)
gammas = st.floats(0.05, 0.95)
periods = st.integers(1, 30)
rates = st.floats(1e-3, 1.0)
betas = st.floats(0.0, 0.999)


# ----------------------------------------------------------------------------- reference loops


def stepped_step_lrs(eta0: float, gamma: float, period: int, n: int) -> np.ndarray:
    """The lr at steps 0..n-1 of a StepLR-style scheduler: multiply by gamma whenever a period ends."""
    lrs, lr = [], eta0
    for t in range(n):
        if t > 0 and t % period == 0:
            lr *= gamma
        lrs.append(lr)
    return np.array(lrs)


def stepped_exp_lrs(eta0: float, alpha: float, n: int) -> np.ndarray:
    """The lr at steps 0..n-1 of an ExponentialLR-style scheduler: multiply by alpha every step."""
    lrs, lr = [], eta0
    for _ in range(n):
        lrs.append(lr)
        lr *= alpha
    return np.array(lrs)


def gd_log2_abs(a: float, w0: float, lrs) -> float:
    """log2 |w_n| of gradient descent w <- (1 - lr a) w, renormalising the mantissa every step so
    that nothing underflows (exact float arithmetic on the mantissa, exponent kept as an int)."""
    w, exponent = w0, 0
    for lr in lrs:
        w = (1.0 - lr * a) * w
        if w == 0.0:
            return -math.inf
        w, e = math.frexp(w)
        exponent += e
    return math.log2(abs(w)) + exponent


def adam_run(lrs, grad: float, beta1: float, beta2: float, bias_correction: bool) -> np.ndarray:
    """Adam's per-step update (eps = 0) for a constant gradient, one step at a time from zero moments."""
    m = v = 0.0
    updates = []
    for t, lr in enumerate(lrs, start=1):
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        if bias_correction:
            updates.append(lr * (m / (1 - beta1**t)) / math.sqrt(v / (1 - beta2**t)))
        else:
            updates.append(lr * m / math.sqrt(v))
    return np.array(updates)


# ----------------------------------------------------------------------------- schedules


@FAST
@given(eta0s, gammas, periods, st.integers(1, 200))
def test_step_decay_matches_a_stepped_scheduler(eta0, gamma, period, n):
    schedule = StepDecay(eta0, gamma, period)
    expected = stepped_step_lrs(eta0, gamma, period, n)
    np.testing.assert_allclose(schedule(np.arange(n)), expected, rtol=1e-12)
    np.testing.assert_allclose(schedule.log_lr(np.arange(n)), np.log(expected), rtol=1e-12, atol=1e-12)
    assert schedule(n - 1) == pytest.approx(expected[-1], rel=1e-12)


@FAST
@given(eta0s, rates, st.integers(1, 200))
def test_exponential_decay_matches_a_stepped_scheduler(eta0, rate, n):
    schedule = ExponentialDecay(eta0, rate)
    assert schedule.alpha == math.exp(-rate)
    expected = stepped_exp_lrs(eta0, schedule.alpha, n)
    np.testing.assert_allclose(schedule(np.arange(n)), expected, rtol=1e-11)
    np.testing.assert_allclose(schedule.log_lr(np.arange(n)), np.log(expected), rtol=1e-11, atol=1e-11)


def test_scalar_in_gives_float_out_and_array_in_gives_array_out():
    for schedule in (StepDecay(0.1, 0.5, 3), ExponentialDecay(0.1, 0.2)):
        assert type(schedule(4)) is float
        assert type(schedule(np.int32(4))) is float
        out = schedule(np.array([[0, 1], [2, 3]]))
        assert isinstance(out, np.ndarray) and out.shape == (2, 2)


def test_log_lr_stays_finite_where_the_lr_underflows():
    step, exp = StepDecay(1.0, 0.1, 1), ExponentialDecay(1.0, 1.0)
    assert step(400) == 0.0 and exp(800) == 0.0
    assert step.log_lr(400) == pytest.approx(400 * math.log(0.1))
    assert exp.log_lr(800) == pytest.approx(-800.0)


@FAST
@given(eta0s, gammas, periods)
def test_step_half_life_is_the_first_step_at_or_below_half(eta0, gamma, period):
    schedule = StepDecay(eta0, gamma, period)
    lrs = stepped_step_lrs(eta0, gamma, period, period * 20)
    first = int(np.flatnonzero(lrs <= eta0 / 2)[0])
    assert schedule.half_life == first


@FAST
@given(eta0s, st.integers(1, 50))
def test_step_from_half_life_halves_every_h_steps(eta0, h):
    schedule = StepDecay.from_half_life(eta0, h)
    assert (schedule.period, schedule.gamma, schedule.half_life) == (h, 0.5, h)
    lrs = schedule(np.arange(5 * h))
    np.testing.assert_array_equal(lrs, np.repeat(eta0 / 2.0 ** np.arange(5), h))


@FAST
@given(eta0s, st.integers(1, 200))
def test_exponential_from_half_life_halves_every_h_steps(eta0, h):
    schedule = ExponentialDecay.from_half_life(eta0, h)
    assert schedule.half_life == pytest.approx(h, rel=1e-12)
    lrs = stepped_exp_lrs(eta0, schedule.alpha, 3 * h + 1)
    np.testing.assert_allclose(lrs[[h, 2 * h, 3 * h]], eta0 * np.array([0.5, 0.25, 0.125]), rtol=1e-10)


def test_schedules_are_frozen():
    with pytest.raises(AttributeError):
        StepDecay(1.0, 0.5, 2).gamma = 0.1
    with pytest.raises(AttributeError):
        ExponentialDecay(1.0, 0.5).rate = 0.1


# ----------------------------------------------------------------------------- matching


def test_match_endpoint_worked_figure():
    matched = match_endpoint(StepDecay(1.0, 0.5, 10), 30)
    assert matched.rate == pytest.approx(0.0693, abs=5e-5)
    assert matched.rate == pytest.approx(math.log(2) / 10, rel=1e-12)
    assert matched.eta0 == 1.0


@FAST
@given(eta0s, gammas, periods, st.integers(0, 100))
def test_match_endpoint_gives_the_same_lr_at_step_e(eta0, gamma, period, extra):
    end = period + extra
    matched = match_endpoint(StepDecay(eta0, gamma, period), end)
    step_lr = stepped_step_lrs(eta0, gamma, period, end + 1)[end]
    exp_lr = stepped_exp_lrs(eta0, matched.alpha, end + 1)[end]
    assert exp_lr == pytest.approx(step_lr, rel=1e-9)
    if end % period == 0:
        assert matched.rate == pytest.approx(match_per_period(StepDecay(eta0, gamma, period)).rate, rel=1e-12)


@FAST
@given(eta0s, gammas, periods)
def test_match_per_period_loses_gamma_per_period(eta0, gamma, period):
    matched = match_per_period(StepDecay(eta0, gamma, period))
    exp_lrs = stepped_exp_lrs(eta0, matched.alpha, 4 * period + 1)
    step_lrs = stepped_step_lrs(eta0, gamma, period, 4 * period + 1)
    drops = np.arange(0, 4 * period + 1, period)
    np.testing.assert_allclose(exp_lrs[drops], step_lrs[drops], rtol=1e-10)


@FAST
@given(eta0s, gammas, periods, st.integers(1, 10))
def test_log_gap_of_matched_schedules_lies_in_zero_to_rate_times_period(eta0, gamma, period, n_periods):
    step = StepDecay(eta0, gamma, period)
    exp = match_per_period(step)
    t = np.arange(n_periods * period + 1)
    gap = log_gap(step, exp, t)
    literal = np.log(stepped_step_lrs(eta0, gamma, period, t.size)) - np.log(stepped_exp_lrs(eta0, exp.alpha, t.size))
    np.testing.assert_allclose(gap, literal, atol=1e-9)
    assert np.all(gap >= -1e-12)
    assert np.all(gap < exp.rate * period)
    # the bound is tight: the gap is 0 on each drop and largest just before the next one
    assert gap[period - 1] == pytest.approx(exp.rate * (period - 1), abs=1e-12)


def test_log_gap_is_finite_where_both_lrs_underflow():
    step = StepDecay(1.0, 0.01, 1)
    exp = match_per_period(step)
    assert step(10_000) == 0.0 and exp(10_000) == 0.0
    assert abs(log_gap(step, exp, 10_000)) < 1e-9
    assert type(log_gap(step, exp, 3)) is float


# ----------------------------------------------------------------------------- stability


@FAST
@given(st.floats(1e-4, 10.0))
def test_stability_ceiling_separates_contracting_from_expanding_curvature(lr):
    ceiling = stability_ceiling(lr)
    assert type(ceiling) is float
    assert abs(1 - lr * ceiling * (1 - 1e-6)) < 1  # one gradient step shrinks w just below the ceiling
    assert abs(1 - lr * ceiling * (1 + 1e-6)) > 1  # and grows it just above
    np.testing.assert_allclose(stability_ceiling(np.array([lr, 2 * lr])), [ceiling, ceiling / 2], rtol=1e-15)


def test_first_contraction_step_worked_figures():
    assert first_contraction_step(ExponentialDecay(1.0, 0.1), 2.5, 100) == 3
    assert first_contraction_step(StepDecay(1.0, 0.5, 10), 2.5, 100) == 10
    assert first_contraction_step(StepDecay(1.0, 0.5, 10), 2.5, 10) is None
    assert first_contraction_step(StepDecay(1.0, 0.5, 10), 1.0, 5) == 0
    # lr * a == 2 exactly for t < 10: |1 - lr a| == 1, neutral, not contracting
    assert first_contraction_step(StepDecay(1.0, 0.5, 10), 2.0, 100) == 10


def schedule_and_simulated_lrs(params: tuple, n: int):
    """A StepDecay for (eta0, gamma, period), an ExponentialDecay for (eta0, rate), with its first n lrs
    from the step-by-step simulation."""
    if len(params) == 3:
        return StepDecay(*params), stepped_step_lrs(*params, n)
    schedule = ExponentialDecay(*params)
    return schedule, stepped_exp_lrs(params[0], schedule.alpha, n)


@FAST
@given(st.one_of(st.tuples(eta0s, gammas, periods), st.tuples(eta0s, rates)), st.floats(0.01, 1e3), st.integers(1, 300))
def test_first_contraction_step_matches_gradient_descent_loop(params, curvature, max_steps):
    schedule, lrs = schedule_and_simulated_lrs(params, max_steps)
    # contraction of gradient descent along this direction: one step shrinks |w|, |1 - lr a| < 1
    expected = next((t for t, lr in enumerate(lrs) if abs(1 - lr * curvature) < 1), None)
    found = first_contraction_step(schedule, curvature, max_steps)
    if found != expected:  # closed form and stepped loop may round apart only on the knife edge lr*a == 2
        edge = min(t for t in (found, expected) if t is not None)
        assert math.isclose(lrs[edge] * curvature, 2.0, rel_tol=1e-9)


@FAST
@given(
    st.floats(0.01, 50.0),
    st.floats(-10.0, 10.0).filter(lambda w: abs(w) > 1e-3),
    eta0s,
    gammas,
    periods,
    rates,
    st.integers(1, 300),
)
def test_discretization_divergence_matches_gradient_descent_loops(a, w0, eta0, gamma, period, rate, n):
    step, exp = StepDecay(eta0, gamma, period), ExponentialDecay(eta0, rate)
    log2_step = gd_log2_abs(a, w0, stepped_step_lrs(eta0, gamma, period, n))
    log2_exp = gd_log2_abs(a, w0, stepped_exp_lrs(eta0, exp.alpha, n))
    ratio = discretization_divergence(a, w0, step, exp, n)
    assert type(ratio) is float
    if math.isinf(log2_step) or math.isinf(log2_exp):
        return  # a step landed exactly on lr*a == 1 in the loop; covered by the exact-zero test
    expected_log = (log2_step - log2_exp) * math.log(2)
    if expected_log > 709:  # at the top of float64's range (exp overflows at ~709.78) or beyond
        assert ratio > 1e307
    else:  # small ratios may be subnormal or 0 (exp underflows below ~-745): absolute tolerance there
        assert ratio == pytest.approx(math.exp(expected_log), rel=1e-6, abs=1e-300)


def test_discretization_divergence_survives_underflow_of_both_runs():
    step, exp = StepDecay(0.3, 0.9, 1000), ExponentialDecay(0.3, 1e-4)
    a, n = 1.0, 6000
    step_lrs, exp_lrs = stepped_step_lrs(0.3, 0.9, 1000, n), stepped_exp_lrs(0.3, exp.alpha, n)
    w_step, w_exp = 1.0, 1.0
    for lr_s, lr_e in zip(step_lrs, exp_lrs):
        w_step, w_exp = (1 - lr_s * a) * w_step, (1 - lr_e * a) * w_exp
    assert w_step < 1e-300 and w_exp < 1e-300  # both literal runs are lost in underflow
    expected = 2.0 ** (gd_log2_abs(a, 1.0, step_lrs) - gd_log2_abs(a, 1.0, exp_lrs))
    assert 0.0 < expected < math.inf
    assert discretization_divergence(a, 1.0, step, exp, n) == pytest.approx(expected, rel=1e-6)


def test_discretization_divergence_exact_zero():
    # eta_0 * a == 1: the first step sends w to 0 exactly under both schedules (0/0 -> nan),
    # and under the step schedule only once the exponential has moved off it.
    assert math.isnan(discretization_divergence(2.0, 1.0, StepDecay(0.5, 0.5, 3), ExponentialDecay(0.5, 0.1), 4))
    assert discretization_divergence(1.0, 1.0, StepDecay(2.0, 0.5, 1), ExponentialDecay(2.0, 0.1), 3) == 0.0


# ----------------------------------------------------------------------------- noise


def sgd_escape_rate(lr: float, sigma: float, steps: int, walkers: int = 2000, seed: int = 0) -> float:
    """Per-step rate at which SGD with Gaussian gradient noise sigma, started in the left well of
    U(x) = (x**2 - 1)**2 (barrier 1 at x = 0), first crosses the barrier: -log(survivors) / steps."""
    rng = np.random.default_rng(seed)
    x = -np.ones(walkers)
    inside = np.ones(walkers, dtype=bool)
    for _ in range(steps):
        x = x - lr * (4 * x * (x * x - 1) + sigma * rng.standard_normal(walkers))
        inside &= x < 0
    return -math.log(inside.mean()) / steps


def test_escape_probability_predicts_simulated_sgd_escape_across_lrs():
    # temperature of SGD with noise sigma is lr * sigma**2 / 2, so c = sigma**2 / 2; barrier/(c lr) = 4 and 3
    sigma, barrier = math.sqrt(20.0), 1.0
    c = sigma**2 / 2
    low, high = 1 / (4 * c), 1 / (3 * c)
    measured = sgd_escape_rate(high, sigma, 800) / sgd_escape_rate(low, sigma, 2500)
    # per-step rate = (attempt frequency * lr) * exp(-barrier / (c lr)); the frequency cancels
    predicted = high / low * escape_probability(barrier, high, c) / escape_probability(barrier, low, c)
    assert predicted == pytest.approx(math.e * 4 / 3, rel=1e-12)
    assert measured == pytest.approx(predicted, rel=0.15)


@FAST
@given(st.floats(0.0, 50.0), st.floats(0.0, 50.0), st.floats(1e-3, 10.0), st.floats(1e-3, 10.0))
def test_escape_probability_is_a_boltzmann_factor(b1, b2, lr, c):
    p1, p2 = escape_probability(b1, lr, c), escape_probability(b2, lr, c)
    assert type(p1) is float and 0.0 <= p1 <= 1.0
    assert escape_probability(b1 + b2, lr, c) == pytest.approx(p1 * p2, rel=1e-9, abs=1e-300)
    assert escape_probability(0.0, lr, c) == 1.0
    # a larger lr (hotter noise) never makes escape less likely; a higher barrier never more
    assert escape_probability(b1, 2 * lr, c) >= p1
    assert escape_probability(b1 + 1.0, lr, c) <= p1


def test_escape_probability_broadcasts():
    out = escape_probability(np.array([[0.0], [1.0]]), np.array([0.5, 1.0]), 2.0)
    np.testing.assert_allclose(out, [[1.0, 1.0], [math.exp(-1.0), math.exp(-0.5)]], rtol=1e-15)


# ----------------------------------------------------------------------------- optimizer state


@FAST
@given(st.floats(1e-4, 10.0), st.floats(-100.0, 100.0), st.floats(0.0, 0.99))
def test_momentum_steady_state_is_the_buffer_fixed_point(lr, grad, beta):
    v = 0.0
    for _ in range(4000):  # 0.99**4000 < 1e-17
        v = beta * v + lr * grad
    assert momentum_steady_state(lr, grad, beta) == pytest.approx(v, rel=1e-9, abs=1e-12)
    both = momentum_steady_state(np.array([lr, lr]), np.array([grad, 2 * grad]), beta)
    np.testing.assert_allclose(both, [v, 2 * v], rtol=1e-9, atol=1e-12)


@FAST
@given(st.one_of(st.tuples(eta0s, gammas, periods), st.tuples(eta0s, rates)), st.floats(0.0, 1.0), st.integers(1, 100))
def test_inverse_weight_decay_keeps_the_adamw_shrink_constant(params, wd0, n):
    schedule, lrs = schedule_and_simulated_lrs(params, n)
    weight_decay = inverse_weight_decay(schedule, wd0)
    coefficients = weight_decay(np.arange(n))
    shrinks = [1 - lr * coefficient for lr, coefficient in zip(lrs, coefficients)]  # AdamW's decoupled decay
    np.testing.assert_allclose(shrinks, 1 - params[0] * wd0, rtol=1e-9, atol=1e-12)
    assert type(weight_decay(0)) is float and weight_decay(0) == pytest.approx(wd0, rel=1e-15)


def test_inverse_weight_decay_worked_figure():
    weight_decay = inverse_weight_decay(StepDecay(0.1, 0.1, 10), 0.01)
    np.testing.assert_allclose(weight_decay(np.array([0, 9, 10, 25])), [0.01, 0.01, 0.1, 1.0], rtol=1e-12)


@FAST
@given(betas, st.floats(0.0, 0.9999), st.floats(-5.0, 5.0).filter(lambda g: abs(g) > 1e-3), st.integers(1, 300))
def test_adam_effective_step_is_the_uncorrected_adam_update(beta1, beta2, grad, n):
    lrs = stepped_exp_lrs(1e-3, 0.99, n)
    t = np.arange(1, n + 1)
    uncorrected = adam_run(lrs, grad, beta1, beta2, bias_correction=False)
    np.testing.assert_allclose(adam_effective_step(t, lrs, beta1, beta2) * np.sign(grad), uncorrected, rtol=1e-9)
    # standard (bias-corrected) Adam cancels both factors: its step is the lr itself
    np.testing.assert_allclose(adam_run(lrs, grad, beta1, beta2, bias_correction=True) * np.sign(grad), lrs, rtol=1e-9)


def test_adam_effective_step_worked_figures():
    assert adam_effective_step(1, 1.0, 0.9, 0.999) == pytest.approx(0.1 / math.sqrt(0.001), rel=1e-12)  # 3.162...
    assert type(adam_effective_step(1, 1.0, 0.9, 0.999)) is float
    assert adam_effective_step(100_000, 0.5, 0.9, 0.999) == pytest.approx(0.5, rel=1e-12)
    assert adam_effective_step(3, 2.0, 0.0, 0.0) == 2.0  # no averaging: the update is lr * sign(g)


def log_uncorrected_adam_factor(beta1: float, beta2: float, steps: int) -> np.ndarray:
    """log of the simulated uncorrected Adam step at lr 1, unit gradient, t = 1..steps."""
    return np.log(np.abs(adam_run(np.ones(steps), 1.0, beta1, beta2, bias_correction=False)))


@FAST
@given(st.floats(0.0, 0.99), st.floats(0.0, 0.9999), st.integers(2, 400))
def test_constant_effective_step_rate_is_the_polyfit_slope(beta1, beta2, steps):
    slope = np.polyfit(np.arange(1, steps + 1), log_uncorrected_adam_factor(beta1, beta2, steps), 1)[0]
    assert constant_effective_step_rate(beta1, beta2, steps) == pytest.approx(slope, rel=1e-6, abs=1e-12)


def test_constant_effective_step_rate_minimises_the_spread_of_simulated_adam_steps():
    beta1, beta2, steps = 0.9, 0.999, 2000
    t = np.arange(steps)

    def log_spread(rate):
        return np.var(np.log(adam_run(np.exp(-rate * t), 1.0, beta1, beta2, bias_correction=False)))

    grid = np.linspace(-3e-3, 3e-3, 121)  # spacing 5e-5
    best = grid[np.argmin([log_spread(rate) for rate in grid])]
    found = constant_effective_step_rate(beta1, beta2, steps)
    assert found < 0  # the uncorrected step falls after the first moment fills, so the lr must grow
    assert abs(found - best) <= 5e-5
    assert log_spread(found) <= min(log_spread(best), log_spread(0.0))


# ----------------------------------------------------------------------------- bad input

STEP, EXP = StepDecay(1.0, 0.5, 10), ExponentialDecay(1.0, 0.1)

BAD_CALLS = [
    (lambda: StepDecay(0.0, 0.5, 10), "eta0", "0.0"),
    (lambda: StepDecay(float("nan"), 0.5, 10), "eta0", "nan"),
    (lambda: StepDecay(1.0, 1.0, 10), "gamma", "1.0"),
    (lambda: StepDecay(1.0, 0.0, 10), "gamma", "0.0"),
    (lambda: StepDecay(1.0, 0.5, 0), "period", "0"),
    (lambda: StepDecay(1.0, 0.5, 2.5), "period", "2.5"),
    (lambda: StepDecay(1.0, 0.5, True), "period", "True"),
    (lambda: StepDecay.from_half_life(1.0, 0), "h", "0"),
    (lambda: StepDecay.from_half_life(-1.0, 3), "eta0", "-1.0"),
    (lambda: ExponentialDecay(-1.0, 0.1), "eta0", "-1.0"),
    (lambda: ExponentialDecay(1.0, 0.0), "rate", "0.0"),
    (lambda: ExponentialDecay(1.0, float("inf")), "rate", "inf"),
    (lambda: ExponentialDecay.from_half_life(1.0, -2.0), "h", "-2.0"),
    (lambda: STEP(-1), "t", "-1"),
    (lambda: STEP(1.5), "t", "1.5"),
    (lambda: EXP(np.array([0.0, 1.0])), "t", "array"),
    (lambda: EXP.log_lr(-3), "t", "-3"),
    (lambda: STEP.log_lr("3"), "t", "'3'"),
    (lambda: match_endpoint(STEP, 9), "epochs", "9"),
    (lambda: match_endpoint(STEP, 30.0), "epochs", "30.0"),
    (lambda: match_endpoint(EXP, 30), "step_decay", "ExponentialDecay"),
    (lambda: match_per_period("step"), "step_decay", "'step'"),
    (lambda: log_gap(STEP, STEP, 3), "exp_decay", "StepDecay"),
    (lambda: log_gap(EXP, EXP, 3), "step_decay", "ExponentialDecay"),
    (lambda: log_gap(STEP, EXP, -1), "t", "-1"),
    (lambda: stability_ceiling(0.0), "lr", "0.0"),
    (lambda: stability_ceiling(np.array([0.1, -0.1])), "lr", "-0.1"),
    (lambda: stability_ceiling(float("nan")), "lr", "nan"),
    (lambda: stability_ceiling("fast"), "lr", "'fast'"),
    (lambda: first_contraction_step(lambda t: 1.0, 2.5, 10), "schedule", "lambda"),
    (lambda: first_contraction_step(EXP, 0.0, 10), "curvature", "0.0"),
    (lambda: first_contraction_step(EXP, 2.5, 0), "max_steps", "0"),
    (lambda: discretization_divergence(-1.0, 1.0, STEP, EXP, 10), "a", "-1.0"),
    (lambda: discretization_divergence(1.0, 0.0, STEP, EXP, 10), "w0", "0.0"),
    (lambda: discretization_divergence(1.0, float("inf"), STEP, EXP, 10), "w0", "inf"),
    (lambda: discretization_divergence(1.0, 1.0, EXP, EXP, 10), "step_decay", "ExponentialDecay"),
    (lambda: discretization_divergence(1.0, 1.0, STEP, STEP, 10), "exp_decay", "StepDecay"),
    (lambda: discretization_divergence(1.0, 1.0, STEP, EXP, 0), "n", "0"),
    (lambda: escape_probability(-1.0, 0.1, 1.0), "barrier", "-1.0"),
    (lambda: escape_probability(1.0, 0.0, 1.0), "lr", "0.0"),
    (lambda: escape_probability(1.0, 0.1, -2.0), "c", "-2.0"),
    (lambda: momentum_steady_state(-0.1, 1.0, 0.9), "lr", "-0.1"),
    (lambda: momentum_steady_state(0.1, float("nan"), 0.9), "grad", "nan"),
    (lambda: momentum_steady_state(0.1, 1.0, 1.0), "beta", "1.0"),
    (lambda: momentum_steady_state(0.1, 1.0, -0.1), "beta", "-0.1"),
    (lambda: inverse_weight_decay(STEP, -0.01), "wd0", "-0.01"),
    (lambda: inverse_weight_decay(0.1, 0.01), "schedule", "0.1"),
    (lambda: inverse_weight_decay(STEP, 0.01)(-1), "t", "-1"),
    (lambda: adam_effective_step(0, 0.1, 0.9, 0.999), "t", "0"),
    (lambda: adam_effective_step(1, 0.0, 0.9, 0.999), "lr", "0.0"),
    (lambda: adam_effective_step(np.arange(1, 4), np.ones(2), 0.9, 0.999), "lr", "(2,)"),
    (lambda: adam_effective_step(1, 0.1, 1.0, 0.999), "beta1", "1.0"),
    (lambda: adam_effective_step(1, 0.1, 0.9, -0.5), "beta2", "-0.5"),
    (lambda: constant_effective_step_rate(0.9, 0.999, 1), "steps", "1"),
    (lambda: constant_effective_step_rate(1.5, 0.999, 10), "beta1", "1.5"),
    (lambda: constant_effective_step_rate(0.9, 1.0, 10), "beta2", "1.0"),
]


@pytest.mark.parametrize("call, name, echoed", BAD_CALLS)
def test_bad_input_raises_value_error_naming_the_argument(call, name, echoed):
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert message.startswith(name + " "), message
    assert echoed in message, message
