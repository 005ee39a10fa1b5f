"""lrwatch.diagnosis: hand-computed cases, one real tiny training run per rule (plain torch) with the
counterfactual that makes the flag right, clean runs left alone, the properties (never raises,
causal, scale-free, chunking-free) and bad input."""

from __future__ import annotations

import functools
import json
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from lrwatch.diagnosis import RULES, Analyzer, Diagnosis, Report, Thresholds, analyze

torch.set_num_threads(1)

SMALL = {"block": 5, "window": 50, "diverge_window": 10, "diverge_hold": 20, "drop_window": 50}
"""Short windows, so the rules decide within the few hundred steps of a property-test example."""


# -- hand-computed cases ----------------------------------------------------------------------------
def test_a_flat_loss_held_by_the_noise_floor_is_lr_too_high_from_the_first_short_window():
    # loss flat at 1, descent 0.5 under momentum 0.5: excess 0.5 / (4 * 0.5) = 0.25 of the loss, below
    # 0.3; under momentum 0.75 it is 0.5: flagged at the end of the third block (noise_min_samples 30)
    flat = {"displacement": np.ones(400), "loss": np.ones(400), "descent": np.full(400, 0.5)}
    assert analyze(**flat, momentum=0.5).diagnoses == []
    [d] = analyze(**flat, momentum=np.full(400, 0.75)).diagnoses
    assert (d.kind, d.start, d.end) == ("lr_too_high", 29, None)
    assert d.evidence == {"excess_fraction": 0.5, "excess_loss": 0.5, "loss": 1.0, "descent": 0.5,
                          "fall": 0.0, "samples": 30.0}
    assert "lr drop forward" in d.message and "0.5 above its floor, 50% of the loss" in d.message
    assert "the loss falls 0 a step" in d.message
    [d] = analyze(**{**flat, "descent": np.full(400, 2.0)}, momentum=0.75).diagnoses  # excess 2x the loss
    assert "2.0x the loss itself" in d.message
    # without momentum (plain SGD) the same descent gives 0.125: not flagged
    assert analyze(**flat).diagnoses == []


def test_a_loss_still_falling_fast_is_not_a_noise_floor():
    # loss falls 0.5 % a step; the descent is 0.15 of it under momentum 0.9: excess 0.375 of the loss,
    # a drop would gain 0.9 * 0.375 = 0.34 of it, less than the 100 steps' fall at 0.5 % a step (~0.5);
    # over a horizon of 50 steps (~0.25 of it) the drop pays
    loss = np.exp(-0.005 * np.arange(300))
    falling = {"displacement": np.ones(300), "loss": loss, "descent": 0.15 * loss, "momentum": 0.9}
    assert analyze(**falling).diagnoses == []
    [d] = analyze(**falling, noise_horizon=50).diagnoses
    assert d.kind == "lr_too_high" and d.start == 29
    assert 0.004 < d.evidence["fall"] / d.evidence["loss"] < 0.006


def test_the_noise_window_restarts_after_an_lr_drop():
    # descent 2 at lr 1 for 100 steps, then 0.02 at lr 0.1: the drop ends the flag at once (its last
    # step is 99, the last at lr 1), and the high-lr samples no longer count in the windows after it
    lr = np.where(np.arange(300) < 100, 1.0, 0.1)
    run = {"displacement": lr, "loss": np.ones(300), "lr": lr, "descent": np.where(lr == 1.0, 2.0, 0.02)}
    [d] = analyze(**run).diagnoses
    assert (d.kind, d.start, d.end) == ("lr_too_high", 29, 99)
    # a drop inside a block (at 105) ends it at 104 although the block's decision would hold to 109
    lr = np.where(np.arange(300) < 105, 1.0, 0.1)
    [d] = analyze(**{**run, "lr": lr, "descent": np.where(lr == 1.0, 2.0, 0.02)}).diagnoses
    assert (d.kind, d.start, d.end) == ("lr_too_high", 29, 104)
    # the same descents with a constant lr: the high-descent samples keep the window's mean up until
    # they have left it (50 samples, the noise_window): the flag lasts well past the change
    [d] = analyze(**{**run, "lr": np.ones(300), "descent": np.where(lr == 1.0, 2.0, 0.02)}).diagnoses
    assert d.end > 130


def test_collapse_of_the_lr_while_the_loss_improves_is_decay_too_aggressive():
    # m falls 1000x at step 300 while the gradient stays at 1 and the loss, falling linearly until
    # then, goes flat. The windowed loss is 1 from block 35 (its window's median block is flat), so
    # the best loss of windows ending 2 windows earlier is 1 from block 55: the flag starts at 559.
    t = np.arange(600)
    report = analyze(np.where(t < 300, 1.0, 0.001), loss=np.where(t < 300, 2 - t / 300, 1.0), grad_norm=np.ones(600))
    [d] = report.diagnoses
    assert (d.kind, d.start, d.end) == ("decay_too_aggressive", 559, None)
    assert (d.evidence["displacement_fraction"], d.evidence["grad_fraction"]) == (0.001, 1.0)
    assert d.evidence["gain_before"] > 0.1
    # the same collapse with a gradient that shrank with it is the gradient's doing, not the lr's
    shrinking = analyze(np.where(t < 300, 1.0, 0.001), loss=np.where(t < 300, 2 - t / 300, 1.0),
                        grad_norm=np.where(t < 300, 1.0, 0.001))
    assert shrinking.diagnoses == []


def test_a_jump_of_the_loss_is_diverging_on_its_third_step():
    # loss 1 then 10 from step 100: the least of the last 3 values over the median of the 20 before
    # them is 10 > 4 at step 102.
    report = analyze(np.ones(150), loss=np.r_[np.ones(100), np.full(50, 10.0)])
    [d] = report.diagnoses
    assert (d.kind, d.start, d.end) == ("diverging", 102, None)
    assert d.evidence["loss_growth"] == 10.0


def test_non_finite_values_flag_diverging_for_good():
    m = np.ones(300)
    m[120] = np.nan
    report = analyze(m, loss=np.ones(300))
    assert [(d.kind, d.start, d.end) for d in report.diagnoses] == [("diverging", 120, None)]
    assert report.diagnoses[0].evidence == {"nonfinite": 1.0, "displacement_nonfinite": 1.0}
    assert report.active(119) == [] and report.active(299) == ["diverging"]


def test_a_decayed_lr_under_which_the_loss_still_falls_as_promised_is_decay_too_aggressive():
    # lr 1 -> 0.1 at step 100, descent 0.015 x lr, loss falling 0.001 a step throughout. The first window of
    # 100 samples wholly after the drop ends at 199: the loss falls 0.001 a step, 67% of the descent 0.0015
    # (exactly: no residual, so any multiple of its standard error), and the lr is at 10% of its peak
    # (the other lr-limited side, a fall far above the noise floor, switched off here: see the next test)
    t = np.arange(400)
    lr = np.where(t < 100, 1.0, 0.1)
    run = {"displacement": lr, "loss": 2.0 - 0.001 * t, "lr": lr, "descent": 0.015 * lr}
    efficiency_only = {"lr_limited_floor_multiple": 1e9}
    [d] = analyze(**run, **efficiency_only).diagnoses
    assert (d.kind, d.start, d.end) == ("decay_too_aggressive", 199, None)
    assert d.evidence["lr_fraction"] == 0.1 and d.evidence["descent"] == pytest.approx(0.0015)
    assert d.evidence["loss_fall"] == pytest.approx(0.001) and "67% of what the steps promise" in d.message
    stalled = {**run, "loss": np.where(t < 100, 2.0 - 0.001 * t, 1.9)}
    assert analyze(**stalled).diagnoses == analyze(**stalled, **efficiency_only).diagnoses == []
    assert analyze(**{**run, "descent": 0.15 * lr}).diagnoses == []  # falls 7% of the promise: a noise floor
    assert analyze(**{k: v for k, v in run.items() if k != "descent"}).diagnoses == []  # unknown promise
    assert analyze(**run, lr_limited_efficiency=0.7, **efficiency_only).diagnoses == []
    # with both sides: from 169, where 100 steps of the fall (0.1) first exceed 60x the excess loss over the
    # same window (30 samples at lr 1 and 70 at 0.1: mean descent 0.00555, excess 0.00139, 60x = 0.083)
    [d] = analyze(**run).diagnoses
    assert (d.kind, d.start) == ("decay_too_aggressive", 169)
    assert d.evidence["excess_loss"] == pytest.approx(0.00555 / 4) and "72x the excess loss" in d.message


def test_rates_are_per_optimizer_step_when_only_every_tenth_step_is_measured():
    # The run of the test above measured every 10th step: the same 400 samples, steps 0, 10, 20, … The loss
    # falls 0.001 a sample, 0.0001 a step; each step promises 0.0015 x lr. Per step the loss falls 7% of the
    # promise (a noise floor, not flagged); read per sample it would have been 67% (flagged, as it was).
    i = np.arange(400)
    lr = np.where(i < 100, 1.0, 0.1)
    sparse = {"displacement": lr, "loss": 2.0 - 0.001 * i, "lr": lr, "steps": 10 * i}
    assert analyze(**sparse, descent=0.015 * lr).diagnoses == []
    # a promise ten times smaller per step: the loss falls 67% of it, decay_too_aggressive as in the dense run
    [d] = analyze(**sparse, descent=0.0015 * lr, lr_limited_floor_multiple=1e9).diagnoses
    assert (d.kind, d.start) == ("decay_too_aggressive", 1990) and d.evidence["loss_fall"] == pytest.approx(1e-4)
    assert "67% of what the steps promise" in d.message


def test_a_decayed_lr_under_which_the_loss_falls_far_above_its_noise_floor_is_decay_too_aggressive():
    # descent 0.006 a step throughout: the loss's fall (0.001) is 17% of the promise, below
    # lr_limited_efficiency, but 100 steps of it (0.1) are 67x the excess 0.006 / 4 (plain SGD)
    t = np.arange(400)
    lr = np.where(t < 100, 1.0, 0.1)
    run = {"displacement": lr, "loss": 2.0 - 0.001 * t, "lr": lr, "descent": np.full(400, 0.006)}
    [d] = analyze(**run).diagnoses
    assert d.kind == "decay_too_aggressive" and d.start == 100  # the first decayed sample (the fall held from 99)
    assert "17% of what the steps promise" in d.message and "67x the excess loss" in d.message
    assert analyze(**run, lr_limited_floor_multiple=70).diagnoses == []
    # with momentum 0.9 the same descent means a 10x larger excess: 6.7x, a noise floor
    assert analyze(**run, momentum=np.full(400, 0.9)).diagnoses == []


def test_an_lr_decayed_before_it_used_its_budget_is_decay_too_aggressive_from_the_first_sample_it_holds():
    # lr 1 for 10 samples, then 0.01: at sample i (0-based) the mean lr over its peak is
    # (10 + 0.01 (i - 9)) / (i + 1): 10.24 / 34 = 0.301 at i = 33, 10.25 / 35 = 0.293 at i = 34, so the
    # flag starts at 34 (the mask below computes it independently of the module).
    lr = np.r_[np.ones(10), np.full(50, 0.01)]
    mean = np.cumsum(lr) / np.arange(1, 61)
    first = int(np.flatnonzero((lr <= 0.5) & (mean <= 0.3))[0])
    assert first == 34
    report = analyze(lr, lr=lr)  # displacement = lr (gradient part 1); no loss needed
    [d] = report.diagnoses
    assert (d.kind, d.start, d.end) == ("decay_too_aggressive", first, None)
    assert d.evidence == {"lr_fraction": 0.01, "mean_lr_fraction": mean[first], "lr_samples": first + 1.0}
    assert "restore it or decay more slowly" in d.message and f"over the {first + 1} measured steps" in d.message
    # a looser budget flags it earlier, a stricter one later; restoring the lr ends it
    assert analyze(lr, lr=lr, lr_budget_fraction=0.5).diagnoses[0].start < first
    assert analyze(lr, lr=lr, lr_budget_fraction=0.2).diagnoses[0].start > first
    restored = np.r_[lr, np.ones(5)]
    [d] = analyze(restored, lr=restored).diagnoses
    assert (d.start, d.end) == (first, 59)


@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=300), st.booleans())
@settings(max_examples=50, deadline=None)
def test_an_lr_that_never_falls_below_half_its_peak_is_never_decayed_too_aggressively(rises, warmup):
    # a warmup (non-decreasing lr) or an lr that stays within half of its running peak
    lr = np.maximum.accumulate(rises) if warmup else 0.5 + 0.5 * np.asarray(rises)
    assert analyze(np.ones(len(lr)), lr=lr).diagnoses == []


# -- real tiny training runs ------------------------------------------------------------------------
@functools.cache
def _digits(label_noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / (x.std(0) + 1e-6), dtype=torch.float32)
    y = torch.tensor(y)
    if label_noise:
        generator = torch.Generator().manual_seed(1)
        flip = torch.rand(len(y), generator=generator) < label_noise
        y = torch.where(flip, torch.randint(0, 10, (len(y),), generator=generator), y)
    return x, y


@functools.cache
def train(schedule: str, steps: int) -> dict[str, np.ndarray]:
    """SGD on scikit-learn's digits, recording per step the displacement ||w_t - w_{t-1}||, the
    minibatch loss, the gradient norm, the lr and the descent -<w_t - w_{t-1}, g_t>. Runs by name:

    too_high: logistic regression, 30 % noisy labels, lr 2 (the loss wanders on a high noisy floor);
    too_high_dropped: the same with the lr cut to 0.2 at step 400 (the counterfactual);
    clean: 64-32-10 tanh MLP, lr 0.05, still improving throughout;
    collapse: the MLP at lr 0.05 for 300 steps, then the lr times 0.9 per step;
    diverge: least-squares regression onto one-hot labels, lr 0.02 for 150 steps, then 3 (beyond the
        stability ceiling: the loss grows geometrically to inf);
    climb: the MLP with ReLU under heavy-ball momentum 0.9 at lr 0.2: the cross-entropy settles, then climbs
        hundreds-fold over hundreds of steps without ever jumping or turning non-finite;
    blown_up: the least-squares regression under momentum 0.9 at lr 0.5, dropped 10x every 60 steps: it blows
        up ~10^13-fold within 80 steps, and the drops bring it back down by orders of magnitude, never near
        its start.
    """
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    lr_at = {
        "too_high": lambda t: 2.0,
        "too_high_dropped": lambda t: 2.0 if t < 400 else 0.2,
        "clean": lambda t: 0.05,
        "collapse": lambda t: 0.05 if t < 300 else 0.05 * 0.9 ** (t - 300),
        "diverge": lambda t: 0.02 if t < 150 else 3.0,
        "climb": lambda t: 0.2,
        "blown_up": lambda t: 0.5 * 0.1 ** (t // 60),
    }[schedule]
    linear = schedule in ("too_high", "too_high_dropped", "diverge", "blown_up")
    x, y = _digits(0.3 if schedule.startswith("too_high") else 0.0)
    activation = torch.nn.ReLU() if schedule == "climb" else torch.nn.Tanh()  # tanh saturates: no climb
    model = torch.nn.Linear(64, 10) if linear else torch.nn.Sequential(
        torch.nn.Linear(64, 32), activation, torch.nn.Linear(32, 10))
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=lr_at(0), momentum=0.9 if schedule in ("climb", "blown_up") else 0.0)
    batch = 16 if schedule.startswith("too_high") else 32
    record = {name: np.empty(steps) for name in ("displacement", "loss", "grad_norm", "lr", "descent")}
    for t in range(steps):
        optimizer.param_groups[0]["lr"] = lr_at(t)
        rows = torch.randint(0, len(y), (batch,), generator=generator)
        out = model(x[rows])
        if schedule in ("diverge", "blown_up"):
            loss = torch.nn.functional.mse_loss(out, torch.nn.functional.one_hot(y[rows], 10).float())
        else:
            loss = torch.nn.functional.cross_entropy(out, y[rows])
        optimizer.zero_grad()
        loss.backward()
        before = torch.cat([p.detach().flatten() for p in params])
        grad = torch.cat([p.grad.flatten() for p in params])
        record["grad_norm"][t] = grad.norm().item()
        optimizer.step()
        step = torch.cat([p.detach().flatten() for p in params]) - before
        record["displacement"][t], record["descent"][t] = step.norm().item(), -(step.double() @ grad.double()).item()
        record["loss"][t], record["lr"][t] = loss.item(), lr_at(t)
    return record


def active_fraction(report: Report, kind: str, steps: range) -> float:
    return float(np.mean([kind in report.active(s) for s in steps]))


def test_lr_too_high_is_flagged_on_a_noisy_plateau_and_dropping_the_lr_helps():
    run = train("too_high", 1000)
    report = analyze(**run)
    assert active_fraction(report, "lr_too_high", range(400, 1000)) > 0.6
    assert {d.kind for d in report.diagnoses} == {"lr_too_high"}
    # the counterfactual: the same run with the lr cut at step 400 ends clearly lower
    dropped = train("too_high_dropped", 1000)
    assert np.median(dropped["loss"][700:]) < 0.7 * np.median(run["loss"][700:])
    # without the loss, or without the descent, there is no way to tell a noise floor: never flagged
    assert analyze(**{k: v for k, v in run.items() if k != "loss"}).diagnoses == []
    assert analyze(**{k: v for k, v in run.items() if k != "descent"}).diagnoses == []


@pytest.mark.parametrize("gradient", ["grad_norm", "lr", "neither"])
def test_decay_too_aggressive_is_flagged_after_an_early_collapse_and_restoring_helps(gradient):
    run = train("collapse", 800)
    given = {k: run[k] for k in ("displacement", "loss") + ((gradient,) if gradient != "neither" else ())}
    report = analyze(**given)
    starts = [d.start for d in report.diagnoses if d.kind == "decay_too_aggressive"]
    assert starts and 300 < starts[0] <= 720
    assert active_fraction(report, "decay_too_aggressive", range(720, 800)) == 1.0
    assert "lr_too_high" not in {d.kind for d in report.diagnoses}
    # the counterfactual: keeping the lr (the clean run) ends clearly lower
    assert np.median(train("clean", 800)["loss"][600:]) < 0.7 * np.median(run["loss"][600:])


def test_a_diverging_run_is_flagged_before_its_first_non_finite_value():
    run = train("diverge", 300)
    first_bad = int(np.flatnonzero(~np.isfinite(run["loss"]) | ~np.isfinite(run["displacement"]))[0])
    for given in (run, {"loss": run["loss"]}, {"displacement": run["displacement"]}):
        report = analyze(**given)
        [start] = [d.start for d in report.diagnoses if d.kind == "diverging"]
        assert 150 < start < first_bad
        assert all("diverging" in report.active(s) for s in range(start, 300))


def test_a_blown_up_run_whose_loss_falls_back_under_decayed_lrs_is_not_told_to_restore_them():
    """Falling by orders of magnitude under an lr decayed to 1% looked like a decayed lr that limits progress
    (decay_too_aggressive: "restore it") while the run was still diverging, 10^10 times above its start."""
    run = train("blown_up", 400)
    assert np.median(run["loss"][-50:]) > 1e6 * run["loss"][0] and run["loss"][-100:].max() < run["loss"].max() / 10
    report = analyze(**run)
    [d] = [d for d in report.diagnoses if d.kind == "diverging"]
    assert d.start < 60 and d.end is None
    assert "decay_too_aggressive" not in {d.kind for d in report.diagnoses}


def loss_levels_over_start(loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent computation of what the slow side of ``diverging`` compares, at the default thresholds:
    the steps ending each block of 10 (from the first full window of 100 on) and there the median of the
    last 10 block medians of the loss over the median of its first 5 values."""
    medians = np.median(loss[: len(loss) // 10 * 10].reshape(-1, 10), axis=1)
    level = np.array([np.median(medians[j - 9 : j + 1]) for j in range(9, len(medians))])
    return 10 * np.arange(9, len(medians)) + 9, level / np.median(loss[:5])


def test_a_loss_that_climbs_far_above_its_start_without_jumping_is_diverging():
    run = train("climb", 500)
    assert np.all(np.isfinite(run["loss"])) and np.median(run["loss"][-50:]) > 50 * run["loss"][0]
    ends, ratio = loss_levels_over_start(run["loss"])
    for given in (run, {"displacement": run["displacement"], "loss": run["loss"]}):
        [d] = [d for d in analyze(**given).diagnoses if d.kind == "diverging"]
        assert (d.start, d.end) == (ends[ratio >= 4][0], None)
        assert d.start < 400 and "diverging, slowly" in d.message
    # the jump side alone never sees it: the loss never grows 4x within 20 steps (a window longer than the
    # run leaves the slow side undecided)
    assert not any(d.kind == "diverging" for d in analyze(**run, window=1000).diagnoses)


def test_the_slow_side_of_diverging_ends_once_the_loss_settles_back_below_twice_its_start():
    # the loss rises 2 % a step (never 4x within the 20-step jump window) to 19.5x, holds, falls back
    loss = np.r_[np.ones(50), 1.02 ** np.arange(150), np.full(200, 1.02**149), 1.02 ** np.arange(149, -1, -1),
                 np.ones(100)]
    ends, ratio = loss_levels_over_start(loss)
    start = ends[ratio >= 4][0]
    off = ends[(ends > start) & (ratio < 2)][0]
    [d] = analyze(np.ones(len(loss)), loss=loss).diagnoses
    assert (d.kind, d.start, d.end) == ("diverging", start, off - 1)
    assert d.evidence == {"loss_level": pytest.approx(ratio[ends == start][0]), "loss_start": 1.0,
                          "loss_level_over_start": pytest.approx(ratio[ends == start][0]), "window": 100.0}
    assert "has stayed 4." in d.message
    analyzer = Analyzer()
    for chunk in np.array_split(loss, 37):
        analyzer.update(np.ones(len(chunk)), loss=chunk)
    assert analyzer.report().diagnoses == [d]


def test_a_loss_hovering_at_the_slow_sides_threshold_is_one_episode_not_a_flicker():
    rng = np.random.default_rng(0)
    loss = np.r_[np.ones(20), np.linspace(1, 4, 100), 4 * rng.lognormal(0, 0.05, 1000)]  # a ramp: no jump
    assert [(d.kind, d.end) for d in analyze(np.ones(len(loss)), loss=loss).diagnoses] == [("diverging", None)]
    # without the looser exit level it flickers
    assert len(analyze(np.ones(len(loss)), loss=loss, diverge_level_exit=4.0).diagnoses) > 3


def test_a_loss_settled_far_above_a_start_level_near_zero_still_says_so():
    # the level over the start overflows to inf (and leaves the evidence); the message still reads right
    loss = np.r_[np.full(60, 1e-300), np.full(300, 1e10)]
    report = analyze(np.ones(len(loss)), loss=loss, diverge_hold=1)
    slow = [d for d in report.diagnoses if "loss_level" in d.evidence]
    assert slow and all("has stayed infx where training started" in d.message for d in slow)


def test_a_clean_improving_run_is_not_flagged():
    assert analyze(**train("clean", 800)).diagnoses == []


# -- properties ---------------------------------------------------------------------------------------
def run_like(seed: int, n: int = 400) -> dict[str, np.ndarray]:
    """A synthetic run that trips the rules: noisy displacement under a step or exponential lr, a loss
    that improves then may plateau; some runs collapse the lr early, some diverge to inf."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    lr = 0.1 * (0.3 ** (t // rng.integers(100, 300)) if rng.random() < 0.5 else rng.uniform(0.99, 1.0) ** t)
    event = rng.integers(0, 3)
    at = int(rng.integers(100, 300))
    if event == 1:  # the lr collapses while the loss improves
        lr = np.where(t < at, lr, lr * 1e-3)
    grad = rng.lognormal(0, rng.uniform(0.1, 0.6), n) * np.exp(-t / rng.uniform(200, 2000))
    loss = 0.5 + np.exp(-np.minimum(t, at if event == 1 else n) / rng.uniform(50, 400))
    loss = loss * rng.lognormal(0, rng.uniform(0.01, 0.3), n)
    if event == 2:  # divergence: geometric growth, then inf
        growth = np.where(t < at, 1.0, rng.uniform(1.2, 3.0) ** np.minimum(t - at, 800).clip(0))
        grad, loss = grad * growth, loss * growth**2
    # SGD's descent lr * |g|^2, scaled up on some runs so that their noise floor holds much of the loss
    descent = lr * grad**2 * rng.uniform(1, 60) * rng.lognormal(0, 0.3, n)
    return {"displacement": lr * grad, "loss": loss, "lr": lr, "grad_norm": grad, "descent": descent,
            "momentum": np.full(n, rng.choice([0.0, 0.9]))}


def test_the_property_runs_trip_every_rule():
    """The properties below are not vacuous: their runs do raise each kind of diagnosis."""
    kinds = {d.kind for seed in range(30) for d in analyze(**run_like(seed), **SMALL).diagnoses}
    assert kinds == set(RULES)


def triples(report: Report) -> list[tuple]:
    return [(d.kind, d.start, d.end) for d in report.diagnoses]


def lr_falls_mid_block(fall: int, back: int | None = None, noisy: bool = False) -> dict[str, np.ndarray]:
    """A loss falling at the rate its steps promise (lr-limited; ``noisy``: from step 150 a descent whose noise
    floor holds much of the loss, lr_too_high), under an lr that halves at step ``fall`` (mid-block for most
    values) and, if ``back`` is given, returns there: so windowed states carried from the block before a
    chunk combine with per-sample lr conditions."""
    n, t = 300, np.arange(300)
    lr = np.where(t < fall, 1.0, 0.4)
    if back is not None:
        lr = np.where(t >= back, 1.0, lr)
    loss = 2 - 0.005 * t + np.random.default_rng(fall).normal(0, 0.001, n)
    descent = np.where((t >= 150) & noisy, 2.0, 0.005)
    return {"displacement": lr, "loss": loss, "lr": lr, "descent": descent, "momentum": 0.9 if noisy else 0.0}


def test_a_state_switching_on_mid_block_in_a_chunk_without_a_block_end_keeps_its_evidence():
    # decay_too_aggressive (the loss falls as fast as the steps promise) starts where the lr halves, at 205;
    # the chunk 201-206 ends no block: the evidence is the last block's before it (this raised KeyError),
    # and a chunk that does end a block gives the same evidence (it was taken from that later block)
    run = lr_falls_mid_block(205)
    whole = analyze(**run)
    assert any(d.kind == "decay_too_aggressive" and d.start == 205 for d in whole.diagnoses)
    for cuts in ([201, 207], [201, 215], [150, 204, 206]):
        analyzer, bounds = Analyzer(), [0, *cuts, 300]
        for a, b in zip(bounds, bounds[1:]):
            analyzer.update(**{k: v[a:b] if isinstance(v, np.ndarray) else v for k, v in run.items()})
        assert analyzer.report() == whole


@settings(max_examples=60, deadline=None)
@given(fall=st.integers(101, 290), back=st.one_of(st.none(), st.integers(150, 299)),
       cuts=st.lists(st.integers(1, 299), max_size=20), noisy=st.booleans())
def test_chunking_never_changes_states_that_switch_on_mid_block(fall, back, cuts, noisy):
    run = lr_falls_mid_block(fall, back if back is None or back > fall else None, noisy)
    analyzer, bounds = Analyzer(), [0, *sorted(set(cuts)), 300]
    for a, b in zip(bounds, bounds[1:]):
        analyzer.update(**{k: v[a:b] if isinstance(v, np.ndarray) else v for k, v in run.items()})
    assert analyzer.report() == analyze(**run)


@pytest.mark.parametrize("cut", [120, 203, 215, 230])
def test_an_analyzer_pickled_by_an_earlier_version_resumes(cut):
    run = lr_falls_mid_block(205)
    analyzer = Analyzer().update(**{k: v[:cut] if isinstance(v, np.ndarray) else v for k, v in run.items()})
    old = pickle.loads(pickle.dumps(analyzer))
    del old.__dict__["block_evidence"], old.block_state["loss_climbed"]  # what earlier versions lacked
    old.pending = old.pending[:-1]  # … and the samples' steps, in the pending samples and the noise windows
    for window in (old.noise, old.trend):
        del window.tails["step"]
    resumed = pickle.loads(pickle.dumps(old))
    # the steps filled in are the run's own (it was measured at every step)
    np.testing.assert_array_equal(resumed.pending, analyzer.pending)
    for upgraded, kept in ((resumed.noise, analyzer.noise), (resumed.trend, analyzer.trend)):
        np.testing.assert_array_equal(upgraded.tails["step"].values, kept.tails["step"].values)
    resumed.update(**{k: v[cut:] if isinstance(v, np.ndarray) else v for k, v in run.items()})
    whole = analyze(**run)
    if cut < 200 or cut > 205:  # resumed before the block end that decides it, or with the diagnosis open
        assert resumed.report() == whole
    else:  # resumed between that block end and the lr's fall: the lr-limited side waits for the next block end
        [d] = resumed.report().diagnoses
        assert (d.kind, d.start) == ("decay_too_aggressive", 209) and "progress is limited by the lr" in d.message


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10**6), cuts=st.lists(st.integers(1, 399), max_size=30), small=st.booleans())
def test_any_chunking_gives_the_same_report(seed, cuts, small):
    run, thresholds = run_like(seed), SMALL if small else {}
    analyzer = Analyzer(**thresholds)
    bounds = [0, *sorted(set(cuts)), 400]
    for a, b in zip(bounds, bounds[1:]):
        assert analyzer.update(**{k: v[a:b] for k, v in run.items()}) is analyzer
    assert analyzer.report() == analyze(**run, **thresholds)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), cut=st.integers(0, 399))
def test_decisions_are_causal(seed, cut):
    run = run_like(seed)
    full = analyze(**run, **SMALL)
    part = analyze(**{k: v[: cut + 1] for k, v in run.items()}, **SMALL)
    for s in range(cut + 1):
        assert part.active(s) == full.active(s)
    early = [d for d in full.diagnoses if d.start <= cut]
    assert [(d.kind, d.start, d.message, d.evidence) for d in part.diagnoses] == [
        (d.kind, d.start, d.message, d.evidence) for d in early
    ]


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10**6), power=st.integers(-30, 30), factor=st.floats(1e-6, 1e6))
def test_scaling_the_displacement_changes_nothing(seed, power, factor):
    run = run_like(seed)
    base = analyze(**run, **SMALL)
    exact = analyze(**{**run, "displacement": run["displacement"] * 2.0**power}, **SMALL)  # descent unscaled
    assert exact.diagnoses == base.diagnoses  # powers of two scale without rounding: equal to the bit
    assert (exact.schedule.kind, exact.schedule.drops) == (base.schedule.kind, base.schedule.drops)
    scaled = analyze(**{**run, "displacement": run["displacement"] * factor}, **SMALL)
    assert triples(scaled) == triples(base)


values = st.one_of(st.floats(allow_infinity=True), st.just(float("nan")))
nonnegative = st.one_of(st.floats(min_value=0, allow_infinity=True), st.just(float("nan")))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(0, 120), small=st.booleans())
def test_never_raises_on_any_values(data, n, small):
    series = {
        "displacement": data.draw(st.lists(nonnegative, min_size=n, max_size=n)),
        "loss": data.draw(st.none() | st.lists(values, min_size=n, max_size=n)),
        "lr": data.draw(st.none() | st.lists(nonnegative, min_size=n, max_size=n)),
        "grad_norm": data.draw(st.none() | st.lists(nonnegative, min_size=n, max_size=n)),
        "descent": data.draw(st.none() | st.lists(values, min_size=n, max_size=n)),
        "momentum": data.draw(st.none() | st.floats(0, 0.999) | st.lists(
            st.one_of(st.floats(0, 0.999), st.just(float("nan"))), min_size=n, max_size=n)),
    }
    small_thresholds = {"block": 2, "window": 4, "diverge_window": 2, "drop_window": 4, "noise_window": 4,
                        "noise_min_samples": 2}
    report = analyze(**series, **(small_thresholds if small else {}))
    assert report.n_steps == n
    json.dumps(report.to_dict(), allow_nan=False)
    for d in report.diagnoses:
        assert d.kind in RULES and 0 <= d.start < max(n, 1) and (d.end is None or d.start <= d.end < n)


# -- streaming, output, bad input ------------------------------------------------------------------
def test_steps_continue_across_updates_and_missing_series_are_gaps():
    analyzer = Analyzer()
    analyzer.update(np.ones(60), loss=np.ones(60), steps=np.arange(0, 600, 10))
    analyzer.update(np.ones(40))  # no loss in this chunk, steps continue after 590
    analyzer.update([], loss=[])
    analyzer.update(np.full(30, np.nan), loss=np.ones(30))
    report = analyzer.report()
    assert report.n_steps == 130
    assert triples(report) == [("diverging", 631, None)]  # 591..630 continue after 590
    with pytest.raises(ValueError, match="steps"):
        analyzer.update([1.0], steps=[5])  # not after the last step seen


def test_the_state_stays_bounded_over_a_long_stream():
    """Amortized O(1): after 50k steps in chunks of 50 the analyzer is no bigger than after 5k."""
    rng = np.random.default_rng(0)
    analyzer, sizes = Analyzer(), []
    for chunk in range(1000):
        m = rng.lognormal(0, 0.4, 50)
        analyzer.update(m, loss=1 + np.exp(-(chunk * 50 + np.arange(50)) / 1e4), lr=np.full(50, 0.1), grad_norm=m / 0.1)
        if chunk in (99, 999):
            sizes.append(len(pickle.dumps(analyzer)))
    assert analyzer.report().n_steps == 50_000
    assert sizes[1] <= 1.05 * sizes[0]


def test_report_and_diagnosis_are_plain_json():
    report = analyze(**train("diverge", 300))
    blob = report.to_dict()
    assert json.loads(json.dumps(blob, allow_nan=False)) == blob
    assert blob["n_steps"] == 300 and blob["schedule"]["kind"] == "other"
    odd = Diagnosis("diverging", 3, None, "x", {"growth": float("nan"), "nonfinite": 1.0})
    assert odd.to_dict() == {"kind": "diverging", "start": 3, "end": None, "message": "x",
                             "evidence": {"growth": None, "nonfinite": 1.0}}


def test_thresholds_are_adjustable_by_name():
    flat = {"displacement": np.ones(400), "loss": np.ones(400), "descent": np.full(400, 0.5), "momentum": 0.75}
    assert triples(analyze(**flat, noise_floor_fraction=0.6)) == []  # the excess is 0.5 of the loss
    assert triples(analyze(**flat, noise_min_samples=50)) == [("lr_too_high", 49, None)]
    assert triples(analyze(**flat, noise_min_samples=20)) == [("lr_too_high", 19, None)]
    assert triples(analyze(**flat, block=5, noise_min_samples=5)) == [("lr_too_high", 9, None)]  # least 2 blocks
    assert Thresholds().window == 100 and Thresholds().noise_floor_fraction == 0.3


@pytest.mark.parametrize(
    "kwargs, name",
    [({"displacement": [[0.1, 0.2]]}, "displacement"), ({"displacement": [0.1, -0.2]}, "displacement"),
     ({"displacement": [0.1, 0.2], "loss": [1.0]}, "loss"), ({"displacement": [0.1], "lr": [-0.1]}, "lr"),
     ({"displacement": [0.1], "grad_norm": [-1.0]}, "grad_norm"), ({"displacement": None}, "displacement"),
     ({"displacement": [0.1, 0.2], "steps": [2, 1]}, "steps"), ({"displacement": [0.1], "steps": [1.5]}, "steps"),
     ({"displacement": [0.1, 0.2], "steps": [1, 2, 3]}, "steps"), ({"loss": np.ones((3, 2))}, "loss"),
     ({"displacement": [0.1], "window": 95}, "window"), ({"displacement": [0.1], "block": True}, "block"),
     ({"displacement": [0.1], "resume_gain": -1.0}, "resume_gain"),
     ({"displacement": [0.1], "collapse_fraction": 0.9}, "collapse_fraction"),
     ({"displacement": [0.1], "diverge_factor": 0.0}, "diverge_factor"),
     ({"displacement": [0.1], "diverge_start": 0}, "diverge_start"),
     ({"displacement": [0.1], "diverge_start_factor": -1.0}, "diverge_start_factor"),
     ({"displacement": [0.1], "diverge_level_exit": 0.0}, "diverge_level_exit"),
     ({"displacement": [0.1], "diverge_level_exit": 5.0}, "diverge_level_exit"),
     ({"displacement": [0.1], "lr_budget_fraction": 0.0}, "lr_budget_fraction"),
     ({"displacement": [0.1], "decayed_fraction": 1.5}, "decayed_fraction"),
     ({"displacement": [0.1], "noise_floor_fraction": "high"}, "noise_floor_fraction"),
     ({"displacement": [0.1], "noise_window": 55}, "noise_window"),
     ({"displacement": [0.1], "noise_min_samples": 60}, "noise_min_samples"),
     ({"displacement": [0.1], "noise_floor_exit": 0.5}, "noise_floor_exit"),
     ({"displacement": [0.1], "noise_horizon": 0}, "noise_horizon"),
     ({"displacement": [0.1], "lr_limited_efficiency": -0.5}, "lr_limited_efficiency"),
     ({"displacement": [0.1], "lr_fall_fraction": 0.0}, "lr_fall_fraction"),
     ({"displacement": [0.1], "descent": [[0.1]]}, "descent"), ({"displacement": [0.1], "descent": [1, 2]}, "descent"),
     ({"displacement": [0.1], "momentum": 1.0}, "momentum"), ({"displacement": [0.1], "momentum": [-0.1]}, "momentum"),
     ({"displacement": [0.1], "momentum": [0.9, 0.9]}, "momentum"), ({"displacement": [0.1], "momentum": "x"}, "momentum"),
     ({"displacement": [0.1], "drop_rank": 2.0}, "drop_rank"), ({"displacement": [0.1], "windw": 100}, "windw")],
)
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        analyze(**kwargs)


def test_torch_tensors_are_read_by_value_even_on_a_graph():
    loss = torch.linspace(2, 1, 300, requires_grad=True) * 1.0  # part of a graph, as a logged loss might be
    displacement = torch.ones(300)
    assert analyze(displacement, loss=loss) == analyze(np.ones(300), loss=np.linspace(2, 1, 300, dtype=np.float32))
    with pytest.raises(ValueError, match="displacement must be a 1-D array of numbers"):
        analyze(torch.ones(3, device="meta"))


def test_a_blow_up_before_the_first_window_is_diverging_against_the_loss_start_level():
    # loss 1 for 5 steps, then doubling: the start level (median of the first 5) is 1, known at sample
    # 4; at sample 9 the least of the last 3 losses (8, 16, 32) is 8 > 4 times it, 13 samples before
    # the first window of 20 exists
    [d] = analyze(np.ones(40), loss=np.r_[np.ones(5), 2.0 ** np.arange(1, 36)]).diagnoses
    assert (d.kind, d.start, d.end) == ("diverging", 9, None)
    assert (d.evidence["loss_growth"], d.evidence["loss_over_start"]) == (8.0, 8.0)
    # a longer start sample delays it: with 8 values (median still 1, known at sample 7) the recent
    # run must begin at 8, so the first chance is sample 10 (16, 32, 64); so does a factor of 8
    assert analyze(np.ones(40), loss=np.r_[np.ones(5), 2.0 ** np.arange(1, 36)], diverge_start=8).diagnoses[0].start == 10
    assert analyze(np.ones(40), loss=np.r_[np.ones(5), 2.0 ** np.arange(1, 36)],
                   diverge_start_factor=8.0, diverge_factor=8.0).diagnoses[0].start == 10


def test_a_displacement_growing_from_the_first_steps_without_a_loss_is_not_diverging():
    # a linear warmup seen through m alone: m has no start-level reference, and against its running
    # median (the 20 samples before) it never grows 4x
    assert analyze(np.arange(1.0, 201.0)).diagnoses == []


def early_blow_up(seed: int, n: int = 60) -> dict[str, np.ndarray]:
    """A noisy loss that starts growing geometrically within the first 20 steps; m flat."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    at = int(rng.integers(0, 20))
    growth = rng.uniform(1.05, 3.0) ** (t - at).clip(0)
    return {"displacement": np.ones(n), "loss": rng.uniform(0.5, 2.0) * rng.lognormal(0, 0.5, n) * growth}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), cuts=st.lists(st.integers(1, 59), max_size=10))
def test_an_early_blow_up_is_flagged_where_an_independent_computation_says(seed, cuts):
    """Before the first window (recent run starting at a sample < diverge_window) the rule is: least
    of the last 3 losses > 4 x the median of the first 5, the recent run starting after them.
    Any chunking gives the same report."""
    run = early_blow_up(seed)
    loss, recent, window = run["loss"], 3, Thresholds().diverge_window
    start = np.median(loss[:5])
    early = [i for i in range(5 + recent - 1, window + recent - 1) if loss[i - recent + 1 : i + 1].min() > 4 * start]
    report = analyze(**run)
    starts = [d.start for d in report.diagnoses if d.kind == "diverging"]
    if early:
        assert starts[0] == early[0]
    else:
        assert not starts or starts[0] >= window + recent - 1
    analyzer = Analyzer()
    for a, b in zip([0, *sorted(set(cuts))], [*sorted(set(cuts)), 60]):
        analyzer.update(**{k: v[a:b] for k, v in run.items()})
    assert analyzer.report() == report


@pytest.mark.parametrize("height, flagged", [(6.0, False), (10.0, True)])
def test_a_jump_counts_only_above_four_times_the_loss_start_level(height, flagged):
    # the loss falls from 2.0 (start level: median of the first 5, 1.96) to 0.01 and jumps 600x or
    # 1000x for 10 steps: to 3.1x its start level a too-high lr's spike, to 5.1x a blow-up
    loss = np.r_[np.linspace(2.0, 0.01, 100), np.full(50, 0.01), np.full(10, height), np.full(40, 0.01)]
    assert triples(analyze(np.ones(200), loss=loss)) == ([("diverging", 152, None)] if flagged else [])


def test_a_loss_spike_below_where_the_run_started_is_not_diverging():
    # the loss fell from 2.0 to 0.01, then spikes 10x for 10 steps: a too-high lr's spike, far below its start
    spike = np.r_[np.linspace(2.0, 0.01, 100), np.full(50, 0.01), np.full(10, 0.1), np.full(40, 0.01)]
    assert analyze(np.ones(200), loss=spike).diagnoses == []
    # the same 10x jump from a loss that never fell below its start is a blow-up
    [d] = analyze(np.ones(200), loss=np.r_[np.full(150, 2.0), np.full(50, 20.0)]).diagnoses
    assert (d.kind, d.start) == ("diverging", 152)
