"""schedule_control against literal simulations of the schedules and optimizers it acts on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrwatch import schedule_control as control


def _optimizer(lr=1.0, **kwargs):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, **kwargs)


def _lrs(optimizer, scheduler, steps, act_at=None, act=None):
    """lr used by each of `steps` updates; `act(optimizer, scheduler)` runs after update `act_at`."""
    out = []
    for t in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        if t == act_at:
            act(optimizer, scheduler)
    return np.array(out)


def test_step_lr_drop_brought_forward_keeps_the_spacing_and_the_count():
    opt = _optimizer()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    lrs = _lrs(opt, sched, 40, act_at=6, act=lambda o, s: control.drop_now(o, s, None, 0.0))
    # Updates 0..6 at 1.0; the drop due at update 10 happens at update 7; later drops every 10 after it.
    expected = np.array([1.0] * 7 + [0.5] * 10 + [0.25] * 10 + [0.125] * 10 + [0.0625] * 3)
    np.testing.assert_allclose(lrs, expected)
    assert sched.get_last_lr() == [opt.param_groups[0]["lr"]]


def test_multistep_lr_drop_brought_forward_moves_the_clock_to_that_milestone():
    opt = _optimizer()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[10, 25], gamma=0.1)
    lrs = _lrs(opt, sched, 30, act_at=4, act=lambda o, s: control.drop_now(o, s, None, 0.0))
    # Clock jumps from 5 to 10 at update 5, so the milestone 25 comes 15 updates later, at update 20.
    expected = np.array([1.0] * 5 + [0.1] * 15 + [0.01] * 10)
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert control.can_drop(sched) is False  # no milestone left: nothing to bring forward


def test_exponential_and_no_scheduler_drop_once_by_factor_respecting_min_lr():
    opt = _optimizer()
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    lrs = _lrs(opt, sched, 6, act_at=1, act=lambda o, s: control.drop_now(o, s, 0.2, 0.0))
    np.testing.assert_allclose(lrs, [1.0, 0.9, 0.81 * 0.2, 0.729 * 0.2, 0.6561 * 0.2, 0.59049 * 0.2])
    opt = _optimizer(lr=0.01)
    assert control.drop_now(opt, None, None, min_lr=0.005) == 0.1
    assert opt.param_groups[0]["lr"] == 0.005


def test_unsupported_scheduler_is_refused():
    opt = _optimizer()
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    assert control.scheduler_kind(cosine) == control.UNSUPPORTED and not control.can_drop(cosine)
    with pytest.raises(ValueError, match="not supported"):
        control.drop_now(opt, cosine, 0.1, 0.0)


@pytest.mark.parametrize(
    "make, hold_from, expected",
    [
        # StepLR: the drop due at update 5 is held for 4 updates, then happens; the next keeps its spacing.
        (lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5), 3,
         [1.0] * 9 + [0.5] * 5 + [0.25]),
        # ExponentialLR: the decay pauses while held, then resumes from the held value.
        (lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.5), 1,
         [1.0] + [0.5] * 8 + [0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125]),
    ],
)
def test_hold_undoes_decreases_then_the_schedule_resumes(make, hold_from, expected):
    opt = _optimizer()
    sched = make(opt)
    lrs = []
    for t in range(15):
        lrs.append(opt.param_groups[0]["lr"])
        before = [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
        if hold_from <= t < 8:  # held over updates hold_from..7 (the scheduler step after each)
            control.undo_last_decay(opt, sched, before)
    np.testing.assert_allclose(lrs, expected)


class FoldedSGD(torch.optim.Optimizer):
    """Momentum with the lr folded into the buffer (v <- beta v + lr g; w <- w - v), Keras-style."""

    momentum_carries_lr = True

    def __init__(self, params, lr, momentum):
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad, alpha=group["lr"])
                p.sub_(buf)


def _transient(make_optimizer, mode, gamma=0.1, steps=60, drop_at=40):
    """Constant gradient: m after the drop over gamma * m before (1 = the new lr's steady step)."""
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = make_optimizer([w])
    m = []
    for t in range(steps):
        if t == drop_at:
            control._scale_lrs(opt, gamma, 0.0)
            if mode == "reset":
                control.reset_momentum(opt)
            elif mode == "damp":
                control.MomentumDamping(0.0, 5).apply(opt)
        before = w.detach().clone()
        w.grad = torch.ones(3, dtype=torch.float64)
        opt.step()
        m.append(float((w.detach() - before).norm()))
    return m[drop_at] / (gamma * m[drop_at - 1])


def test_both_momentum_formulations_at_a_drop():
    torch_sgd = lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)
    folded = lambda ps: FoldedSGD(ps, lr=0.1, momentum=0.9)
    assert not control.momentum_carries_lr(torch_sgd([torch.nn.Parameter(torch.zeros(1))]))
    assert control.momentum_carries_lr(folded([torch.nn.Parameter(torch.zeros(1))]))
    beta, gamma, n = 0.9, 0.1, 40  # n updates at the old lr before the drop (buffer 1 - beta^n of steady)
    settled = (1 - beta**n) / (1 - beta)  # buffer / (lr g) just before the drop
    # PyTorch SGD: lr outside the buffer, the buffer just keeps filling: no overshoot.
    assert _transient(torch_sgd, "keep") == pytest.approx((1 - beta ** (n + 1)) / (1 - beta**n), rel=1e-5)
    # Folded: the buffer holds the old lr's scale, so the first step after the drop is ~beta/gamma = 9x too big.
    assert _transient(folded, "keep") == pytest.approx((beta * settled + gamma) / (gamma * settled), rel=1e-5)
    # Reset, or damping with beta = 0: the first step is the bare new lr * g.
    assert _transient(folded, "reset") == pytest.approx(1 / settled, rel=1e-5)
    assert _transient(folded, "damp") == pytest.approx(1 / settled, rel=1e-5)


def test_damping_restores_the_coefficients():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.1, betas=(0.9, 0.99))
    damping = control.MomentumDamping(0.5, 2)
    damping.apply(opt)
    assert opt.param_groups[0]["betas"] == (0.5, 0.99)
    assert damping.tick(opt) is True and damping.tick(opt) is False
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)
    several = control.MomentumDamping(0.5, 3)
    several.apply(opt)
    assert several.tick(opt, 2) is True and several.tick(opt, 2) is False  # a batch of two steps overshoots the end
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)


def test_reset_momentum_zeroes_sgd_and_adam_buffers():
    w = torch.nn.Parameter(torch.ones(2))
    for opt in (torch.optim.SGD([w], lr=0.1, momentum=0.9), torch.optim.Adam([w], lr=0.1)):
        w.grad = torch.ones(2)
        opt.step()
        assert control.reset_momentum(opt) == 1
        state = opt.state[w]
        assert float(state.get("momentum_buffer", state.get("exp_avg")).abs().sum()) == 0


def test_coupled_weight_decay_keeps_lr_times_wd_constant_through_adamw_updates():
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = torch.optim.AdamW([w], lr=0.1, weight_decay=0.01)
    assert control.decoupled_weight_decay(opt)
    assert not control.decoupled_weight_decay(torch.optim.Adam([w], lr=0.1, weight_decay=0.01))
    base = [(0.1, 0.01)]
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)
    for _ in range(9):
        before = w.detach().clone()
        w.grad = torch.zeros(4, dtype=torch.float64)  # zero gradient: the update is the decoupled shrink alone
        opt.step()
        shrink = float(1 - w.detach()[0] / before[0])
        assert shrink == pytest.approx(0.1 * 0.01, rel=1e-5)  # eta * lambda stays eta0 * lambda0
        sched.step()
        control.couple_weight_decay(opt, base)
