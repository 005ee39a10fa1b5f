"""The README's main job runs end to end: training with LRWatch, the report and its figure."""

from __future__ import annotations

import runpy
import sys

import pytest

from tests.conftest import digits_loader  # noqa: F401  (torch threads set once for the suite)


def test_demo_trains_reports_and_saves_the_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["demo.py", "--logdir", str(tmp_path), "--steps", "200"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path("examples/demo.py", run_name="__main__")
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert (tmp_path / "demo" / "report.png").stat().st_size > 10_000
    assert "[too_aggressive]" in out and "decay_too_aggressive" in out
    assert "[diverging]" in out and "  diverging (steps" in out and "tensorboard --logdir" in out
    too_high = out[out.index("[too_high]"):out.index("[too_high_early_drop]")]
    assert "  lr_too_high (steps" in too_high and "diverging" not in too_high
    # in 200 steps the loss has not gone the ~300 steps without a new low that EarlyStepDrop's defaults wait for:
    # it must not act yet (in make demo's 600 steps it drops at step 301)
    early_drop = out[out.index("[too_high_early_drop]"):out.index("[diverging]")]
    assert "  lr_too_high (steps" in early_drop and "EarlyStepDrop at step" not in early_drop
