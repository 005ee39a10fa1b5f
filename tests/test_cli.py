"""`lrwatch report` and the run reading behind it (``lrwatch.tensorboard``), on event files written by real
Lightning runs. The event-file decoder itself is tested in ``test_event_files.py``.

Two runs are trained once per module on scikit-learn's bundled digits (conftest's DigitsMLP, StepLR stepped
every optimizer step):
- "monitor": only Lightning's LearningRateMonitor (two param groups, with its ``-momentum`` and
  ``-weight_decay`` tags): the lr-only path;
- "watched": the lrwatch contract tags from the ``lrwatch_writer`` fixture, plus LearningRateMonitor.
Expected drops come from the lr each update actually used, recorded from the optimizer by the writer.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter

import lrwatch
from lrwatch import tags
from lrwatch._lightning import Callback, pl
from lrwatch.cli import EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK, main
from lrwatch.diagnosis import Diagnosis, Report
from lrwatch.signature import Signature
from lrwatch.tensorboard import (
    LIGHTNING_STEP_OFFSET,
    _latest_per_step,
    custom_scalars_layout,
    diagnoses_markdown,
    read_runs,
    write_layout,
)
from tests.conftest import DigitsMLP, ForcedDrop, digits_loader, make_trainer

MAX_STEPS = 20


class ContractTagWriter(Callback):
    """Test stand-in for ``lrwatch.LRWatch``: logs the contract tags at every optimizer step through
    ``trainer.logger.log_metrics(..., step=global_step after the step)``, and the layout through
    ``write_layout``. The lr logged is the one the update used (read before the optimizer steps)."""

    @staticmethod
    def _flat(optimizer, attr="data"):
        return torch.cat([getattr(p, attr).detach().flatten() for g in optimizer.param_groups for p in g["params"]])

    def on_train_start(self, trainer, pl_module):
        write_layout(trainer.logger.experiment, custom_scalars_layout([tags.lr_tag("SGD")]))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._before = self._flat(optimizer).clone()
        self._grad = self._flat(optimizer, "grad").clone()
        self._grad_norm = float(self._grad.norm())
        self._lr = optimizer.param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        optimizer = trainer.optimizers[0]
        step = self._flat(optimizer) - self._before
        metrics = {
            tags.DISPLACEMENT: float(step.norm()),
            tags.GRAD_NORM: self._grad_norm,
            tags.DESCENT: -float(step @ self._grad),
            tags.MOMENTUM: 0.0,
            tags.LOSS: float(outputs["loss"]),
            tags.lr_tag("SGD"): self._lr,
        }
        trainer.logger.log_metrics(metrics, step=trainer.global_step)


class LrUsed(Callback):
    """Independent record of the lr of the first param group that each optimizer step used."""

    def __init__(self):
        self.lr: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lr.append(optimizer.param_groups[0]["lr"])


@pytest.fixture(scope="module")
def lrwatch_writer():
    """Factory of the callback that writes the lrwatch tags; ``lambda: lrwatch.LRWatch(flush_every=7)`` passes
    these tests too and replaces the stand-in once LRWatch is the reference."""
    return ContractTagWriter


def _train(logdir: Path, name: str, model, callbacks) -> None:
    logger = pl.loggers.TensorBoardLogger(str(logdir), name=name, version="")
    make_trainer(callbacks, logger, max_steps=MAX_STEPS, log_every_n_steps=1).fit(model, digits_loader())


@pytest.fixture(scope="module")
def logs(tmp_path_factory, lrwatch_writer):
    """A log folder with the "monitor" and "watched" runs; returns (logdir, per run the lr each update used)."""
    logdir = tmp_path_factory.mktemp("logs")
    lr_used = {"monitor": LrUsed(), "watched": LrUsed()}
    monitor = pl.callbacks.LearningRateMonitor(logging_interval="step", log_momentum=True, log_weight_decay=True)
    model = DigitsMLP("sgd_momentum_groups", lr=0.1, scheduler="step")
    _train(logdir, "monitor", model, [lr_used["monitor"], monitor])
    monitor = pl.callbacks.LearningRateMonitor(logging_interval="step")
    model = DigitsMLP("sgd", lr=0.1, scheduler="step")
    _train(logdir, "watched", model, [lr_used["watched"], lrwatch_writer(), monitor])
    return logdir, {name: np.array(recorder.lr) for name, recorder in lr_used.items()}


class NamedScheduler(DigitsMLP):
    """DigitsMLP whose scheduler is given a name: LearningRateMonitor then logs its lr as ``my_lr[/<group>]``."""

    def configure_optimizers(self):
        config = super().configure_optimizers()
        config["lr_scheduler"]["name"] = "my_lr"
        return config


def _expected_drops(lr_used: np.ndarray) -> tuple[list[int], list[float]]:
    """Steps (1-based update count) whose lr is below the previous update's, and new/old per drop."""
    lower = np.flatnonzero(lr_used[1:] < lr_used[:-1]) + 1
    return [int(i) + 1 for i in lower], [float(lr_used[i] / lr_used[i - 1]) for i in lower]


def _run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["report", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(err: str, pattern: str) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]


# ---- the report on real runs ---------------------------------------------------------------------------------


def test_lr_only_report_finds_steplr_drops_and_factors(logs, capsys):
    logdir, lr_used = logs
    code, out, err = _run_cli(capsys, logdir, "--run", "monitor", "--json")
    assert (code, err) == (EXIT_OK, "")
    entry = json.loads(out)["monitor"]
    drops, factors = _expected_drops(lr_used["monitor"])
    assert len(drops) == 3
    assert entry["analysis"] == "lr-only"
    assert entry["series"]["lr"] == ["lr-SGD/body", "lr-SGD/pg2"]  # the -momentum tags are not lrs
    assert entry["schedule"]["source"] == "lr"
    assert entry["schedule"]["drops"] == drops
    assert entry["schedule"]["factors"] == pytest.approx(factors, rel=1e-6)


def test_lrwatch_report_reads_every_contract_series(logs, capsys):
    logdir, lr_used = logs
    code, out, err = _run_cli(capsys, logdir, "--json")
    assert (code, err) == (EXIT_OK, "")
    document = json.loads(out)
    assert set(document) == {"monitor", "watched"}
    entry = document["watched"]
    assert entry["analysis"] == "displacement"
    assert entry["series"] == {
        "lr": [tags.lr_tag("SGD")],
        "displacement": [tags.DISPLACEMENT],
        "grad_norm": [tags.GRAD_NORM],
        "descent": [tags.DESCENT],
        "momentum": [tags.MOMENTUM],
        "loss": [tags.LOSS],
    }
    assert entry["notes"] == []
    assert entry["steps"] == [1, MAX_STEPS] and entry["n_steps"] == MAX_STEPS
    drops, factors = _expected_drops(lr_used["watched"])
    assert entry["schedule"]["drops"] == drops
    assert entry["schedule"]["factors"] == pytest.approx(factors, rel=1e-6)


def test_text_report_names_schedule_drops_and_lr_only_runs(logs, capsys):
    logdir, lr_used = logs
    code, out, err = _run_cli(capsys, logdir)
    assert (code, err) == (EXIT_OK, "")
    monitor, watched = out.split("\n\n== ")
    assert monitor.startswith("== monitor ==") and watched.startswith("watched ==")
    assert "lr-only analysis" in monitor and "lr-only" not in watched
    for step in _expected_drops(lr_used["monitor"])[0]:
        assert f"step {step} (×0.5)" in monitor
    for step in _expected_drops(lr_used["watched"])[0]:
        assert f"step {step} (×0.5)" in watched


def test_lightning_tags_are_shifted_onto_the_optimizer_step_axis(logs):
    """LearningRateMonitor logs the lr at _batches_that_stepped before the update: shifted by one step it must
    equal the lr each update used, as the lrwatch tag records it."""
    logdir, lr_used = logs
    run = read_runs(logdir, run="watched")["watched"]
    (track,) = run.tracks
    np.testing.assert_array_equal(track.steps, np.arange(1, MAX_STEPS + 1))
    np.testing.assert_allclose(track.lr[tags.lr_tag("SGD")], lr_used["watched"], rtol=1e-7)
    monitor = run.scalars["lr-SGD"]
    np.testing.assert_array_equal(monitor.steps + LIGHTNING_STEP_OFFSET, track.steps)
    np.testing.assert_array_equal(monitor.values, track.lr[tags.lr_tag("SGD")])
    (monitor_track,) = read_runs(logdir, run="monitor")["monitor"].tracks
    np.testing.assert_array_equal(monitor_track.steps, np.arange(1, MAX_STEPS + 1))
    np.testing.assert_allclose(monitor_track.analysis_lr, lr_used["monitor"], rtol=1e-7)


def test_progress_lines_go_to_stderr_and_keep_json_clean(logs, capsys):
    logdir, _ = logs
    code, out, err = _run_cli(capsys, logdir, "--json", "--progress")
    assert code == EXIT_OK
    assert set(json.loads(out)) == {"monitor", "watched"}
    lines = err.strip().splitlines()
    assert [line.split(" ")[1] for line in lines] == ["[1/2]", "[2/2]"]
    assert all(line.startswith("lrwatch: ") and "records" in line for line in lines)


@pytest.mark.parametrize("n_runs, terminal, expected_lines", [(4, True, 4), (4, False, 0), (2, True, 0)])
def test_progress_by_default_only_on_a_terminal_with_many_runs(capsys, monkeypatch, tmp_path, n_runs, terminal,
                                                               expected_lines):
    for i in range(n_runs):
        with SummaryWriter(str(tmp_path / f"run{i}")) as writer:
            for step in range(1, 6):
                writer.add_scalar(tags.DISPLACEMENT, 1.0, step)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    code, out, err = _run_cli(capsys, tmp_path, "--json")
    assert code == EXIT_OK and len(json.loads(out)) == n_runs
    assert len(err.splitlines()) == expected_lines


def test_console_script_runs_in_a_fresh_process(logs):
    logdir, _ = logs
    script = Path(sys.executable).with_name("lrwatch")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lrwatch.cli"]
    done = subprocess.run([*command, "report", str(logdir), "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_OK, done.stderr
    assert set(json.loads(done.stdout)) == {"monitor", "watched"}
    missing = subprocess.run([*command, "report", str(logdir / "nope")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == EXIT_FAILED and missing.stdout == ""
    _assert_one_line_error(missing.stderr, r"^lrwatch: error: logdir .*nope.* does not exist$")


# ---- the plot ------------------------------------------------------------------------------------------------


def test_plot_png_renders_a_row_per_run(logs, capsys, tmp_path):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    logdir, _ = logs
    png = tmp_path / "report.png"
    code, out, err = _run_cli(capsys, logdir, "--plot", png)
    assert (code, err) == (EXIT_OK, "")
    from lrwatch.plot import DPI, FIGURE_WIDTH_INCHES, ROW_HEIGHT_INCHES

    height, width, _ = matplotlib_image.imread(png).shape
    assert (width, height) == (FIGURE_WIDTH_INCHES * DPI, 2 * ROW_HEIGHT_INCHES * DPI)


def test_plot_figure_has_log_axis_drop_lines_and_diagnosis_spans(logs):
    pytest.importorskip("matplotlib")
    from lrwatch.plot import plot_report

    logdir, _ = logs
    (track,) = read_runs(logdir, run="watched")["watched"].tracks
    report = Report(
        Signature("step", [6, 11, 16], [0.5, 0.5, 0.5], None, [(1, 5), (6, 10), (11, 15), (16, 20)], "lr"),
        [Diagnosis("lr_too_high", 2, 4, "m", {}), Diagnosis("diverging", 18, None, "m", {}),
         Diagnosis("lr_too_high", 8, 9, "m", {})],
        MAX_STEPS,
    )
    figure = plot_report([("watched", track, report)])
    schedule_ax, loss_ax = figure.axes[:2]
    assert schedule_ax.get_yscale() == "log"
    labels = [line.get_label() for line in schedule_ax.get_lines()]
    assert labels[:2] == [f"lr ({tags.lr_tag('SGD')})", "displacement"]
    np.testing.assert_array_equal(schedule_ax.get_lines()[1].get_ydata(), track.displacement)
    for ax in (schedule_ax, loss_ax):
        vertical = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert vertical == [6, 11, 16]
        spans = [patch.get_x() for patch in ax.patches]  # axvspan's Rectangle starts half a step early
        assert spans == [1.5, 17.5, 7.5]
    legend = [text.get_text() for text in schedule_ax.get_legend().get_texts()]
    assert legend[2:] == ["lr drop", "lr_too_high", "diverging"]
    np.testing.assert_array_equal(loss_ax.get_lines()[0].get_ydata(), track.loss)


def test_the_loss_panel_is_logarithmic_only_for_a_loss_spanning_decades(logs):
    pytest.importorskip("matplotlib")
    from lrwatch.plot import plot_report

    logdir, _ = logs
    (track,) = read_runs(logdir, run="watched")["watched"].tracks
    report = Report(Signature("constant", [], [], None, [], "lr"), [], MAX_STEPS)
    loss_ax = plot_report([("watched", track, report)]).axes[1]
    assert (loss_ax.get_yscale(), loss_ax.get_title()) == ("linear", "loss")
    blown_up = dataclasses.replace(track, loss=track.loss * np.logspace(0, 8, len(track.loss)))  # as a divergence
    loss_ax = plot_report([("watched", blown_up, report)]).axes[1]
    assert (loss_ax.get_yscale(), loss_ax.get_title()) == ("log", "loss (log scale)")


def test_plot_without_matplotlib_is_a_one_line_error(logs, capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.delitem(sys.modules, "lrwatch.plot", raising=False)
    code, out, err = _run_cli(capsys, logs[0], "--plot", tmp_path / "x.png", "--json")
    assert (code, out) == (EXIT_FAILED, "")
    _assert_one_line_error(err, r"^lrwatch: error: --plot needs matplotlib .*pip install 'lrwatch\[plot\]'$")


def test_plot_into_a_missing_directory_is_a_one_line_error(logs, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = _run_cli(capsys, logs[0], "--plot", tmp_path / "no" / "such" / "dir.png", "--json")
    assert (code, out) == (EXIT_FAILED, "")
    _assert_one_line_error(err, r"^lrwatch: error: cannot write plot ")


# ---- bad input -----------------------------------------------------------------------------------------------


def _copy_run(logs, tmp_path: Path, source: str, target: str) -> Path:
    (path,) = (logs[0] / source).glob("events.out.tfevents.*")
    (tmp_path / target).mkdir(parents=True)
    return Path(shutil.copy(path, tmp_path / target / path.name))


def _record_boundaries(path: Path) -> list[int]:
    """Byte offsets at which records start, from the TFRecord framing (uint64 length, then 4 + length + 4)."""
    raw, offsets, position = path.read_bytes(), [], 0
    while position < len(raw):
        offsets.append(position)
        position += 16 + int.from_bytes(raw[position : position + 8], "little")
    return offsets


def test_missing_logdir(capsys, tmp_path):
    code, out, err = _run_cli(capsys, tmp_path / "missing", "--json")
    assert (code, out) == (EXIT_FAILED, "")
    _assert_one_line_error(err, r"^lrwatch: error: logdir '.*missing' does not exist$")


def test_logdir_that_is_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    code, out, err = _run_cli(capsys, tmp_path / "file")
    assert (code, out) == (EXIT_FAILED, "")
    _assert_one_line_error(err, r"is not a directory$")


def test_empty_logdir(capsys, tmp_path):
    (tmp_path / "sub").mkdir()
    code, out, err = _run_cli(capsys, tmp_path, "--json")
    assert (code, out) == (EXIT_FAILED, "")
    _assert_one_line_error(err, r"^lrwatch: error: logdir .* holds no TensorBoard event files")


def test_truncated_event_file_reports_what_came_before(logs, capsys, tmp_path):
    path = _copy_run(logs, tmp_path, "watched", "cut")
    raw = path.read_bytes()
    boundaries = _record_boundaries(path)
    cut = len(raw) // 2 if len(raw) // 2 not in boundaries else len(raw) // 2 + 3  # inside a record
    n_complete = sum(end <= cut for end in boundaries[1:] + [len(raw)])
    path.write_bytes(raw[:cut])
    code, out, err = _run_cli(capsys, tmp_path, "--json")
    assert code == EXIT_INCOMPLETE
    _assert_one_line_error(err, r"^lrwatch: warning: run 'cut': events\.out\.tfevents\.\S+: truncated at byte ")
    entry = json.loads(out)["cut"]
    assert f"truncated at byte {boundaries[n_complete]} of {cut}; read the {n_complete} records before it" in err
    assert entry["problems"] and 1 <= entry["n_steps"] < MAX_STEPS


def test_random_bytes_file_alone_is_a_one_line_error(capsys, tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "events.out.tfevents.1.host").write_bytes(np.random.default_rng(0).bytes(5000))
    code, out, err = _run_cli(capsys, tmp_path, "--json")
    assert (code, out) == (EXIT_FAILED, "")
    _assert_one_line_error(err, r"^lrwatch: error: no usable .*\(run 'junk': events\.out\.tfevents\.1\.host: "
                                r"corrupted .*at byte 0 ")


def test_corrupted_run_next_to_a_good_one_gets_a_no_data_row(logs, capsys, tmp_path):
    _copy_run(logs, tmp_path, "watched", "good")
    path = _copy_run(logs, tmp_path, "watched", "flipped")
    raw = bytearray(path.read_bytes())
    boundaries = _record_boundaries(path)
    raw[boundaries[1] + 20] ^= 0xFF  # inside the second record's payload: its checksum no longer matches
    path.write_bytes(bytes(raw))
    code, out, err = _run_cli(capsys, tmp_path, "--json")
    assert code == EXIT_INCOMPLETE
    _assert_one_line_error(err, r"^lrwatch: warning: run 'flipped': .*corrupted record 1 at byte \d+ \(checksum")
    document = json.loads(out)
    assert document["good"]["analysis"] == "displacement"
    assert document["flipped"] == {"run": "flipped", "error": document["flipped"]["error"]}
    assert "corrupted record 1" in document["flipped"]["error"]
    code, out, err = _run_cli(capsys, tmp_path)
    assert code == EXIT_INCOMPLETE and "== flipped ==\nno data: " in out


def test_run_without_known_tags(logs, capsys, tmp_path):
    with SummaryWriter(str(tmp_path / "other")) as writer:
        writer.add_scalar("accuracy", 0.5, 1)
    code, out, err = _run_cli(capsys, tmp_path, "--json")
    assert (code, out) == (EXIT_FAILED, "")
    _assert_one_line_error(err, r"^lrwatch: error: no usable .*\(run 'other': no lrwatch or learning-rate tags "
                                r"\(its 1 scalar tags: accuracy\)")
    _copy_run(logs, tmp_path, "monitor", "good")
    code, out, err = _run_cli(capsys, tmp_path)
    assert code == EXIT_INCOMPLETE and "== other ==\nno data: no lrwatch or learning-rate tags" in out
    _assert_one_line_error(err, r"^lrwatch: warning: run 'other': no data")


def test_data_that_analyze_rejects(logs, capsys, tmp_path):
    """A negative displacement cannot be measured: analyze's ValueError becomes a run without data."""
    with SummaryWriter(str(tmp_path / "negative")) as writer:
        for step in range(1, 6):
            writer.add_scalar(tags.DISPLACEMENT, -1.0, step)
    code, out, err = _run_cli(capsys, tmp_path, "--json")
    assert (code, out) == (EXIT_FAILED, "")
    _assert_one_line_error(err, r"^lrwatch: error: no usable .*\(run 'negative': analysis failed: .*displacement")
    _copy_run(logs, tmp_path, "monitor", "good")
    code, out, err = _run_cli(capsys, tmp_path, "--json")
    assert code == EXIT_INCOMPLETE and json.loads(out)["negative"]["error"].startswith("no data: analysis failed: ")
    _assert_one_line_error(err, r"^lrwatch: warning: run 'negative': no data: analysis failed: ")


def test_unknown_run(logs, capsys):
    code, out, err = _run_cli(capsys, logs[0], "--run", "nope", "--json")
    assert (code, out) == (EXIT_FAILED, "")
    _assert_one_line_error(err, r"^lrwatch: error: no run 'nope' under .*; runs: monitor, watched$")


def test_a_named_schedulers_lr_is_read_from_the_tag_given(capsys, tmp_path):
    lr_used = LrUsed()
    monitor = pl.callbacks.LearningRateMonitor(logging_interval="step")
    _train(tmp_path, "named", NamedScheduler("sgd_momentum_groups", lr=0.1, scheduler="step"), [lr_used, monitor])
    # by default its tags are not recognised: no data, and the tags it has are listed
    code, out, err = _run_cli(capsys, tmp_path, "--json")
    assert (code, out) == (EXIT_FAILED, "")
    _assert_one_line_error(err, r"no lrwatch or learning-rate tags \(its \d+ scalar tags: .*my_lr/body")
    code, out, err = _run_cli(capsys, tmp_path, "--json", "--lr-tag", "my_lr")
    assert (code, err) == (EXIT_OK, "")
    entry = json.loads(out)["named"]
    drops, factors = _expected_drops(np.array(lr_used.lr))
    assert entry["analysis"] == "lr-only" and entry["series"]["lr"] == ["my_lr/body", "my_lr/pg2"]
    assert entry["schedule"]["drops"] == drops and entry["schedule"]["factors"] == pytest.approx(factors, rel=1e-6)
    # a tag the run does not have
    code, out, err = _run_cli(capsys, tmp_path, "--lr-tag", "lr")
    assert (code, out) == (EXIT_FAILED, "")
    _assert_one_line_error(err, r"no lrwatch or learning-rate tags \('lr' or lr-<Optimizer>\) \(its \d+ scalar tags")


def test_runs_without_the_named_tag_keep_the_default_lr_tags(logs, capsys, tmp_path):
    _copy_run(logs, tmp_path, "monitor", "default_tags")
    code, out, err = _run_cli(capsys, tmp_path, "--json", "--lr-tag", "my_lr")
    assert (code, err) == (EXIT_OK, "")
    assert json.loads(out)["default_tags"]["series"]["lr"] == ["lr-SGD/body", "lr-SGD/pg2"]
    # a name is matched exactly, even one that ends like LearningRateMonitor's other tags
    code, out, err = _run_cli(capsys, tmp_path, "--json", "--lr-tag", "lr-SGD/body-momentum")
    assert (code, err) == (EXIT_OK, "")
    assert json.loads(out)["default_tags"]["series"]["lr"] == ["lr-SGD/body-momentum"]


@pytest.mark.parametrize("argv", [[], ["report"], ["report", ".", "--bogus"], ["frobnicate"],
                                  ["report", ".", "--lr-tag", ""], ["report", ".", "--lr-tag", "my_lr/"]])
def test_bad_arguments_are_one_line(capsys, argv):
    assert main(argv) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert out == ""
    _assert_one_line_error(err, r"^lrwatch: error: ")


# ---- reader units --------------------------------------------------------------------------------------------


def test_series_keep_the_order_their_tags_first_appear_in(tmp_path):
    """A tensor scalar (decoded after the add_scalar-layout records) written first still comes first."""
    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(1, 4):
            writer.add_scalar(tags.LOSS, 1.0 / step, step, new_style=True)
            writer.add_histogram("weights", np.arange(10.0) * step, step)
            writer.add_scalar(tags.DISPLACEMENT, 1.0 / step, step)
    assert list(read_runs(tmp_path)["."].scalars) == [tags.LOSS, tags.DISPLACEMENT]


def test_a_param_groups_lr_that_starts_later_is_not_drawn_before_it(tmp_path):
    """A group added mid-fit (BaseFinetuning) is logged from its first step: its lr is NaN before it, while the
    first group's lr, the one analysed, still holds its first value back to the axis's start."""
    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(1, 11):
            writer.add_scalar(tags.DISPLACEMENT, 1.0, step)
            writer.add_scalar(tags.lr_tag("SGD", 0), 0.1, step + 1 if step == 1 else step)  # missing at step 1
            if step >= 6:
                writer.add_scalar(tags.lr_tag("SGD", 1), 0.01, step)
    (track,) = read_runs(tmp_path)["."].tracks
    np.testing.assert_array_equal(track.lr[tags.lr_tag("SGD", 1)], [np.nan] * 5 + [np.float32(0.01)] * 5)
    np.testing.assert_array_equal(track.analysis_lr, [np.float32(0.1)] * 10)  # event files hold float32


@given(st.lists(st.integers(-5, 20), min_size=1, max_size=30))
def test_latest_per_step_keeps_events_no_later_event_undercuts(steps):
    values = np.arange(len(steps), dtype=float)
    kept = _latest_per_step(np.array(steps, dtype=np.int64), values)
    expected = [i for i, s in enumerate(steps) if all(later > s for later in steps[i + 1 :])]
    np.testing.assert_array_equal(kept.values, expected)
    assert (np.diff(kept.steps) > 0).all()


def test_restart_from_a_checkpoint_keeps_the_resumed_attempt(tmp_path):
    """A run resumed at step 5 after reaching step 9 (a second event file): the resumed values override steps
    5..7, and the abandoned steps 8..9 of the first attempt are dropped."""
    with SummaryWriter(str(tmp_path), filename_suffix=".a") as first:
        for step in range(10):
            first.add_scalar(tags.DISPLACEMENT, 1.0 + step, step)
    with SummaryWriter(str(tmp_path), filename_suffix=".b") as second:
        for step in range(5, 8):
            second.add_scalar(tags.DISPLACEMENT, 100.0 + step, step)
    series = read_runs(tmp_path)["."].scalars[tags.DISPLACEMENT]
    np.testing.assert_array_equal(series.steps, np.arange(8))
    np.testing.assert_array_equal(series.values, [1, 2, 3, 4, 5, 105, 106, 107])


def test_two_optimizers_make_two_tracks(capsys, tmp_path):
    with SummaryWriter(str(tmp_path / "gan")) as writer:
        for step in range(1, 31):
            optimizer = "SGD" if step % 2 else "Adam"
            lr = 0.1 * 0.5 ** (step // 10) if optimizer == "SGD" else 1e-3
            writer.add_scalar(tags.series_tag(tags.DISPLACEMENT, optimizer), lr * 2.0, step)
            writer.add_scalar(tags.lr_tag(optimizer), lr, step)
            writer.add_scalar(tags.series_tag(tags.LOSS, optimizer), 1.0 / step, step)
            writer.add_scalar(tags.series_tag(tags.diagnosis_tag("lr_too_high"), optimizer), 0.0, step)
    run = read_runs(tmp_path)["gan"]
    by_name = {t.optimizer: t for t in run.tracks}
    assert set(by_name) == {"SGD", "Adam"}
    np.testing.assert_array_equal(by_name["SGD"].steps, np.arange(1, 31, 2))
    np.testing.assert_array_equal(by_name["Adam"].steps, np.arange(2, 31, 2))
    assert list(by_name["SGD"].lr) == [tags.lr_tag("SGD")] and list(by_name["SGD"].flags) == ["lr_too_high"]
    np.testing.assert_allclose(by_name["Adam"].loss, 1.0 / np.arange(2, 31, 2), rtol=1e-7)
    code, out, err = _run_cli(capsys, tmp_path, "--json")
    assert code == EXIT_OK
    assert {k: (v["run"], v["optimizer"]) for k, v in json.loads(out).items()} == {
        "gan:Adam": ("gan", "Adam"), "gan:SGD": ("gan", "SGD")}


def test_sparse_fallback_loss_is_interpolated_and_noted(tmp_path):
    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(1, 11):
            writer.add_scalar(tags.DISPLACEMENT, 1.0, step)
            if step % 3 == 0:
                writer.add_scalar("train_loss", float(step), step - LIGHTNING_STEP_OFFSET)
    (track,) = read_runs(tmp_path)["."].tracks
    np.testing.assert_allclose(track.loss, np.clip(np.arange(1, 11), 3, 9))
    assert track.notes == (
        "no lrwatch/descent logged (logs from before it was measured): lr_too_high is not decided",
        "loss from 'train_loss' logged at 3 of 10 steps; interpolated in between",
    )


def test_nan_and_inf_stay_at_their_steps(tmp_path):
    loss = [1.0, float("nan"), 3.0, float("inf"), 5.0]
    with SummaryWriter(str(tmp_path)) as writer:
        for step, value in enumerate(loss, start=1):
            writer.add_scalar(tags.DISPLACEMENT, value, step)
            writer.add_scalar(tags.LOSS, value, step)
            writer.add_scalar(tags.DESCENT, value, step)
    (track,) = read_runs(tmp_path)["."].tracks
    np.testing.assert_array_equal(track.loss, loss)
    np.testing.assert_array_equal(track.displacement, loss)
    np.testing.assert_array_equal(track.descent, loss)
    assert track.notes == ()


def test_read_runs_rejects_bad_arguments(tmp_path, logs):
    with pytest.raises(ValueError, match=r"logdir '.*nope' does not exist"):
        read_runs(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"holds no TensorBoard event files"):
        read_runs(tmp_path)
    with pytest.raises(ValueError, match=r"run 'x' is not under logdir"):
        read_runs(logs[0], run="x")
    for bad in ("", "lr/", 3):
        with pytest.raises(ValueError, match=r"lr_tag must be a non-empty tag name"):
            read_runs(logs[0], lr_tag=bad)


# ---- layout and text summary ---------------------------------------------------------------------------------


def test_layout_charts_and_their_tag_regexes():
    layout = custom_scalars_layout([tags.lr_tag("SGD", 0, "body"), tags.lr_tag("SGD", 1)])
    (category,) = layout.category
    assert category.title == "lrwatch"
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    assert list(charts) == ["lr and displacement", "grad norm", "descent", "loss", "diagnoses", "actions"]

    def matches(chart, tag):  # TensorBoard matches chart regexes with re.match
        return any(re.match(regex, tag) for regex in charts[chart])

    assert matches("lr and displacement", "lrwatch/lr/SGD/body") and matches("lr and displacement", tags.DISPLACEMENT)
    assert not matches("lr and displacement", "lrwatch/lr/SGD/bodyX")
    assert matches("grad norm", tags.GRAD_NORM) and not matches("grad norm", tags.GRAD_NORM + "2")
    assert matches("descent", tags.DESCENT) and not matches("descent", tags.DESCENT + "/SGD")
    assert matches("loss", tags.LOSS) and matches("loss", tags.LOSS + "/Adam")
    assert matches("diagnoses", tags.diagnosis_tag("lr_too_high")) and not matches("diagnoses", tags.DIAGNOSES_TEXT)
    assert matches("actions", tags.action_tag("drop"))


def test_layout_with_several_optimizers_has_a_chart_each():
    layout = custom_scalars_layout([tags.lr_tag("Adam"), tags.lr_tag("SGD")], series_suffixes=["Adam", "SGD"])
    charts = {chart.title: list(chart.multiline.tag) for chart in layout.category[0].chart}
    assert charts["lr and displacement (SGD)"] == [re.escape(tags.lr_tag("SGD")) + "$",
                                                   re.escape(tags.DISPLACEMENT + "/SGD") + "$"]
    assert len(charts["grad norm"]) == 2


def test_write_layout_round_trips_through_the_event_file(tmp_path):
    layout = custom_scalars_layout([tags.lr_tag("SGD")])
    with SummaryWriter(str(tmp_path)) as writer:
        write_layout(writer, layout)
    (path,) = tmp_path.glob("events.out.tfevents.*")
    written = [
        layout_pb2.Layout.FromString(tensor_util.make_ndarray(v.tensor).item())
        for e in EventFileLoader(str(path)).Load()
        for v in e.summary.value
        if v.tag == "custom_scalars__config__"
    ]
    assert written == [layout]


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: custom_scalars_layout("lrwatch/lr/SGD"), "lr_tags"),
        (lambda: custom_scalars_layout([""]), "lr_tags"),
        (lambda: custom_scalars_layout(["lrwatch/lr/SGD"], series_suffixes=["a/b"]), "series_suffixes"),
        (lambda: custom_scalars_layout(["lrwatch/lr/SGD"], series_suffixes=[]), "series_suffixes"),
        (lambda: write_layout(object(), custom_scalars_layout(["x"])), "summary_writer"),
        (lambda: write_layout(SummaryWriter.__new__(SummaryWriter), {"a": 1}), "layout"),
        (lambda: diagnoses_markdown({"schedule": None}), "report"),
    ],
)
def test_layout_and_text_reject_bad_arguments(call, argument):
    with pytest.raises(ValueError, match=rf"^{argument} must (be|have)"):
        call()


def test_plot_report_rejects_bad_rows():
    pytest.importorskip("matplotlib")
    from lrwatch.plot import plot_report

    with pytest.raises(ValueError, match=r"^rows must be"):
        plot_report([])


def test_diagnoses_markdown_table():
    report = Report(
        Signature("step", [100, 200], [0.1, 0.25], None, [], "displacement"),
        [Diagnosis("lr_too_high", 5, 40, "Drop the lr | now.", {"x": 1.0}),
         Diagnosis("diverging", 190, None, "Stop.", {})],
        250,
    )
    assert diagnoses_markdown(report).splitlines() == [
        "**Schedule:** step (read from displacement); drops at step 100 (×0.1), step 200 (×0.25)",
        "",
        "| diagnosis | steps | message |",
        "|---|---|---|",
        "| lr_too_high | 5–40 | Drop the lr \\| now. |",
        "| diverging | 190–(still active) | Stop. |",
    ]
    quiet = Report(Signature("constant", [], [], None, [(0, 9)], "lr"), [], 10)
    assert diagnoses_markdown(quiet).splitlines()[-1] == "No diagnoses over 10 steps."


def test_diagnoses_markdown_keeps_to_the_latest_so_its_size_does_not_grow_with_the_run():
    def report(episodes: int) -> Report:
        flicker = [Diagnosis("lr_too_high", 100 * i, 100 * i + 50, "Drop.", {}) for i in range(episodes)]
        drops = list(range(1000, 1000 * (episodes + 1), 1000))
        return Report(Signature("step", drops, [0.5] * len(drops), None, [], "lr"),
                      [Diagnosis("diverging", 120, 130, "Stop.", {}), *flicker], 100 * episodes + 60)

    text = diagnoses_markdown(report(30), latest=4).splitlines()
    assert text[0] == ("**Schedule:** step (read from lr); 30 drops, the last 4 at step 27000 (×0.5), step 28000 (×0.5), "
                       "step 29000 (×0.5), step 30000 (×0.5)")
    assert text[2] == "**Episodes:** diverging 1, lr_too_high 30; those still active and the latest, 4 in all:"
    assert text[-4:] == [f"| lr_too_high | {s}–{s + 50} | Drop. |" for s in (2600, 2700, 2800, 2900)]
    # 100x the episodes and drops: longer only by the wider step numbers
    assert len(diagnoses_markdown(report(3000), latest=4)) < len(diagnoses_markdown(report(30), latest=4)) + 50
    # at most `latest` of each: the full table
    assert diagnoses_markdown(report(3), latest=4) == diagnoses_markdown(report(3))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="latest must be an int >= 1"):
            diagnoses_markdown(report(3), latest=bad)
    # a diagnosis that started long ago and still holds is always shown
    held = report(30)
    held.diagnoses[0] = Diagnosis("diverging", 120, None, "Stop.", {})
    rows = diagnoses_markdown(held, latest=4).splitlines()[-4:]
    assert rows == ["| diverging | 120–(still active) | Stop. |"] + [
        f"| lr_too_high | {s}–{s + 50} | Drop. |" for s in (2700, 2800, 2900)]


def test_the_report_lists_and_draws_early_step_drop_actions(capsys, tmp_path):
    """A real fit whose EarlyStepDrop drops early, holds and releases: the actions in the text, the JSON and
    the figure, at the steps they took effect (the lr the drop left is the lr LRWatch logged from that step)."""
    model = DigitsMLP("sgd", lr=0.1, scheduler="step")  # StepLR(step_size=5, gamma=0.5), stepped every step
    callbacks = [lrwatch.LRWatch(flush_every=7), ForcedDrop({3: "drop", 8: "hold", 14: "release"})]
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="acted", version="")
    make_trainer(callbacks, logger, max_steps=MAX_STEPS).fit(model, digits_loader())

    code, out, err = _run_cli(capsys, tmp_path)
    assert (code, err) == (EXIT_OK, "")
    assert "EarlyStepDrop actions: drop at step 4 (lr 0.05); hold at step 9; release at step 15" in out
    code, out, _ = _run_cli(capsys, tmp_path, "--json")
    actions = json.loads(out)["acted"]["actions"]
    assert [(a["step"], a["kind"]) for a in actions] == [(4, "drop"), (9, "hold"), (15, "release")]
    (track,) = read_runs(tmp_path)["acted"].tracks
    lr = next(iter(track.lr.values()))
    assert lr[list(track.steps).index(4)] == pytest.approx(actions[0]["value"])  # the step's logged lr

    pytest.importorskip("matplotlib")
    from lrwatch.plot import ACTION_LINES, plot_report
    from lrwatch.tensorboard import logged_actions

    run = read_runs(tmp_path)["acted"]
    report = Report(Signature("constant", [], [], None, [], "lr"), [], MAX_STEPS)
    for ax in plot_report([("acted", track, report, logged_actions(run))]).axes[:2]:
        dotted = [(line.get_xdata()[0], line.get_color()) for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert dotted == [(4, ACTION_LINES["drop"]["color"]), (9, ACTION_LINES["hold"]["color"]),
                          (15, ACTION_LINES["release"]["color"])]
    with pytest.raises(ValueError, match="rows must be"):
        plot_report([("acted", track, report, [("drop", 4)])])


def test_odd_action_events_neither_break_the_json_nor_lose_their_kind(capsys, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "odd")) as writer:
        for step in range(60):
            writer.add_scalar("lr-SGD", 0.1 if step < 30 else 0.01, step)
        writer.add_scalar("lrwatch/action/drop", float("nan"), 10)
        writer.add_scalar("lrwatch/action/", 1.0, 12)
    code, out, _ = _run_cli(capsys, tmp_path, "--json")
    assert code == EXIT_OK
    assert json.loads(out)["odd"]["actions"] == [{"step": 10, "kind": "drop", "value": None},
                                                 {"step": 12, "kind": "unnamed", "value": 1.0}]
