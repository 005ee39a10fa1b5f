"""EarlyStepDrop on real Lightning runs. The decision logic (`decide`) is tested on hand-made reports;
the actions are tested with decisions forced at known steps, so each scheduler case, momentum mode,
weight-decay coupling, resume and refusal path is checked against an exact expected trajectory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import lrwatch
from lrwatch.diagnosis import Diagnosis, Report
from lrwatch.signature import Signature
from lrwatch._lightning import Callback, pl
from tests.conftest import (DigitsMLP, ForcedDrop, LateRestore, RecordingLogger, TwoOptimizerGAN, digits_loader,
                            make_trainer)


class LrTrace(Callback):
    """lr of every group and the optimizer's hyper-parameters used by each step."""

    def __init__(self):
        self.lrs, self.groups = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        opt = trainer.optimizers[0]
        self.lrs.append(opt.param_groups[0]["lr"])
        self.groups.append({k: v for k, v in opt.param_groups[0].items() if k != "params"})


class Scheduled(DigitsMLP):
    def __init__(self, make_scheduler, optimizer=lambda ps: torch.optim.SGD(ps, lr=1.0, momentum=0.9)):
        super().__init__()
        self.make_scheduler, self.make_optimizer = make_scheduler, optimizer

    def configure_optimizers(self):
        opt = self.make_optimizer(self.parameters())
        if self.make_scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.make_scheduler(opt), "interval": "step"}}


def _fit(model, callback, max_steps, logger=None, callbacks_before=(), **kwargs):
    trace = LrTrace()
    trainer = make_trainer([*callbacks_before, trace, callback], logger if logger is not None else RecordingLogger(),
                           max_steps=max_steps, **kwargs)
    trainer.fit(model, digits_loader(batch_size=16))
    return trainer, np.array(trace.lrs), trace


# -- decide(): the plain decision logic ---------------------------------------------------------
def _report(*diagnoses, loss_progress=0.0):
    return Report(Signature("step", [], [], None, [], "lr"), list(diagnoses), 500, loss_progress)


def _ready(callback, lr=1.0, scheduler=None):
    callback._optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    callback._scheduler = scheduler
    return callback


def test_decide_drops_on_lr_too_high_with_cooldown_and_max_drops():
    too_high = Diagnosis("lr_too_high", 100, None, "m", {})
    cb = _ready(lrwatch.EarlyStepDrop(cooldown=50, max_drops=1))
    assert cb.decide(_report(too_high), 200, 190) == "drop"
    assert cb.decide(_report(Diagnosis("lr_too_high", 100, 150, "m", {})), 200, 190) is None  # ended
    cb._drops_taken, cb._last_drop_step = 1, 150
    assert cb.decide(_report(too_high), 300, 290) is None  # max_drops reached
    cb = _ready(lrwatch.EarlyStepDrop(cooldown=50, max_drops=3))
    cb._drops_taken, cb._last_drop_step = 1, 180
    after_drop = Diagnosis("lr_too_high", 190, None, "m", {})
    assert cb.decide(_report(after_drop), 200, 195) is None  # cooling down
    assert cb.decide(_report(after_drop), 230, 220) == "drop"


def test_decide_respects_patience_min_lr_and_divergence():
    too_high = Diagnosis("lr_too_high", 150, None, "m", {})
    assert _ready(lrwatch.EarlyStepDrop(patience=100)).decide(_report(too_high), 200, 190) is None
    assert _ready(lrwatch.EarlyStepDrop(patience=50)).decide(_report(too_high), 200, 190) == "drop"
    assert _ready(lrwatch.EarlyStepDrop(min_lr=0.5), lr=0.5).decide(_report(too_high), 200, 190) is None
    diverging = Diagnosis("diverging", 180, None, "m", {})
    assert _ready(lrwatch.EarlyStepDrop()).decide(_report(too_high, diverging), 200, 190) is None
    assert _ready(lrwatch.EarlyStepDrop()).decide(None, 200, None) is None


def test_decide_drops_only_on_a_long_horizon_plateau_unless_told_otherwise():
    too_high = Diagnosis("lr_too_high", 100, None, "m", {})
    guarded = _ready(lrwatch.EarlyStepDrop())
    assert guarded.decide(_report(too_high, loss_progress=None), 200, 190) is None  # not known yet
    assert guarded.decide(_report(too_high, loss_progress=0.05), 200, 190) is None  # still a new low
    assert guarded.decide(_report(too_high, loss_progress=-0.01), 200, 190) == "drop"
    assert _ready(lrwatch.EarlyStepDrop(plateau_progress=0.1)).decide(_report(too_high, loss_progress=0.05), 200, 190) == "drop"
    assert _ready(lrwatch.EarlyStepDrop(plateau_progress=None)).decide(_report(too_high, loss_progress=None), 200, 190) == "drop"


def test_decide_holds_while_decay_is_too_aggressive_and_releases():
    aggressive = Diagnosis("decay_too_aggressive", 100, None, "m", {})
    cb = _ready(lrwatch.EarlyStepDrop(max_hold=30))
    assert cb.decide(_report(aggressive), 200, 190) == "hold"
    cb._holding = True
    assert cb.decide(_report(aggressive), 250, 240) is None  # keep holding
    assert cb.decide(_report(Diagnosis("decay_too_aggressive", 100, 230, "m", {})), 250, 240) == "release"
    cb._held_steps = 30
    assert cb.decide(_report(aggressive), 300, 290) == "release"  # hold budget spent
    cb = _ready(lrwatch.EarlyStepDrop())
    cb._drops_taken, cb._last_drop_step = 1, 50
    assert cb.decide(_report(Diagnosis("decay_too_aggressive", 100, None, "m", {})), 200, 190) is None  # own drop


# -- actions on real runs ------------------------------------------------------------------------
def test_step_lr_early_drop_keeps_the_rest_of_the_schedule():
    model = Scheduled(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5))
    logger = RecordingLogger()
    trainer, lrs, _ = _fit(model, ForcedDrop({4: "drop"}), 35, logger=logger)
    # Decided after update 4 (global step 4): update 5 uses the dropped lr; drops keep 10 apart after it.
    expected = [1.0] * 4 + [0.5] * 10 + [0.25] * 10 + [0.125] * 10 + [0.0625]
    np.testing.assert_allclose(lrs, expected)
    steps, values = logger.series("lrwatch/action/drop")
    assert steps.tolist() == [5] and values.tolist() == [0.5]


def test_multistep_lr_early_drop_and_nothing_left_to_drop():
    model = Scheduled(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[10, 20], gamma=0.1))
    callback = ForcedDrop({3: "drop", 6: "drop", 9: "drop"}, cooldown=0)
    trainer, lrs, _ = _fit(model, callback, 30)
    # Two milestones, brought forward to after steps 3 and 6; the third decision has nothing left.
    np.testing.assert_allclose(lrs, [1.0] * 3 + [0.1] * 3 + [0.01] * 24, rtol=1e-12)
    assert [a.kind for a in callback.actions] == ["drop", "drop"]


def test_exponential_and_no_scheduler_use_factor_once():
    model = Scheduled(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9))
    _, lrs, _ = _fit(model, ForcedDrop({2: "drop"}, factor=0.2), 5)
    np.testing.assert_allclose(lrs, [1.0, 0.9, 0.81 * 0.2, 0.729 * 0.2, 0.6561 * 0.2])
    _, lrs, _ = _fit(Scheduled(None), ForcedDrop({2: "drop"}), 4)
    np.testing.assert_allclose(lrs, [1.0, 1.0, 0.1, 0.1])  # default factor without a scheduler: 0.1


def test_hold_postpones_a_step_drop_within_its_budget():
    model = Scheduled(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5))
    callback = ForcedDrop({3: "hold"}, max_hold=4)
    _, lrs, _ = _fit(model, callback, 20)
    # The drop due at update 5 is undone 4 times (budget), then taken at update 9; next 5 later.
    np.testing.assert_allclose(lrs, [1.0] * 9 + [0.5] * 5 + [0.25] * 5 + [0.125])


@pytest.mark.parametrize("plan, kwargs, scheduler_period", [
    ({3: "hold"}, {"max_hold": 4}, 5),  # the hold budget
    ({3: "drop"}, {"momentum": "damp", "damp_steps": 5}, 100),  # the damping's length
])
def test_gradient_accumulation_counts_optimizer_steps_not_batches(plan, kwargs, scheduler_period):
    """Both used to count batch ends: with 4 batches an update, a 4-step hold held for one update and a 5-step
    damping lasted two."""
    def per_update(accumulate):
        model = Scheduled(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=scheduler_period, gamma=0.5))
        _, lrs, trace = _fit(model, ForcedDrop(plan, cooldown=0, **kwargs), 20, accumulate_grad_batches=accumulate)
        return lrs[::accumulate], [g["momentum"] for g in trace.groups][::accumulate]

    plain, accumulated = per_update(1), per_update(4)
    np.testing.assert_allclose(accumulated[0], plain[0])
    np.testing.assert_allclose(accumulated[1], plain[1])
    if "damp_steps" in kwargs:
        assert plain[1][3:8] == [0.5] * 5 and plain[1][8] == 0.9
    else:
        np.testing.assert_allclose(plain[0][:10], [1.0] * 9 + [0.5])


def test_the_damping_counts_the_steps_of_the_optimizer_it_acts_on_only():
    """Two optimizers stepped each batch (global_step +2 a batch): a 4-step damping of optimizer 0 lasts 4 of its
    updates (it lasted 2 while the other optimizer's steps counted)."""
    class Betas(Callback):
        def __init__(self):
            self.beta1 = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.beta1.append(trainer.optimizers[0].param_groups[0]["betas"][0])

    betas = Betas()
    drop = ForcedDrop({4: "drop"}, momentum="damp", damp_beta=0.5, damp_steps=4, optimizer_index=0)
    make_trainer([drop, betas], RecordingLogger(), max_steps=24).fit(TwoOptimizerGAN(), digits_loader(64, 512))
    assert betas.beta1[:8] == [0.9, 0.9, 0.5, 0.5, 0.5, 0.5, 0.9, 0.9]  # dropped after batch 1 (global step 4)


def test_a_batch_the_loader_gives_as_none_is_neither_counted_nor_decided_on_again():
    """Lightning calls no on_train_batch_start for a None batch but still calls on_train_batch_end: the step
    decided after the batch before was decided (and the drop taken) a second time."""
    batches = list(digits_loader(batch_size=64))
    items = [*batches[:4], None, *batches[4:]]
    loader = DataLoader(items, batch_size=None, collate_fn=lambda b: b)
    callback = ForcedDrop({4: "drop"})
    trainer = make_trainer([callback], RecordingLogger(), max_steps=7)
    trainer.fit(DigitsMLP(lr=0.1), loader)
    assert [(a.step, a.kind) for a in callback.actions] == [(5, "drop")]
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01)


def test_a_decision_is_taken_once_per_multiple_of_decide_every_that_a_batch_reaches():
    """A manual training_step that steps twice a batch makes global_step jump by 2: every multiple of
    decide_every=3 crossed is decided on (the steps were tested for being a multiple: only 6, 12, 18)."""
    class TwoStepsABatch(DigitsMLP):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            for _ in range(2):
                loss = torch.nn.functional.cross_entropy(self.net(x), y)
                self.optimizers().zero_grad()
                self.manual_backward(loss)
                self.optimizers().step()

    class Recording(lrwatch.EarlyStepDrop):
        def decide(self, report, step, last_analyzed):
            self.asked.append(step)

    callback = Recording(decide_every=3)
    callback.asked = []
    make_trainer([callback], RecordingLogger(), max_steps=20).fit(TwoStepsABatch(), digits_loader(batch_size=16))
    assert callback.asked == [4, 6, 10, 12, 16, 18]


class EpochScheduled(Scheduled):
    """The scheduler at Lightning's default interval: stepped once an epoch."""

    def configure_optimizers(self):
        opt = self.make_optimizer(self.parameters())
        return {"optimizer": opt, "lr_scheduler": self.make_scheduler(opt)}


def _epoch_lrs(callback, epochs: int = 8) -> np.ndarray:
    """The lr of every step of ``epochs`` epochs of 8 steps under StepLR(step_size=3 epochs, γ=0.5)."""
    trace = LrTrace()
    trainer = make_trainer([trace, callback], RecordingLogger(), max_steps=-1, max_epochs=epochs)
    trainer.fit(EpochScheduled(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
                digits_loader(batch_size=64))
    return np.array(trace.lrs)


def test_epoch_interval_step_lr_early_drop_moves_the_epoch_clock():
    lrs = _epoch_lrs(ForcedDrop({12: "drop"}))
    # Decided after 12 updates, 4 into epoch 1: the drop due at epoch 3 applies from update 12, and the clock
    # stands at that boundary, so the next drop comes 3 epoch ends later, at epoch 4 (not 3 + 3 = 6).
    expected = [1.0] * 12 + [0.5] * (32 - 12) + [0.25] * 24 + [0.125] * 8
    np.testing.assert_allclose(lrs, expected)


def test_epoch_interval_hold_budget_counts_optimizer_steps():
    # The decrease due at the end of epoch 2 is undone from step 24 on (at every epoch end while held); after
    # 12 held steps the hold is released (step 36) and the next epoch end takes it: epochs 5-7 run at 0.5.
    lrs = _epoch_lrs(ForcedDrop({12: "hold"}, max_hold=12))
    np.testing.assert_allclose(lrs, [1.0] * 40 + [0.5] * 24)
    # with a budget longer than the run, nothing is taken (it used to count epochs: 4 meant 4 epochs)
    np.testing.assert_allclose(_epoch_lrs(ForcedDrop({12: "hold"}, max_hold=100)), [1.0] * 64)


@pytest.mark.parametrize("scheduler", [
    lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=50),
    lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=50),
])
def test_unsupported_scheduler_warns_once_and_never_acts(scheduler):
    with pytest.warns(UserWarning, match="cannot be acted on"):
        _, lrs, _ = _fit(Scheduled(scheduler), ForcedDrop({2: "drop"}), 6)
    reference = Scheduled(scheduler).configure_optimizers()
    opt, sched = reference["optimizer"], reference["lr_scheduler"]["scheduler"]
    expected = []
    for _ in range(6):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs, expected)


def test_reduce_lr_on_plateau_is_refused_with_a_warning():
    class Plateau(Scheduled):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "train_loss", "interval": "step"}}

    with pytest.warns(UserWarning, match="ReduceLROnPlateau cannot be acted on"):
        _, lrs, _ = _fit(Plateau(None), ForcedDrop({2: "drop"}), 5)
    np.testing.assert_allclose(lrs, [1.0] * 5)


@pytest.mark.parametrize("mode", ["keep", "reset", "damp"])
def test_momentum_modes_at_a_drop(mode):
    class Buffers(Callback):
        def __init__(self):
            self.norms = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            state = trainer.optimizers[0].state
            self.norms.append(sum(float(s["momentum_buffer"].norm()) for s in state.values() if "momentum_buffer" in s))

    buffers = Buffers()
    model = Scheduled(None, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))
    callback = ForcedDrop({5: "drop"}, momentum=mode, damp_beta=0.3, damp_steps=3)
    trainer = make_trainer([buffers, LrTrace(), callback], RecordingLogger(), max_steps=12)
    trace = trainer.callbacks[1]
    trainer.fit(model, digits_loader(batch_size=16))
    momentum = [g["momentum"] for g in trace.groups]
    if mode == "reset":
        assert buffers.norms[5] == 0 and buffers.norms[4] > 0
    else:
        assert buffers.norms[5] > 0
    if mode == "damp":  # updates 5, 6, 7 use beta 0.3, then 0.9 again
        assert momentum == [0.9] * 5 + [0.3] * 3 + [0.9] * 4
    else:
        assert momentum == [0.9] * 12
    # The transient (m after the drop over gamma * m before) is measured and logged once the data are in.
    assert [s for s, _ in callback.transients] == [6]


def test_couple_weight_decay_keeps_lr_times_wd_constant_with_adamw():
    model = Scheduled(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5),
                      lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1))
    _, lrs, trace = _fit(model, ForcedDrop({6: "drop"}, couple_weight_decay=True), 16)
    products = np.array([g["lr"] * g["weight_decay"] for g in trace.groups])
    np.testing.assert_allclose(products, 0.01 * 0.1, rtol=1e-12)
    assert lrs.min() < 0.01 / 4  # scheduled and early drops both happened


class AddGroupAt(Callback):
    """Adds a param group (lr 0.02, weight decay 0.05) to the optimizer before the given step, as
    Lightning's BaseFinetuning does when it unfreezes a layer."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.optimizers[0].add_param_group(
                {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.02, "weight_decay": 0.05})


@pytest.mark.parametrize("added_before_step", [3, 5])  # 5: the group's first step is the one that drops
def test_couple_weight_decay_covers_a_param_group_added_mid_fit(added_before_step):
    model = Scheduled(None, lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1))
    trainer, lrs, _ = _fit(model, ForcedDrop({6: "drop"}, couple_weight_decay=True), 10,
                           callbacks_before=[AddGroupAt(added_before_step)])
    first, added = trainer.optimizers[0].param_groups
    assert lrs[-1] == pytest.approx(0.001) and added["lr"] == pytest.approx(0.002)  # the drop reached both
    assert first["lr"] * first["weight_decay"] == pytest.approx(0.01 * 0.1)
    assert added["lr"] * added["weight_decay"] == pytest.approx(0.02 * 0.05)


def test_a_second_fit_with_the_same_callback_is_a_new_run():
    """The first fit's actions, drop factor (its StepLR's γ) and weight-decay base carried into a second fit of a
    new model: there it dropped by 0.5 with no scheduler (the default is 0.1) and coupled the new AdamW's weight
    decay to the old one's base."""
    callback = ForcedDrop({4: "drop"}, couple_weight_decay=True)
    first = Scheduled(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5),
                      lambda ps: torch.optim.AdamW(ps, lr=1.0, weight_decay=0.1))
    _, lrs, _ = _fit(first, callback, 8)
    np.testing.assert_allclose(lrs, [1.0] * 4 + [0.5] * 4)
    second = Scheduled(None, lambda ps: torch.optim.AdamW(ps, lr=0.2, weight_decay=0.01))
    _, lrs, trace = _fit(second, callback, 8)
    np.testing.assert_allclose(lrs, [0.2] * 4 + [0.02] * 4)
    assert [(a.kind, a.step) for a in callback.actions] == [("drop", 5)]
    np.testing.assert_allclose([g["lr"] * g["weight_decay"] for g in trace.groups], 0.2 * 0.01, rtol=1e-12)


def test_couple_weight_decay_is_ignored_with_a_warning_without_decoupled_decay():
    with pytest.warns(UserWarning, match="couple_weight_decay needs decoupled"):
        _fit(Scheduled(None), lrwatch.EarlyStepDrop(couple_weight_decay=True), 3)


def test_non_finite_training_never_drops_to_zero_or_raises():
    class Exploding(Scheduled):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if batch_idx >= 5 else loss

    callback = lrwatch.EarlyStepDrop(decide_every=5, cooldown=0, watch={"flush_every": 5})
    _, lrs, _ = _fit(Exploding(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=100, gamma=0.1)), callback, 40)
    assert lrs.min() > 0 and callback.actions == []


def test_shares_an_attached_lrwatch_instead_of_measuring_twice():
    watch = lrwatch.LRWatch(flush_every=5)
    callback = lrwatch.EarlyStepDrop()
    trainer = make_trainer([watch, callback], RecordingLogger(), max_steps=10)
    trainer.fit(Scheduled(None), digits_loader(batch_size=16))
    assert callback._watch is watch and callback._own_watch.names() == []
    opt = trainer.optimizers[0]
    assert len(opt._optimizer_step_pre_hooks) == 0  # detached at the end; only one meter was ever attached
    assert len(opt._optimizer_step_post_hooks) == 0  # no step hook left behind either
    assert len(watch.records()) == 10


def _resume_run(tmp_path, steps, ckpt=None, save_every=None, trace=None, late=False, **drop_kwargs):
    model = Scheduled(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5))
    trace = trace or LrTrace()
    callbacks = [trace, ForcedDrop({7: "drop", 33: "drop"}, cooldown=0, **drop_kwargs)]
    checkpointing = save_every is not None
    if checkpointing:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=save_every, save_top_k=-1))
    trainer = pl.Trainer(max_steps=steps, logger=False, callbacks=callbacks, enable_checkpointing=checkpointing,
                         enable_progress_bar=False, enable_model_summary=False,
                         **({"strategy": LateRestore()} if late else {"accelerator": "cpu"}))
    trainer.fit(model, digits_loader(batch_size=16), ckpt_path=ckpt)
    return np.array(trace.lrs), callbacks[1]


@pytest.mark.parametrize("late", [False, True])  # late: callbacks restored after on_fit_start (FSDP, ModelParallel)
def test_resume_gives_the_same_lr_trajectory(tmp_path, late):
    straight, _ = _resume_run(tmp_path / "a", 50)
    first, _ = _resume_run(tmp_path / "b", 25, save_every=25)
    ckpt = next((tmp_path / "b").glob("*.ckpt"))
    second, resumed = _resume_run(tmp_path / "c", 50, ckpt=str(ckpt), late=late)
    np.testing.assert_allclose(np.concatenate([first, second]), straight)
    assert [a.step for a in resumed.actions] == [8, 34]  # the first from the checkpoint, the second after
    # the same callback in a new fit afterwards: a new run, not a third part of the resumed one
    trainer = make_trainer([resumed], False, max_steps=3)
    trainer.fit(Scheduled(None), digits_loader(batch_size=16))
    assert resumed.actions == []


def test_resume_after_a_crashed_fit_of_the_same_callback_goes_on_from_the_checkpoint(tmp_path):
    """The crashed fit never got a teardown: its callback still thought itself in a fit, and applied the
    checkpoint's state as a mid-fit restore that on_fit_start then wiped (no actions, no drops)."""
    class CrashesAt30(Scheduled):
        def training_step(self, batch, batch_idx):
            if self.trainer.global_step == 30:
                raise RuntimeError("crash")
            return super().training_step(batch, batch_idx)

    callback = ForcedDrop({7: "drop"}, cooldown=0)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=25, save_top_k=-1)
    trainer = pl.Trainer(max_steps=50, accelerator="cpu", logger=False, callbacks=[callback, saver],
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(RuntimeError, match="crash"):
        trainer.fit(CrashesAt30(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5)),
                    digits_loader(batch_size=16))
    trace = LrTrace()
    make_trainer([trace, callback], False, max_steps=30).fit(
        Scheduled(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5)), digits_loader(batch_size=16),
        ckpt_path=str(next(tmp_path.glob("*.ckpt"))))
    assert [(a.kind, a.step) for a in callback.actions] == [("drop", 8)] and callback._drops_taken == 1
    np.testing.assert_allclose(trace.lrs, [0.25] * 2 + [0.125] * 3)  # updates 26-30: after the drops at 8 and 18, and 28


def test_resume_in_the_middle_of_an_epoch_interval_hold_keeps_its_budget(tmp_path):
    def run(path, epochs, ckpt=None, save_every=None):
        trace = LrTrace()
        # a budget that runs out 2 steps before the epoch end where the released decrease is taken: a resumed
        # run that did not count the steps since the last undo would release after it, an epoch later
        callbacks = [trace, ForcedDrop({12: "hold"}, max_hold=14)]
        if save_every:
            callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=path, every_n_train_steps=save_every, save_top_k=-1))
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, callbacks=callbacks,
                             enable_checkpointing=bool(save_every), enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(EpochScheduled(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
                    digits_loader(batch_size=64), ckpt_path=ckpt)
        return trace.lrs

    straight = run(tmp_path / "a", 8)
    first = run(tmp_path / "b", 4, save_every=28)  # saved 4 steps into the hold's budget (first undo: step 24)
    second = run(tmp_path / "c", 8, ckpt=str(next((tmp_path / "b").glob("*step=28.ckpt"))))
    np.testing.assert_allclose(first[:28] + second, straight)
    np.testing.assert_allclose(straight, [1.0] * 40 + [0.5] * 24)


def test_resume_in_the_middle_of_momentum_damping_restores_the_momentum_on_time(tmp_path):
    def momentum(path, steps, **kwargs):
        trace = LrTrace()
        _resume_run(path, steps, trace=trace, momentum="damp", damp_steps=5, **kwargs)
        return np.array([g["momentum"] for g in trace.groups])

    straight = momentum(tmp_path / "a", 40)
    first = momentum(tmp_path / "b", 19, save_every=19)  # saved in the damping after the scheduled drop at 17
    second = momentum(tmp_path / "c", 40, ckpt=str(next((tmp_path / "b").glob("*.ckpt"))))
    assert set(straight[17:22]) == {0.5} and set(straight[22:27]) == {0.9}
    np.testing.assert_array_equal(np.concatenate([first, second]), straight)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"factor": 1.5}, "factor"), ({"factor": 0}, "factor"), ({"cooldown": -1}, "cooldown"), ({"patience": 1.5}, "patience"),
     ({"min_lr": -1}, "min_lr"), ({"max_drops": -1}, "max_drops"), ({"max_hold": True}, "max_hold"),
     ({"momentum": "nesterov"}, "momentum"), ({"damp_beta": 1.0}, "damp_beta"), ({"damp_steps": 0}, "damp_steps"),
     ({"optimizer_index": -1}, "optimizer_index"), ({"decide_every": 0}, "decide_every"), ({"watch": 5}, "watch"),
     ({"watch": {"flush_every": 0}}, "flush_every"), ({"plateau_progress": float("nan")}, "plateau_progress"),
     ({"plateau_progress": "flat"}, "plateau_progress"), ({"couple_weight_decay": "no"}, "couple_weight_decay")],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        lrwatch.EarlyStepDrop(**kwargs)


def test_scheduled_drops_restart_the_cooldown_and_older_diagnoses_are_ignored():
    too_high = Diagnosis("lr_too_high", 100, None, "m", {})
    cb = _ready(lrwatch.EarlyStepDrop(cooldown=50))
    cb._lrs_before = [1.0]
    cb._optimizer.param_groups[0]["lr"] = 0.1  # the schedule dropped the lr after step 150
    cb._on_lr_change([1.0], 150)
    assert cb.decide(_report(too_high), 180, 170) is None  # cooling down after the scheduled drop
    assert cb.decide(_report(too_high), 250, 240) is None  # the diagnosis predates the drop
    assert cb.decide(_report(Diagnosis("lr_too_high", 160, None, "m", {})), 250, 240) == "drop"


def test_watch_options_are_ignored_with_a_warning_when_an_lrwatch_is_attached():
    with pytest.warns(UserWarning, match="is ignored"):
        trainer = make_trainer([lrwatch.LRWatch(), lrwatch.EarlyStepDrop(watch={"flush_every": 5})], RecordingLogger(),
                               max_steps=2)
        trainer.fit(Scheduled(None), digits_loader(batch_size=16))
