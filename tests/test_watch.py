"""LRWatch on real Lightning runs: every logged displacement, grad norm and lr equals an independent
computation (relative error <= 1e-5) and the step axis is the optimizer step count."""

from __future__ import annotations

import runpy
import warnings

import numpy as np
import pytest
import torch

import lrwatch
from lrwatch._lightning import Callback, pl
from lrwatch.callbacks import watch as watch_module
from lrwatch.callbacks.watch import _fsdp1_hybrid, _is_sharded, _news, optimizer_names
from lrwatch.diagnosis import Diagnosis, Report
from lrwatch.measure import SPARE_GROUPS
from lrwatch.signature import Signature
from tests.conftest import (DigitsMLP, LateRestore, RecordingLogger, ReferenceRecorder, TwoOptimizerGAN, digits_loader,
                            make_trainer)

RTOL = 1e-5


def _fit(model, max_steps=20, watch_kwargs=None, **trainer_kwargs):
    logger, reference = RecordingLogger(), ReferenceRecorder()
    watch = lrwatch.LRWatch(flush_every=7, **(watch_kwargs or {}))  # 7: chunks never align with epochs
    trainer = make_trainer([reference, watch], logger, max_steps=max_steps, **trainer_kwargs)
    trainer.fit(model, digits_loader())
    return trainer, logger, reference, watch


def _assert_close(actual, expected, what):
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    assert actual.shape == expected.shape, f"{what}: {actual.shape} vs {expected.shape}"
    err = np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), 1e-30))
    assert err <= RTOL, f"{what}: relative error {err:.2e}"


@pytest.mark.parametrize(
    "optimizer, lr_tags",
    [
        ("sgd", ["lrwatch/lr/SGD"]),
        ("sgd_momentum_groups", ["lrwatch/lr/SGD/body", "lrwatch/lr/SGD/pg1"]),
        ("adam", ["lrwatch/lr/Adam"]),
    ],
)
def test_logged_series_match_independent_computation(optimizer, lr_tags):
    trainer, logger, reference, _ = _fit(DigitsMLP(optimizer, lr=0.01 if optimizer == "adam" else 0.1))
    steps, displacement = logger.series("lrwatch/displacement")
    np.testing.assert_array_equal(steps, np.arange(1, trainer.global_step + 1))
    _assert_close(displacement, reference.displacements(), "displacement")
    _assert_close(logger.series("lrwatch/grad_norm")[1], reference.grad_norms[0], "grad_norm")
    # descent is a difference of float32 squared norms: its error scales with |dw| |g|, not with itself
    error = np.abs(logger.series("lrwatch/descent")[1] - reference.descents())
    assert (error <= 1e-5 * reference.displacements() * np.array(reference.grad_norms[0])).all()
    beta = {"sgd": 0.0, "sgd_momentum_groups": 0.9, "adam": 0.9}[optimizer]
    np.testing.assert_array_equal(logger.series("lrwatch/momentum")[1], beta)
    for i, tag in enumerate(lr_tags):
        _assert_close(logger.series(tag)[1], [lrs[i] for lrs in reference.lrs[0]], tag)


def test_step_lr_scheduler_lr_is_the_lr_each_update_used():
    trainer, logger, reference, _ = _fit(DigitsMLP("sgd", lr=0.2, scheduler="step"), max_steps=18)
    steps, lr = logger.series("lrwatch/lr/SGD")
    expected = 0.2 * 0.5 ** (np.arange(18) // 5)  # StepLR(step_size=5, gamma=0.5), stepped every step
    _assert_close(lr, expected, "lr")
    _assert_close(logger.series("lrwatch/displacement")[1], reference.displacements(), "displacement")


def test_gradient_accumulation_measures_each_real_update_once():
    trainer, logger, reference, _ = _fit(DigitsMLP("sgd"), max_steps=10, accumulate_grad_batches=2)
    steps, displacement = logger.series("lrwatch/displacement")
    assert trainer.global_step == 10 and len(reference.before[0]) == 10
    np.testing.assert_array_equal(steps, np.arange(1, 11))
    _assert_close(displacement, reference.displacements(), "displacement")
    # Lightning divides each micro-batch loss by 2; the logged loss is the mean over the two micro-batches.
    model = DigitsMLP("sgd")
    loader = iter(digits_loader())
    x1, y1 = next(loader)
    x2, y2 = next(loader)
    with torch.no_grad():
        first = (torch.nn.functional.cross_entropy(model.net(x1), y1) + torch.nn.functional.cross_entropy(model.net(x2), y2)) / 2
    _assert_close(logger.series("lrwatch/loss")[1][0], float(first), "loss of the first step")


def test_two_optimizers_under_manual_optimization():
    trainer, logger, reference, watch = _fit(TwoOptimizerGAN(), max_steps=16)
    assert optimizer_names(trainer.optimizers) == ["Adam", "SGD"]
    gen_steps, gen = logger.series("lrwatch/displacement/Adam")
    disc_steps, disc = logger.series("lrwatch/displacement/SGD")
    # global_step counts both optimizers: the discriminator steps first (odd), the generator second (even).
    np.testing.assert_array_equal(disc_steps, np.arange(1, 17, 2))
    np.testing.assert_array_equal(gen_steps, np.arange(2, 17, 2))
    _assert_close(gen, reference.displacements(0), "generator displacement")
    _assert_close(disc, reference.displacements(1), "discriminator displacement")
    _assert_close(logger.series("lrwatch/lr/SGD")[1], [0.05] * 8, "discriminator lr")
    assert set(watch.reports) == {"Adam", "SGD"}


def test_bf16_mixed_autocast_on_cpu():
    trainer, logger, reference, _ = _fit(DigitsMLP("sgd"), max_steps=12, precision="bf16-mixed")
    _assert_close(logger.series("lrwatch/displacement")[1], reference.displacements(), "displacement")


def test_every_n_steps_measures_only_those_steps():
    trainer, logger, reference, _ = _fit(DigitsMLP("sgd"), max_steps=20, watch_kwargs={"every_n_steps": 3})
    steps, displacement = logger.series("lrwatch/displacement")
    np.testing.assert_array_equal(steps, np.arange(1, 21, 3))
    _assert_close(displacement, reference.displacements()[::3], "displacement")


def test_keep_records_bounds_the_host_copy_but_not_the_analysis():
    trainer, logger, _, watch = _fit(DigitsMLP("sgd"), max_steps=30, watch_kwargs={"keep_records": 10})
    records = watch.records()
    assert 10 <= len(records) < 10 + 7 and records.steps[-1] == 30  # whole chunks of 7 are dropped, oldest first
    assert len(logger.series("lrwatch/displacement")[0]) == 30 and watch.report.n_steps == 30


def test_report_equals_offline_analyze_of_the_logged_arrays():
    trainer, logger, _, watch = _fit(DigitsMLP("sgd", lr=0.5, scheduler="step"), max_steps=40)
    records = watch.records()
    offline = lrwatch.analyze(records.displacement, loss=records.loss, lr=records.lr[:, 0], steps=records.steps,
                              grad_norm=records.grad_norm, descent=records.descent, momentum=records.momentum[:, 0])
    assert watch.report == offline
    np.testing.assert_array_equal(records.descent, logger.series("lrwatch/descent")[1])
    np.testing.assert_array_equal(records.steps, logger.series("lrwatch/displacement")[0])


def test_nan_parameters_are_logged_not_raised():
    class Exploding(DigitsMLP):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("inf") if batch_idx >= 3 else loss

    trainer, logger, _, watch = _fit(Exploding("sgd"), max_steps=8)
    displacement = logger.series("lrwatch/displacement")[1]
    assert np.isfinite(displacement[:3]).all() and not np.isfinite(displacement[4:]).any()
    # The diagnosis flag is logged per step, steps increasing, exactly as the report has it.
    steps, flags = logger.series("lrwatch/diagnosis/diverging")
    assert np.all(np.diff(steps) > 0) and flags.max() == 1.0
    np.testing.assert_array_equal(flags, [float("diverging" in watch.report.active(s)) for s in steps])


def test_no_trainable_parameters_warns_and_does_not_crash():
    class Frozen(DigitsMLP):
        def configure_optimizers(self):  # the model trains nothing: its optimizer holds a frozen tensor
            return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1), requires_grad=False)], lr=0.1)

    with pytest.warns(UserWarning, match="no trainable parameters"):
        trainer, logger, _, _ = _fit(Frozen("sgd"), max_steps=3)
    assert "lrwatch/displacement" not in logger.metrics


def test_no_optimizer_warns_and_does_not_crash():
    class NoOptimizer(DigitsMLP):
        def configure_optimizers(self):
            return None

    with pytest.warns(UserWarning, match="no optimizer"):
        _fit(NoOptimizer("sgd"), max_steps=3)


def test_an_lr_search_before_the_fit_is_not_part_of_its_records():
    from pytorch_lightning.tuner import Tuner

    watch, logger = lrwatch.LRWatch(), RecordingLogger()
    trainer = make_trainer([watch], logger, max_steps=12)
    model = DigitsMLP("sgd", lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = Tuner(trainer).lr_find(model, train_dataloaders=digits_loader(batch_size=16), num_training=20)
    trainer.fit(model, digits_loader(batch_size=16))
    records = watch.records()
    assert records.steps.tolist() == list(range(1, 13))  # the fit's 12 steps, none of the search's 20
    np.testing.assert_allclose(records.lr[:, 0], found.suggestion())
    assert logger.series("lrwatch/lr/SGD")[0].tolist() == list(range(1, 13))


def test_records_before_any_fit_say_nothing_is_watched_yet():
    watch = lrwatch.LRWatch()
    assert watch.report is None and watch.names() == [] and watch.last_step() is None
    for ask in (watch.records, watch.transients, watch.steps_taken):
        with pytest.raises(ValueError, match="watches no optimizer yet"):
            ask()


@pytest.mark.parametrize(
    "kwargs, name",
    [({"flush_every": 0}, "flush_every"), ({"every_n_steps": -1}, "every_n_steps"), ({"flush_every": 2.5}, "flush_every"),
     ({"thresholds": "high"}, "thresholds"), ({"thresholds": {"windw": 50}}, "windw"), ({"keep_records": 0}, "keep_records"),
     ({"warn_gap": 0}, "warn_gap"), ({"group_series": 0}, "group_series"), ({"group_series": 2.0}, "group_series"),
     ({"log": "False"}, "log"), ({"warn": None}, "warn"), ({"diagnose": 0}, "diagnose")],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        lrwatch.LRWatch(**kwargs)


def _demo_run(name: str, logger=False, watch: lrwatch.LRWatch | None = None,
              **watch_kwargs) -> tuple[lrwatch.LRWatch, list[str]]:
    """One of examples/demo.py's runs (600 steps) with LRWatch (``watch``, or a new one made with
    ``watch_kwargs``); its report and the warnings it raised."""
    demo = runpy.run_path("examples/demo.py")
    lr, make_scheduler = demo["RUNS"][name]
    watch = watch or lrwatch.LRWatch(**watch_kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer([watch], logger, max_steps=600).fit(demo["DigitsClassifier"](lr, make_scheduler),
                                                        demo["digits_loader"]())
    return watch, [str(w.message) for w in caught if str(w.message).startswith("LRWatch[")]


def test_a_diagnosis_that_flickers_warns_again_only_after_a_gap_or_an_lr_drop():
    # the demo's too-high run: lr_too_high switches off and on before its drop at step 451 and after it
    watch, warned = _demo_run("too_high")
    episodes = [d.start for d in watch.report.diagnoses if d.kind == "lr_too_high"]
    after_drop = [s for s in episodes if s > 451]
    assert len(episodes) >= 4 and episodes[0] < 451 and after_drop
    assert [w.split(":")[0] for w in warned] == [f"LRWatch[SGD] lr_too_high from step {s}"
                                                  for s in (episodes[0], after_drop[0])]
    # a gap of one step: every episode warns
    watch, warned = _demo_run("too_high", warn_gap=1)
    assert len(warned) == len(episodes) == len([d for d in watch.report.diagnoses if d.kind == "lr_too_high"])
    assert _demo_run("too_high", warn=False)[1] == []
    assert len(_demo_run("too_high", log=False)[1]) == 2  # warnings are not logs


class UnfreezeBody(pl.callbacks.BaseFinetuning):
    """Lightning's fine-tuning callback: the first layer frozen, then unfrozen into a new param group at epoch 1."""

    def freeze_before_training(self, pl_module):
        self.freeze(pl_module.net[0])

    def finetune_function(self, pl_module, current_epoch, optimizer):
        if current_epoch == 1:
            self.unfreeze_and_add_param_group(modules=pl_module.net[0], optimizer=optimizer)


class HeadOnly(DigitsMLP):
    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


def test_a_param_group_added_mid_fit_is_measured_and_its_lr_logged_from_its_first_step():
    logger, reference, watch = RecordingLogger(), ReferenceRecorder(), lrwatch.LRWatch(flush_every=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer([UnfreezeBody(), reference, watch], logger, max_steps=24).fit(HeadOnly(), digits_loader())
    assert not [w for w in caught if "param group" in str(w.message)]
    # the body's group (BaseFinetuning's lr: the head's / 10) has its own lr tag from its first step, 9
    steps, lrs = logger.series("lrwatch/lr/SGD/pg1")
    np.testing.assert_array_equal(steps, np.arange(9, 25))
    _assert_close(lrs, [group_lrs[1] for group_lrs in reference.lrs[0][8:]], "the added group's lr")
    assert np.isnan(watch.records().lr[:8, 1]).all() and watch.records().lr.shape == (24, 2)
    # the independent reference: flat parameter vectors before each step; the body's group joins the
    # optimizer's at step 9 (epoch 1 of 8 batches), after the head's parameters
    before, head_size = reference.before[0], len(reference.before[0][0])
    vectors = [*before[:8], before[8][:head_size], *before[8:], reference.final[0]]
    expected = [float((b - a).norm()) for a, b in zip(vectors[:-1], vectors[1:]) if len(a) == len(b)]
    _, logged = logger.series("lrwatch/displacement")
    _assert_close(logged, np.array(expected), "displacement with a param group added mid-fit")
    assert len(before[8]) > head_size and logged[8:].min() > 0


class AddGroups(Callback):
    """Adds ``count`` one-parameter groups to the optimizer before step 3."""

    def __init__(self, count: int):
        self.count = count

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 3:
            for _ in range(self.count):
                trainer.optimizers[0].add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.01})


def test_groups_added_beyond_the_meters_spare_columns_are_warned_about_once():
    logger, watch = RecordingLogger(), lrwatch.LRWatch(flush_every=4, group_series=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer([AddGroups(SPARE_GROUPS + 2), watch], logger, max_steps=12).fit(DigitsMLP("sgd"), digits_loader())
    assert len([w for w in caught if "2 param group(s) were added" in str(w.message)]) == 1
    assert watch.records().lr.shape == (12, 1 + SPARE_GROUPS)
    assert f"lrwatch/lr/SGD/pg{SPARE_GROUPS}" in logger.metrics and f"lrwatch/lr/SGD/pg{SPARE_GROUPS + 1}" not in logger.metrics


def test_a_second_fit_with_the_same_callback_warns_afresh():
    watch, first = _demo_run("too_high")
    assert _demo_run("too_high", watch=watch)[1] == first and len(first) == 2


def test_the_live_text_keeps_to_the_latest_diagnoses(tmp_path, monkeypatch):
    original, written = watch_module.diagnoses_markdown, []

    def recording(report, latest=None):
        written.append((len(report.diagnoses), latest))
        return original(report, latest)

    monkeypatch.setattr(watch_module, "diagnoses_markdown", recording)
    _demo_run("too_high", logger=pl.loggers.TensorBoardLogger(str(tmp_path), name="run", version=""))
    assert written and {latest for _, latest in written} == {watch_module.TEXT_LATEST}
    assert max(n for n, _ in written) >= 4  # the table was written as its diagnoses grew


def test_which_new_episodes_are_news():
    def report(*episodes, drops=()):
        diagnoses = [Diagnosis(kind, start, end, "m", {}) for kind, start, end in episodes]
        return Report(Signature("step", list(drops), [0.1] * len(drops), None, [], "lr"), diagnoses, 5000, 0.0)

    first, again = ("lr_too_high", 100, 200), ("lr_too_high", 300, None)
    assert _news(Diagnosis(*first, "m", {}), report(first), gap=1000)
    assert not _news(Diagnosis(*again, "m", {}), report(first, again), gap=1000)
    assert not _news(Diagnosis(*again, "m", {}), report(first, again), gap=100)  # off for 99 steps: 201-299
    assert _news(Diagnosis(*again, "m", {}), report(first, again), gap=99)
    assert _news(Diagnosis(*again, "m", {}), report(first, again, drops=[250]), gap=1000)  # the lr dropped
    assert not _news(Diagnosis(*again, "m", {}), report(first, again, drops=[150, 301]), gap=1000)
    spikes = ("diverging", 100, 110), ("diverging", 120, None)
    assert _news(Diagnosis(*spikes[1], "m", {}), report(*spikes), gap=1000)  # diverging: always


def test_unknown_option_raises():
    with pytest.raises(TypeError):
        lrwatch.LRWatch(flush_evry=5)


def test_optimizer_interaction_monitors_with_adamw_and_step_drops():
    class AdamWSteps(DigitsMLP):
        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=0.05)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=12, gamma=0.2)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    trainer, logger, reference, watch = _fit(AdamWSteps(), max_steps=30)
    lr = 0.01 * 0.2 ** (np.arange(30) // 12)
    _assert_close(logger.series("lrwatch/adamw/effective_decay/pg0")[1], lr * 0.05, "effective decay")
    _assert_close(logger.series("lrwatch/adam/step_per_lr/pg0")[1], reference.displacements() / lr, "step per lr")
    t = np.arange(1, 31)
    _assert_close(logger.series("lrwatch/adam/bias_factor")[1], (1 - 0.9**t) / np.sqrt(1 - 0.999**t), "bias factor")
    # Two drops (updates 13 and 25); each transient is m after over gamma * median m of the 5 before.
    m = reference.displacements()
    expected = [(i + 1, m[i] / (0.2 * np.median(m[i - 5:i]))) for i in (12, 24)]
    assert [s for s, _ in watch.transients()] == [13, 25]
    np.testing.assert_allclose([r for _, r in watch.transients()], [r for _, r in expected], rtol=RTOL)
    assert logger.series("lrwatch/momentum_transient")[0].tolist() == [13, 25]
    # lr*wd fell 25x by the second drop with wd unchanged: weight_decay_faded from step 25 on.
    steps, flags = logger.series("lrwatch/diagnosis/weight_decay_faded")
    np.testing.assert_array_equal(flags, (steps >= 25).astype(float))


def test_log_false_writes_nothing_to_the_loggers_of_a_real_fit(tmp_path):
    """Lightning sets every callback's ``log`` attribute to the module's ``log`` method at setup: the option,
    kept under that name, was overwritten by a (truthy) method, and ``LRWatch(log=False)`` logged everything."""
    tensorboard = pl.loggers.TensorBoardLogger(tmp_path)
    logger, watch = RecordingLogger(), lrwatch.LRWatch(flush_every=7, log=False)
    make_trainer([watch], [logger, tensorboard], max_steps=15).fit(DigitsMLP("sgd", lr=0.5), digits_loader())
    assert not [tag for tag in logger.metrics if tag.startswith("lrwatch/")]
    assert len(watch.records()) == 15 and watch.report is not None  # measured and analysed all the same
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    written = {value.tag for path in tmp_path.rglob("events.out.tfevents.*")
               for event in EventFileLoader(str(path)).Load() for value in event.summary.value}
    assert not [tag for tag in written if "lrwatch" in tag or "custom_scalars" in tag]  # no scalar, text or layout


def _assert_same_up_to_rounding(actual, expected, where="report"):
    """Equal structure and values, floats to 1e-9 relative."""
    assert type(actual) is type(expected), where
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            _assert_same_up_to_rounding(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_same_up_to_rounding(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-9, nan_ok=True), where
    else:
        assert actual == expected, where


def _checkpointed_fit(folder, watch, max_steps, ckpt=None, late=False):
    """DigitsMLP under SGD with a StepLR, checkpointed every 24 steps (3 epochs of the fixed-order loader)."""
    saver = pl.callbacks.ModelCheckpoint(dirpath=folder, every_n_train_steps=24, save_top_k=-1)
    trainer = pl.Trainer(max_steps=max_steps, logger=False, callbacks=[watch, saver], enable_progress_bar=False,
                         enable_model_summary=False, **({"strategy": LateRestore()} if late else {"accelerator": "cpu", "devices": 1}))
    trainer.fit(DigitsMLP("sgd", lr=0.5, scheduler="step"), digits_loader(), ckpt_path=ckpt)
    return watch


@pytest.mark.parametrize("late", [False, True])
def test_a_resumed_fit_reports_as_the_uninterrupted_one(tmp_path, late):
    """The analyzers travel in the checkpoint. Strategies that restore callbacks after on_fit_start (late) had
    them stashed for a later fit: the resumed run analysed only its second half."""
    straight = _checkpointed_fit(tmp_path / "straight", lrwatch.LRWatch(flush_every=7), 48)
    _checkpointed_fit(tmp_path / "first", lrwatch.LRWatch(flush_every=7), 24)
    resumed = _checkpointed_fit(tmp_path / "second", lrwatch.LRWatch(flush_every=7), 48,
                                ckpt=next((tmp_path / "first").glob("*.ckpt")), late=late)
    assert resumed.report.n_steps == 48
    # equal but for the descent's last digits: a resumed meter starts without the polarization scale the straight
    # one had re-aimed at its chunks, and that scale sets the rounding (not the value) of the descent
    _assert_same_up_to_rounding(resumed.report.to_dict(), straight.report.to_dict())
    # a new fit with the same callback afterwards starts afresh
    again = _checkpointed_fit(tmp_path / "again", resumed, 24)
    assert again.report.n_steps == 24


@pytest.mark.parametrize("late", [False, True])
def test_a_resumed_fit_measured_every_fifth_step_measures_the_same_steps(tmp_path, late):
    """The meter counted its steps from the resume: measured 25, 30, … where the straight run measured 26, 31, …,
    and the resumed report read another schedule."""
    def watch():
        return lrwatch.LRWatch(flush_every=7, every_n_steps=5)

    straight = _checkpointed_fit(tmp_path / "straight", watch(), 48)
    _checkpointed_fit(tmp_path / "first", watch(), 24)
    resumed = _checkpointed_fit(tmp_path / "second", watch(), 48, ckpt=next((tmp_path / "first").glob("*.ckpt")),
                                late=late)
    assert resumed.records().steps.tolist() == [26, 31, 36, 41, 46]
    assert resumed.steps_taken() == straight.steps_taken() == 48
    assert straight.records().steps.tolist() == list(range(1, 48, 5))
    _assert_same_up_to_rounding(resumed.report.to_dict(), straight.report.to_dict())


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_a_fit_ended_by_an_exception_still_logs_its_last_steps(error):
    """With flush_every=50 nothing had reached the logger, the records or the report by step 30."""
    class FailsAtStep30(DigitsMLP):
        def training_step(self, batch, batch_idx):
            if self.trainer.global_step == 30:
                raise error("stop")
            return super().training_step(batch, batch_idx)

    logger, watch = RecordingLogger(), lrwatch.LRWatch()
    with pytest.raises((SystemExit, RuntimeError)):  # Lightning turns an interrupt into SystemExit
        make_trainer([watch], logger, max_steps=100).fit(FailsAtStep30("sgd", lr=0.5), digits_loader())
    np.testing.assert_array_equal(logger.series("lrwatch/displacement")[0], np.arange(1, 31))
    assert len(watch.records()) == 30 and watch.report.n_steps == 30


def test_a_resumed_fine_tuning_run_keeps_its_lr_tags_and_weight_decay_reference(tmp_path):
    """Resumed after BaseFinetuning added a group, the optimizer has two groups at fit start: their tags were
    pg0/pg1 where the first part had logged lrwatch/lr/AdamW and .../pg1 (the reader then saw three lrs). The
    weight-decay rule was not in the checkpoint: the resumed part measured the fade from the lr at the resume."""
    class AdamWHead(HeadOnly):
        def configure_optimizers(self):
            opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=0.01, weight_decay=0.05)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=12, gamma=0.2)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def fit(folder, steps, ckpt=None):
        logger, watch = RecordingLogger(), lrwatch.LRWatch(flush_every=5)
        saver = pl.callbacks.ModelCheckpoint(dirpath=folder, every_n_train_steps=24, save_top_k=-1)
        pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=[UnfreezeBody(), watch, saver]).fit(
            AdamWHead(), digits_loader(), ckpt_path=ckpt)
        return logger

    first = fit(tmp_path / "a", 24)
    second = fit(tmp_path / "b", 32, ckpt=next((tmp_path / "a").glob("*.ckpt")))
    lr_tags = {tag for logger in (first, second) for tag in logger.metrics if tag.startswith("lrwatch/lr/")}
    assert lr_tags == {"lrwatch/lr/AdamW", "lrwatch/lr/AdamW/pg1"}
    steps, faded = second.series("lrwatch/diagnosis/weight_decay_faded")  # lr·wd 25x below its start from 25
    np.testing.assert_array_equal(faded, (steps >= 25).astype(float))


def test_state_a_validate_loaded_from_a_checkpoint_does_not_carry_into_a_later_fresh_fit(tmp_path):
    class Validated(DigitsMLP):
        def validation_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx)

    _checkpointed_fit(tmp_path / "first", lrwatch.LRWatch(flush_every=7), 24)
    watch, probe, drop = lrwatch.LRWatch(flush_every=7), lrwatch.StabilityProbe(every_n_steps=5), lrwatch.EarlyStepDrop()
    trainer = make_trainer([watch, probe, drop], False, max_steps=10)
    trainer.validate(Validated("sgd", lr=0.5, scheduler="step"), digits_loader(),
                     ckpt_path=next((tmp_path / "first").glob("*.ckpt")))
    trainer.fit(Validated("sgd", lr=0.5, scheduler="step"), digits_loader())
    assert watch.report.n_steps == 10  # its own 10 steps, not the checkpoint's 24 + 10


def test_fit_state_tells_which_fit_loaded_state_belongs_to():
    from lrwatch.callbacks._resume import FitState

    state = FitState()
    state._state_loaded()  # restored before on_fit_start (most strategies): this fit resumes
    assert state._fit_starts() and state._in_fit
    state.teardown(None, None, "fit")
    state._fit_starts()
    state._state_loaded()  # restored after on_fit_start (FSDP, ModelParallel, DeepSpeed): applied at once ...
    state.teardown(None, None, "fit")
    assert not state._fit_starts()  # ... and not carried into the next fit
    state.teardown(None, None, "fit")
    state._state_loaded()  # restored by validate/test/predict(ckpt_path=...): no fit follows from it
    state.teardown(None, None, "validate")
    assert not state._fit_starts()
    state.on_exception(None, None, RuntimeError())  # a fit that failed (Lightning calls no teardown then) ...
    state._state_loaded()  # ... and the fit that resumes from a checkpoint afterwards
    assert state._fit_starts()


class PerParameterAdamW(DigitsMLP):
    """AdamW with one param group per parameter (4 groups), each at its own lr."""

    def configure_optimizers(self):
        groups = [{"params": [p], "lr": 0.01 * 0.5**i} for i, p in enumerate(self.parameters())]
        return torch.optim.AdamW(groups, weight_decay=0.05)


@pytest.mark.parametrize("group_series, logged", [(2, 2), (None, 4), (8, 4)])
def test_group_series_bounds_the_per_group_tags_not_the_measurement(group_series, logged):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, logger, reference, watch = _fit(PerParameterAdamW(), max_steps=9,
                                                 watch_kwargs={"group_series": group_series})
    per_group = [f"lrwatch/lr/AdamW/pg{i}" for i in range(4)] + [f"lrwatch/adam/step_per_lr/pg{i}" for i in range(4)] + [
        f"lrwatch/adamw/effective_decay/pg{i}" for i in range(4)]
    assert {t for t in logger.metrics if t in per_group} == {t for t in per_group if int(t[-1]) < logged}
    for i in range(logged):
        _assert_close(logger.series(f"lrwatch/lr/AdamW/pg{i}")[1], [lrs[i] for lrs in reference.lrs[0]], f"lr {i}")
    # every group is measured whatever is logged
    _assert_close(logger.series("lrwatch/displacement")[1], reference.displacements(), "displacement")
    np.testing.assert_allclose(watch.records().lr, np.array(reference.lrs[0]), rtol=RTOL)
    warned = [w for w in caught if "per-group series" in str(w.message)]
    assert len(warned) == (logged < 4) and (not warned or "group_series=None" in str(warned[0].message))


def _stub_trainer(strategy_name: str, world_size: int, sharding=None, module="pytorch_lightning.strategies",
                  subclass: str | None = None):
    """An object with what the strategy checks read: the strategy's class (named ``strategy_name``,
    defined in ``module``, or a ``subclass`` of it), its sharding, the world."""
    strategy_class = type(strategy_name, (), {"__module__": module})
    if subclass is not None:
        strategy_class = type(subclass, (strategy_class,), {"__module__": "user_code"})
    strategy = strategy_class()
    if sharding is not None:
        strategy.sharding_strategy = sharding
    return type("Trainer", (), {"strategy": strategy, "world_size": world_size})()


PLAIN = [torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)]


@pytest.mark.parametrize("name, world, sharded", [("FSDPStrategy", 2, True), ("ModelParallelStrategy", 4, True),
                                                  ("DDPStrategy", 2, False), ("FSDPStrategy", 1, False)])
@pytest.mark.parametrize("module", ["pytorch_lightning.strategies.fsdp", "lightning.pytorch.strategies.fsdp"])
def test_sharded_strategies_are_reduced_over_the_world(name, world, sharded, module):
    assert _is_sharded(_stub_trainer(name, world, module=module), PLAIN) is sharded
    # a user's subclass of Lightning's strategy is that strategy
    assert _is_sharded(_stub_trainer(name, world, module=module, subclass="MyStrategy"), PLAIN) is sharded


def test_a_strategy_is_recognised_by_its_lightning_class_not_its_name_or_by_dtensor_parameters():
    assert not _is_sharded(_stub_trainer("FSDPStrategy", 2, module="someone_elses_library"), PLAIN)
    # a custom strategy whose optimizer holds DTensors (they carry placements): reduced over the world
    dtensor = torch.nn.Parameter(torch.ones(2))
    dtensor.placements, dtensor.device_mesh = (), object()  # what a DTensor carries
    custom = _stub_trainer("MyShardingStrategy", 2, module="user_code")
    assert _is_sharded(custom, [torch.optim.SGD([dtensor], lr=0.1)])
    assert not _is_sharded(_stub_trainer("MyShardingStrategy", 1, module="user_code"),
                           [torch.optim.SGD([dtensor], lr=0.1)])


def test_fsdp1_hybrid_sharding_is_recognised():
    from torch.distributed.fsdp import ShardingStrategy

    assert _fsdp1_hybrid(_stub_trainer("FSDPStrategy", 4, ShardingStrategy.HYBRID_SHARD))
    assert _fsdp1_hybrid(_stub_trainer("FSDPStrategy", 4, ShardingStrategy._HYBRID_SHARD_ZERO2))
    assert not _fsdp1_hybrid(_stub_trainer("FSDPStrategy", 4, ShardingStrategy.FULL_SHARD))
    assert not _fsdp1_hybrid(_stub_trainer("ModelParallelStrategy", 4))
    assert _fsdp1_hybrid(_stub_trainer("FSDPStrategy", 4, ShardingStrategy.HYBRID_SHARD, subclass="MyFSDP"))
