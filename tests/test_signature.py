"""lrwatch.signature: the lr read exactly (against torch's own schedulers), the displacement read alone
under realistic minibatch noise and drift, a real SGD run, streaming exactness, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from lrwatch.signature import KINDS, Signature, SignatureTracker, signature

torch.set_num_threads(1)
STEPS = 1200


def torch_lrs(make_scheduler, steps: int = STEPS, lr: float = 0.1) -> np.ndarray:
    """The lr of each optimizer step under a torch scheduler: the reference the signature must read."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(lrs)


def step_lr(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=400, gamma=0.1)


def multistep_lr(opt):
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[500, 900], gamma=0.2)


def half_step_lr(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=300, gamma=0.5)


def exponential_lr(alpha):
    return lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=alpha)


def cosine_lr(opt):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS, eta_min=1e-4)


def warmup_step_lr(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / 200) * 0.1 ** (t // 600))


def constant_lr(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)


def displacement(lr: np.ndarray, cv: float, seed: int, drift: float = 0.7) -> np.ndarray:
    """m_t = lr_t * |g_t|: a gradient norm drifting down to ``drift`` of its start over the run, under
    lognormal minibatch noise of coefficient of variation ``cv`` (mean 1)."""
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(np.log(1 + cv**2))
    return lr * drift ** (np.arange(len(lr)) / len(lr)) * rng.lognormal(-sigma**2 / 2, sigma, len(lr))


# -- the lr, read exactly -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, kind, drops, factor",
    [(step_lr, "step", [400, 800], 0.1), (multistep_lr, "step", [500, 900], 0.2),
     (half_step_lr, "step", [300, 600, 900], 0.5)],
)
def test_step_schedules_are_read_exactly_from_the_lr(make, kind, drops, factor):
    lr = torch_lrs(make)
    found = signature(lr=lr)
    assert (found.kind, found.drops, found.source, found.rate) == (kind, drops, "lr", None)
    assert found.factors == pytest.approx([factor] * len(drops), rel=1e-12)
    bounds = [0, *drops]
    assert found.segments == list(zip(bounds, [d - 1 for d in drops] + [STEPS - 1]))


@pytest.mark.parametrize("alpha", [0.99, 0.999])
def test_exponential_is_read_exactly_from_the_lr(alpha):
    found = signature(lr=torch_lrs(exponential_lr(alpha)))
    assert (found.kind, found.drops, found.segments) == ("exponential", [], [])
    assert found.rate == pytest.approx(alpha, rel=1e-12)


def test_exponential_survives_float32_logging():
    lr = torch_lrs(exponential_lr(0.995)).astype(np.float32).astype(np.float64)
    assert signature(lr=lr).kind == "exponential"


def test_constant_cosine_and_warmup_from_the_lr():
    constant = signature(lr=torch_lrs(constant_lr))
    assert (constant.kind, constant.drops, constant.segments) == ("constant", [], [(0, STEPS - 1)])
    cosine = signature(lr=torch_lrs(cosine_lr))
    assert (cosine.kind, cosine.drops) == ("other", [])
    warmup = signature(lr=torch_lrs(warmup_step_lr))  # rises, then a plateau and a drop: "other" with the drop
    assert (warmup.kind, warmup.drops) == ("other", [600])
    assert warmup.factors == pytest.approx([0.1], rel=1e-12)
    assert (199, 599) in warmup.segments  # the warmup reaches full lr at step 199


def test_drops_are_reported_in_steps_when_steps_are_sparse():
    lr = torch_lrs(step_lr)[::5]
    found = signature(lr=lr, steps=np.arange(0, STEPS, 5))
    assert found.drops == [400, 800]
    assert found.segments == [(0, 395), (400, 795), (800, 1195)]


@pytest.mark.parametrize(
    "lr, kind",
    [([], "constant"), ([0.1], "constant"), ([0.1, 0.1], "constant"), ([0.1, 0.05], "other"),
     ([0.1, 0.2], "other"), ([np.nan, 0.1], "other"), ([0.0, 0.0, 0.0], "constant")],
)
def test_short_lr_series(lr, kind):
    found = signature(lr=lr)
    assert (found.kind, found.drops, found.factors) == (kind, [], [])


@pytest.mark.parametrize("m", [[], [0.3], [0.3, 0.1], [np.nan, np.inf]])
def test_short_displacement_series_never_claim_a_drop(m):
    found = signature(m)
    assert found.kind in ("constant", "other") and found.drops == []


def test_two_consecutive_falls_are_not_a_step():
    lr = np.r_[np.full(10, 1.0), 0.5, 0.25, np.full(10, 0.25)]
    found = signature(lr=lr)
    assert (found.kind, found.drops) == ("other", [])


# -- the displacement alone -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, cv, drops, factor, tolerance",
    [(step_lr, 0.5, [400, 800], 0.1, 0.25), (step_lr, 0.3, [400, 800], 0.1, 0.15),
     (multistep_lr, 0.5, [500, 900], 0.2, 0.25), (half_step_lr, 0.3, [300, 600, 900], 0.5, 0.15)],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_drops_are_found_in_a_noisy_displacement(make, cv, drops, factor, tolerance, seed):
    found = signature(displacement(torch_lrs(make), cv, seed))
    assert (found.kind, found.source) == ("step", "displacement")
    assert len(found.drops) == len(drops)
    assert np.abs(np.array(found.drops) - drops).max() <= 3
    assert found.factors == pytest.approx([factor] * len(drops), rel=tolerance)
    assert found.segments[0][0] == 0 and found.segments[-1][1] == STEPS - 1


@pytest.mark.parametrize("alpha", [0.995, 0.999])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exponential_decay_is_found_in_a_noisy_displacement(alpha, seed):
    found = signature(displacement(torch_lrs(exponential_lr(alpha)), 0.5, seed))
    assert (found.kind, found.drops) == ("exponential", [])
    # the displacement's rate also holds the gradient's drift (0.7 over the run: 3e-4 per step)
    assert found.rate == pytest.approx(alpha * 0.7 ** (1 / STEPS), abs=1e-3)


@pytest.mark.parametrize(
    "make, cv, kind",
    [(constant_lr, 0.5, "constant"), (constant_lr, 0.2, "constant"), (cosine_lr, 0.3, "other"),
     (cosine_lr, 0.5, "other"), (warmup_step_lr, 0.3, "other")],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_other_shapes_in_a_noisy_displacement(make, cv, kind, seed):
    found = signature(displacement(torch_lrs(make), cv, seed))
    assert found.kind == kind
    if kind == "constant":
        assert found.drops == [] and found.segments == [(0, STEPS - 1)]


def _fall_at_200(span: int) -> np.ndarray:
    """A 10x fall of the level starting at sample 200, geometric over ``span`` samples (1: a step)."""
    t = np.arange(500)
    return np.exp(np.clip((t - 200 + 1) / span, 0, 1) * np.log(0.1))


@pytest.mark.parametrize("cv", [0.05, 0.2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_gradual_fall_is_not_read_as_a_drop(cv, seed):
    """The gradient's own falls take tens of steps (a too-high lr settling into a minimum); a schedule's
    drop moves the displacement from one step to the next. The same 10x fall, over 30 samples or at once."""
    gradual = signature(displacement(_fall_at_200(30), cv, seed, drift=1.0))
    assert gradual.drops == [] and gradual.kind != "step"
    abrupt = signature(displacement(_fall_at_200(1), cv, seed, drift=1.0))
    assert (abrupt.kind, abrupt.drops) == ("step", [200])
    assert abrupt.factors == pytest.approx([0.1], rel=0.15)


LONG = 200_000


@pytest.mark.parametrize("seed", [0, 1])
def test_drops_in_a_long_noisy_run_are_not_buried_under_noise_shifts(seed):
    """30-sample windows alone find level shifts in the noise every few thousand samples (they read this
    run as "other"); confirmed on 90-sample windows, only the two real drops remain."""
    t = np.arange(LONG)
    lr = 0.1 * np.where(t >= 70_000, 0.1, 1.0) * np.where(t >= 140_000, 0.5, 1.0)
    found = signature(displacement(lr, 0.4, seed))
    assert (found.kind, found.source) == ("step", "displacement")
    assert len(found.drops) == 2 and np.abs(np.array(found.drops) - [70_000, 140_000]).max() <= 3
    assert found.factors == pytest.approx([0.1, 0.5], rel=0.15)


@pytest.mark.parametrize("cv", [0.4, 0.7])
def test_a_long_constant_run_of_pure_noise_reads_constant(cv):
    found = signature(displacement(np.full(LONG, 0.1), cv, seed=3, drift=1.0))
    assert (found.kind, found.drops, found.segments) == ("constant", [], [(0, LONG - 1)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drops_near_either_end_of_the_run_are_found(seed):
    """Near the start the wide windows hold only the samples there are; a drop 50 samples before the
    end is judged on the samples after it, before its 90-sample confirmation window is complete."""
    early = signature(displacement(np.r_[np.full(40, 0.1), np.full(40, 0.05), np.full(1120, 0.025)], 0.3, seed))
    assert (early.kind, early.drops) == ("step", [40, 80])
    late = displacement(np.where(np.arange(STEPS) >= 1150, 0.01, 0.1), 0.4, seed)
    assert signature(late).drops == [1150]
    assert signature(late[:1190]).drops == [1150]


def test_a_drop_judged_before_its_confirmation_window_fills_is_judged_again():
    """A dip of 40 samples reads as a drop while only the dip is seen after it; once the level is seen
    to come back, the wide windows reject it, and reading the result midway left no trace of it."""
    t = np.arange(STEPS)
    m = displacement(np.where((t >= 600) & (t < 640), 0.3, 1.0), 0.3, seed=0, drift=1.0)
    tracker = SignatureTracker()
    tracker.update(m[:650], None, t[:650])
    assert tracker.result().drops == [600]
    tracker.update(m[650:], None, t[650:])
    assert tracker.result() == signature(m)
    assert (signature(m).kind, signature(m).drops) == ("constant", [])


def test_a_real_sgd_run_with_step_lr_shows_its_drops_in_the_displacement():
    """Logistic regression on scikit-learn's digits with 30 % noisy labels, SGD (batch 16), StepLR
    dividing the lr by 10 every 400 steps; displacement ||w_t - w_{t-1}|| from the parameters."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / (x.std(0) + 1e-6), dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    y = torch.tensor(y)
    noisy = torch.rand(len(y), generator=generator) < 0.3
    y = torch.where(noisy, torch.randint(0, 10, (len(y),), generator=generator), y)
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=400, gamma=0.1)
    m = np.empty(STEPS)
    for t in range(STEPS):
        batch = torch.randint(0, len(y), (16,), generator=generator)
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
        scheduler.step()
        m[t] = (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()
    found = signature(m)
    assert found.kind == "step"
    assert np.abs(np.array(found.drops) - [400, 800]).max() <= 3
    assert found.factors == pytest.approx([0.1, 0.1], rel=0.3)


# -- streaming, robustness, output ----------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), cuts=st.lists(st.integers(1, 2999), max_size=40), with_lr=st.booleans())
def test_any_chunking_gives_the_same_signature(seed, cuts, with_lr):
    rng = np.random.default_rng(seed)
    lr = 0.1 * rng.choice([0.1, 0.3, 0.5]) ** (np.arange(3000) // rng.integers(200, 1000))
    m = displacement(lr, 0.5, seed)
    tracker = SignatureTracker()
    bounds = [0, *sorted(set(cuts)), 3000]
    for a, b in zip(bounds, bounds[1:]):
        tracker.update(m[a:b], lr[a:b] if with_lr else None, np.arange(a, b))
        if b in cuts[:5]:  # reading the result midway (drops still being confirmed) changes nothing
            assert tracker.result() == signature(m[:b], lr=lr[:b] if with_lr else None)
    assert tracker.result() == signature(m, lr=lr if with_lr else None)


finite_or_not = st.one_of(st.floats(min_value=0, allow_infinity=True), st.just(float("nan")))


@settings(max_examples=60, deadline=None)
@given(m=st.lists(finite_or_not, max_size=400), lr_given=st.booleans())
def test_never_raises_on_any_nonnegative_values(m, lr_given):
    found = signature(m, lr=m if lr_given else None)
    assert found.kind in KINDS and len(found.drops) == len(found.factors)
    json.dumps(found.to_dict(), allow_nan=False)


def test_to_dict_is_plain_json():
    found = signature(lr=torch_lrs(step_lr))
    assert json.loads(json.dumps(found.to_dict(), allow_nan=False)) == {
        "kind": "step", "drops": [400, 800], "factors": found.factors, "rate": None,
        "segments": [[0, 399], [400, 799], [800, 1199]], "source": "lr",
    }
    assert isinstance(found, Signature)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"displacement": [[0.1, 0.2]]}, "displacement"), ({"displacement": [0.1, -0.2]}, "displacement"),
     ({"displacement": [0.1, 0.2], "lr": [0.1]}, "lr"), ({"lr": [0.1, -1.0]}, "lr"),
     ({"displacement": "fast"}, "displacement"), ({"displacement": [0.1, 0.2], "steps": [3, 3]}, "steps"),
     ({"displacement": [0.1, 0.2], "steps": [0.5, 1.0]}, "steps"), ({"displacement": [0.1], "steps": [True]}, "steps"),
     ({"displacement": [0.1, 0.2], "steps": [0]}, "steps"), ({"displacement": [0.1], "drop_ratio": 1.5}, "drop_ratio"),
     ({"displacement": [0.1], "block": 0}, "block"), ({"displacement": [0.1], "drop_window": 97}, "drop_window"),
     ({"displacement": [0.1], "drop_window": 5}, "drop_window"), ({"displacement": [0.1], "rise_ratio": 1.0}, "rise_ratio"),
     ({"displacement": [0.1], "rise_ratio": True}, "rise_ratio"),
     ({"displacement": [0.1], "confirm_scale": 0}, "confirm_scale"), ({"displacement": [0.1], "jump_reach": 2.5}, "jump_reach"),
     ({"displacement": [0.1], "abrupt_reach": 0}, "abrupt_reach"), ({"displacement": [0.1], "abrupt_share": 1.5}, "abrupt_share")],
)
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        signature(**kwargs)
