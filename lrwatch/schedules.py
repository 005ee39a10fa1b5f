"""Closed-form mathematics of step and exponential lr decay (numpy only).

Steps ``t`` are optimizer steps counted from 0 (Adam's bias-correction step counts from 1), and
learning rates are in the optimizer's own units. Every function accepts a Python scalar or a numpy
array: a scalar in gives a Python ``float`` out, an array in gives an ``ndarray`` of the broadcast
shape out. Bad input raises ``ValueError`` naming the argument and echoing the value.

Definitions (DESIGN.md):

* step decay         eta_t = eta0 * gamma ** floor(t / T)
* exponential decay  eta_t = eta0 * exp(-rate * t) = eta0 * alpha ** t,   alpha = exp(-rate)
* matched per period gamma = exp(-rate * T), so log eta_step - log eta_exp = rate * (t mod T) in [0, rate*T)
* stability on a quadratic: a direction of curvature a contracts under gradient descent iff eta_t * a < 2
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

_STABILITY_THRESHOLD = 2.0
"""Gradient descent on a quadratic of curvature a contracts iff lr * a is below this (|1 - lr*a| < 1)."""


# --------------------------------------------------------------------------- validation


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _scalar(name: str, value) -> float:
    """A finite real scalar as float."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def _positive(name: str, value) -> float:
    """A finite scalar > 0."""
    number = _scalar(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def _open_unit(name: str, value) -> float:
    """A scalar in the open interval (0, 1): a per-drop or per-step decay factor."""
    number = _scalar(name, value)
    if not 0.0 < number < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return number


def _beta(name: str, value) -> float:
    """A momentum / moment-averaging coefficient in [0, 1)."""
    number = _scalar(name, value)
    if not 0.0 <= number < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return number


def _count(name: str, value, minimum: int) -> int:
    """An integer >= minimum (bools are rejected)."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _steps(name: str, value, minimum: int) -> np.ndarray:
    """An int or an integer array of steps, every entry >= minimum, as an int64 ndarray."""
    if _is_int(value):
        steps = np.asarray(int(value), dtype=np.int64)
    else:
        steps = np.asarray(value)
        if steps.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an int or an integer array, got {value!r}")
        steps = steps.astype(np.int64)
    if steps.size and steps.min() < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return steps


def _reals(name: str, value, *, lower: float | None = None, strict: bool = True) -> np.ndarray:
    """A real scalar or array, finite, optionally bounded below (strictly or not), as float ndarray."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be real, got {value!r}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number or array, got {value!r}") from None
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if lower is not None:
        bad = array <= lower if strict else array < lower
        if np.any(bad):
            relation = ">" if strict else ">="
            raise ValueError(f"{name} must be {relation} {lower:g}, got {value!r}")
    return array


def _typed(name: str, value, *kinds: type):
    """``value`` itself, if it is an instance of one of ``kinds``."""
    if not isinstance(value, kinds):
        raise ValueError(f"{name} must be a {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    return value


def _out(result: np.ndarray, *inputs) -> float | np.ndarray:
    """A Python float when every input was a scalar, else the ndarray."""
    if all(np.ndim(x) == 0 for x in inputs):
        return float(result)
    return np.asarray(result, dtype=np.float64)


# --------------------------------------------------------------------------- schedules


@dataclass(frozen=True)
class StepDecay:
    """Step decay eta_t = eta0 * gamma ** floor(t / period): the lr is multiplied by ``gamma`` every
    ``period`` steps (torch's ``StepLR``). ``eta0`` > 0 in lr units, ``gamma`` in (0, 1), ``period``
    an integer >= 1 in steps."""

    eta0: float
    gamma: float
    period: int

    def __post_init__(self):
        object.__setattr__(self, "eta0", _positive("eta0", self.eta0))
        object.__setattr__(self, "gamma", _open_unit("gamma", self.gamma))
        object.__setattr__(self, "period", _count("period", self.period, 1))

    @classmethod
    def from_half_life(cls, eta0: float, h: int) -> StepDecay:
        """The step schedule that halves every ``h`` steps: period = h, gamma = 1/2."""
        return cls(eta0, 0.5, _count("h", h, 1))

    def __call__(self, t) -> float | np.ndarray:
        """The lr at step t (int >= 0 or integer array)."""
        steps = _steps("t", t, 0)
        return _out(self.eta0 * self.gamma ** (steps // self.period), steps)

    def log_lr(self, t) -> float | np.ndarray:
        """log eta_t, computed without forming eta_t, so it stays finite where eta_t underflows."""
        steps = _steps("t", t, 0)
        return _out(math.log(self.eta0) + (steps // self.period) * math.log(self.gamma), steps)

    @property
    def half_life(self) -> int:
        """The first step t with eta_t <= eta0 / 2: period * ceil(log(1/2) / log(gamma))."""
        return self.period * math.ceil(math.log(0.5) / math.log(self.gamma))


@dataclass(frozen=True)
class ExponentialDecay:
    """Exponential decay eta_t = eta0 * exp(-rate * t) = eta0 * alpha ** t (torch's ``ExponentialLR``
    with gamma = alpha). ``eta0`` > 0 in lr units, ``rate`` > 0 per step."""

    eta0: float
    rate: float

    def __post_init__(self):
        object.__setattr__(self, "eta0", _positive("eta0", self.eta0))
        object.__setattr__(self, "rate", _positive("rate", self.rate))

    @classmethod
    def from_half_life(cls, eta0: float, h: float) -> ExponentialDecay:
        """The exponential schedule whose lr halves every ``h`` steps (h > 0): rate = ln 2 / h."""
        return cls(eta0, math.log(2.0) / _positive("h", h))

    @property
    def alpha(self) -> float:
        """Per-step multiplicative factor exp(-rate), in (0, 1)."""
        return math.exp(-self.rate)

    @property
    def half_life(self) -> float:
        """Steps for the lr to halve: ln 2 / rate (a real number; the schedule is continuous in t)."""
        return math.log(2.0) / self.rate

    def __call__(self, t) -> float | np.ndarray:
        """The lr at step t (int >= 0 or integer array)."""
        steps = _steps("t", t, 0)
        return _out(self.eta0 * np.exp(-self.rate * steps), steps)

    def log_lr(self, t) -> float | np.ndarray:
        """log eta_t = log eta0 - rate * t, finite where eta_t underflows."""
        steps = _steps("t", t, 0)
        return _out(math.log(self.eta0) - self.rate * steps, steps)


# --------------------------------------------------------------------------- matching


def match_endpoint(step_decay: StepDecay, epochs: int) -> ExponentialDecay:
    """The exponential schedule (same eta0) that gives the same lr as ``step_decay`` at step E.

    ``epochs`` is E, the step index at which the two must agree, counted in the unit in which the
    schedules advance t (epochs for a scheduler stepped once per epoch, optimizer steps otherwise),
    and typically the length of training. E must be an integer >= period, so at least one drop has
    taken effect; otherwise the step lr is still eta0 and no decaying exponential matches it.

    Solving eta0 * gamma ** floor(E/T) = eta0 * exp(-rate * E) gives rate = -floor(E/T) * ln(gamma) / E.
    When E is a multiple of T this is -ln(gamma) / T, independent of E, and equals
    ``match_per_period``; otherwise the exponential is slightly slower (it meets the step schedule's
    last plateau at E rather than the next drop)."""
    step_decay = _typed("step_decay", step_decay, StepDecay)
    end = _count("epochs", epochs, step_decay.period)
    rate = -(end // step_decay.period) * math.log(step_decay.gamma) / end
    return ExponentialDecay(step_decay.eta0, rate)


def match_per_period(step_decay: StepDecay) -> ExponentialDecay:
    """The exponential schedule (same eta0) that loses exactly a factor gamma per period:
    gamma = exp(-rate * T), i.e. rate = -ln(gamma) / T. The two agree at every drop step kT."""
    step_decay = _typed("step_decay", step_decay, StepDecay)
    return ExponentialDecay(step_decay.eta0, -math.log(step_decay.gamma) / step_decay.period)


def log_gap(step_decay: StepDecay, exp_decay: ExponentialDecay, t) -> float | np.ndarray:
    """log eta_step(t) - log eta_exp(t) (natural log; > 0 where the step schedule's lr is higher).

    For a pair matched by ``match_per_period`` it equals rate * (t mod T), which lies in
    [0, rate * T): the step schedule is never below the exponential, and at most a factor
    1/gamma above it, just before each drop. Computed in the log domain, so it stays finite for
    any t."""
    step_decay = _typed("step_decay", step_decay, StepDecay)
    exp_decay = _typed("exp_decay", exp_decay, ExponentialDecay)
    steps = _steps("t", t, 0)
    return _out(np.asarray(step_decay.log_lr(steps)) - np.asarray(exp_decay.log_lr(steps)), steps)


# --------------------------------------------------------------------------- stability


def stability_ceiling(lr) -> float | np.ndarray:
    """2 / lr: the largest curvature (Hessian eigenvalue, in 1 / (lr unit)) that gradient descent
    at this lr still contracts on a quadratic. ``lr`` > 0, scalar or array."""
    rates = _reals("lr", lr, lower=0.0)
    return _out(_STABILITY_THRESHOLD / rates, lr)


def first_contraction_step(schedule: StepDecay | ExponentialDecay, curvature: float, max_steps: int) -> int | None:
    """The smallest step t in [0, max_steps) at which eta_t * curvature < 2, i.e. from which a
    direction of this curvature is contracted by gradient descent, or None if there is none.

    ``curvature`` > 0 (an eigenvalue of the loss Hessian). ``max_steps`` >= 1. The schedule is
    evaluated at every step, so cost and memory are O(max_steps); the inequality is strict, so a
    direction with eta_t * curvature == 2 exactly (|1 - eta_t a| = 1, neutral) does not count."""
    schedule = _typed("schedule", schedule, StepDecay, ExponentialDecay)
    curvature = _positive("curvature", curvature)
    horizon = _count("max_steps", max_steps, 1)
    contracting = np.flatnonzero(np.asarray(schedule(np.arange(horizon))) * curvature < _STABILITY_THRESHOLD)
    return int(contracting[0]) if contracting.size else None


def discretization_divergence(
    a: float, w0: float, step_decay: StepDecay, exp_decay: ExponentialDecay, n: int
) -> float:
    """|w_n| under the step schedule divided by |w_n| under the exponential one, for gradient
    descent on the quadratic 1/2 * a * w**2 from w0 for n steps: w_{t+1} = (1 - eta_t * a) * w_t.

    Both runs start from the same w0 (nonzero, finite), so w0 cancels and the ratio is
    prod_{t<n} |1 - eta^step_t a| / |1 - eta^exp_t a|; it is summed in the log domain, so it stays
    finite where each |w_n| alone would underflow or overflow. A ratio > 1 means the step schedule
    has left more of w0 (is slower to converge, or diverged faster). ``a`` > 0 is the curvature,
    ``n`` >= 1. If some step lands exactly on eta_t * a == 1 (w jumps to 0) the ratio is 0 or inf,
    and nan if both runs do."""
    curvature = _positive("a", a)
    _scalar("w0", w0)
    if w0 == 0:
        raise ValueError(f"w0 must be nonzero (both runs would stay at 0), got {w0!r}")
    step_decay = _typed("step_decay", step_decay, StepDecay)
    exp_decay = _typed("exp_decay", exp_decay, ExponentialDecay)
    steps = np.arange(_count("n", n, 1))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_step = np.sum(np.log(np.abs(1.0 - np.asarray(step_decay(steps)) * curvature)))
        log_exp = np.sum(np.log(np.abs(1.0 - np.asarray(exp_decay(steps)) * curvature)))
        return float(np.exp(log_step - log_exp))


# --------------------------------------------------------------------------- noise


def escape_probability(barrier, lr, c) -> float | np.ndarray:
    """Arrhenius factor exp(-barrier / (c * lr)) for SGD leaving a basin over a loss barrier.

    Model: near a minimum, SGD with step lr and gradient noise of covariance sigma**2 * I behaves
    like overdamped Langevin dynamics with time step lr and temperature tau = c * lr, c = sigma**2 / 2
    (loss units per lr unit; for minibatch noise sigma**2 is the per-example gradient variance
    divided by the batch size). Kramers' escape rate over a barrier of height ``barrier`` (loss units,
    >= 0) is then nu * exp(-barrier / tau) per unit time, nu = sqrt(U''(min) |U''(saddle)|) / (2 pi),
    i.e. nu * lr * exp(-barrier / (c * lr)) per step.

    This returns the exponential factor alone, which is the per-step probability when the
    attempt prefactor nu * lr is taken as 1 (one attempt per step), and is always in [0, 1].
    Assumptions: isotropic, state-independent Gaussian noise; lr small enough that SGD tracks the
    continuous dynamics (lr * U'' << 1); a high barrier (barrier >> tau, Kramers' regime, where the
    factor is small); quasi-equilibrium inside the basin. Ratios between lrs are what it predicts
    best: the prefactor cancels up to its factor lr. ``lr`` > 0 and ``c`` > 0; all three broadcast."""
    height = _reals("barrier", barrier, lower=0.0, strict=False)
    rates = _reals("lr", lr, lower=0.0)
    scale = _reals("c", c, lower=0.0)
    return _out(np.exp(-height / (scale * rates)), barrier, lr, c)


# --------------------------------------------------------------------------- optimizer state


def momentum_steady_state(lr, grad, beta: float) -> float | np.ndarray:
    """The fixed point lr * grad / (1 - beta) of the SGD momentum buffer v_t = beta v_{t-1} + lr * grad
    under a constant gradient: the per-step displacement heavy-ball momentum settles at. ``lr`` > 0,
    ``grad`` finite (scalar or array, same units as the gradient), ``beta`` in [0, 1). After an lr drop
    the buffer still holds the old level and relaxes to the new one at rate beta per step."""
    rates = _reals("lr", lr, lower=0.0)
    gradient = _reals("grad", grad)
    return _out(rates * gradient / (1.0 - _beta("beta", beta)), lr, grad)


def inverse_weight_decay(schedule: StepDecay | ExponentialDecay, wd0: float):
    """A function t -> wd0 * eta_0 / eta_t: the decoupled (AdamW) weight-decay coefficient that keeps
    the per-step shrink eta_t * lambda_w(t) equal to eta_0 * wd0 while the lr decays.

    AdamW multiplies the weights by (1 - eta_t * lambda_w) each step, so with a fixed lambda_w the
    pull towards zero fades with the lr; this schedule holds it constant. ``wd0`` >= 0 (per lr unit,
    as passed to AdamW). The returned function takes an int or an integer array of steps >= 0 and
    returns a float or an ndarray; it grows as 1/eta_t and reaches inf where eta_t underflows."""
    schedule = _typed("schedule", schedule, StepDecay, ExponentialDecay)
    base = _scalar("wd0", wd0)
    if base < 0:
        raise ValueError(f"wd0 must be >= 0, got {wd0!r}")

    def weight_decay(t) -> float | np.ndarray:
        with np.errstate(over="ignore"):
            return _out(base * np.exp(schedule.log_lr(0) - np.asarray(schedule.log_lr(t))), t)

    return weight_decay


def _moment_fill(beta: float, steps: np.ndarray) -> np.ndarray:
    """1 - beta**t: the fraction of a constant signal an exponential average started at 0 holds at step t."""
    return 1.0 - np.power(beta, steps)


def adam_effective_step(t, lr, beta1: float, beta2: float) -> float | np.ndarray:
    """S_t = lr_t * (1 - beta1**t) / sqrt(1 - beta2**t): Adam's per-coordinate step without bias
    correction, for a constant gradient g started from zero moments (eps = 0).

    Derivation: from m_0 = v_0 = 0 and a constant g, m_t = (1 - beta1**t) g and
    v_t = (1 - beta2**t) g**2, so the uncorrected update lr_t * m_t / sqrt(v_t) is
    S_t * sign(g). This is the formula DESIGN.md writes as S_t ∝ eta_t (1-beta1^t)(1-beta2^t)^(-1/2).
    Standard Adam (torch's default) divides m by (1 - beta1**t) and v by (1 - beta2**t), which
    cancels both factors exactly: its step is lr_t * sign(g), with no transient. The factor
    (1 - beta1**t) / sqrt(1 - beta2**t) is therefore the lr scale that bias correction removes; it
    starts at (1 - beta1) / sqrt(1 - beta2) at t = 1 and tends to 1 (for 0.9, 0.999: 3.16 at t = 1,
    a peak of 6.57 at t = 12, 1.26 at t = 1000).

    ``t`` is the 1-based step count (an int >= 1 or an integer array); ``lr`` > 0 is a scalar or an
    array broadcastable against ``t`` (the lr at each t); ``beta1``, ``beta2`` in [0, 1)."""
    steps = _steps("t", t, 1)
    rates = _reals("lr", lr, lower=0.0)
    b1, b2 = _beta("beta1", beta1), _beta("beta2", beta2)
    try:
        result = rates * _moment_fill(b1, steps) / np.sqrt(_moment_fill(b2, steps))
    except ValueError:
        raise ValueError(f"lr must broadcast against t (shape {steps.shape}), got shape {rates.shape}") from None
    return _out(result, t, lr)


def constant_effective_step_rate(beta1: float, beta2: float, steps: int) -> float:
    """The rate lambda for which lr_t = exp(-lambda t) holds ``adam_effective_step`` most nearly
    constant over t = 1..steps, in the least-squares sense on the log scale.

    log S_t = -lambda t + log f(t) with f(t) = (1 - beta1**t) / sqrt(1 - beta2**t); minimising
    sum_t (log S_t - mean)**2 over lambda is the ordinary least-squares slope of log f(t) against t,
    so lambda = cov(t, log f) / var(t). A negative lambda is a growing lr (f falls over the window,
    as it does for beta2 > beta1 once the first moment has filled). ``steps`` >= 2 (a slope needs
    two points); ``beta1``, ``beta2`` in [0, 1)."""
    b1, b2 = _beta("beta1", beta1), _beta("beta2", beta2)
    t = np.arange(1, _count("steps", steps, 2) + 1, dtype=np.float64)
    log_factor = np.log(_moment_fill(b1, t)) - 0.5 * np.log(_moment_fill(b2, t))
    centred = t - t.mean()
    return float(np.dot(centred, log_factor - log_factor.mean()) / np.dot(centred, centred))
