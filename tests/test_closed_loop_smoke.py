"""Smoke test of the closed-loop harness (benchmarks/closed_loop_harness.py) on very short runs: the arms
differ only where their lrs differ, and the oracle study's ``"milestones"`` arm drops where it is told."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from closed_loop_harness import run_arm  # noqa: E402
from closed_loop_setups import PLATEAU  # noqa: E402
from corpus_tasks import load_task  # noqa: E402

N_STEPS, EVAL_EVERY, LR, GAMMA = 40, 5, 0.05, 0.1


def _arm(arm: str, step_size: int = 25, milestones: tuple[int, ...] = ()):
    torch.set_num_threads(1)
    return run_arm(load_task("wine"), "momentum", LR, 0, arm, N_STEPS, step_size, GAMMA, PLATEAU, EVAL_EVERY,
                   milestones=milestones)


def test_one_milestone_is_the_step_schedule_with_that_period():
    """Within the run StepLR(25) drops once, after update 25: MultiStepLR([25]) must train identically."""
    step, moved = _arm("step", step_size=25), _arm("milestones", milestones=(25,))
    np.testing.assert_array_equal(step.lrs, moved.lrs)
    np.testing.assert_array_equal(step.eval_losses, moved.eval_losses)
    np.testing.assert_allclose(moved.lrs, np.where(np.arange(N_STEPS) < 25, LR, LR * GAMMA), rtol=1e-12)


def test_a_moved_drop_changes_the_run_only_after_it():
    step, moved = _arm("step", step_size=25), _arm("milestones", milestones=(15,))
    np.testing.assert_allclose(moved.lrs, np.where(np.arange(N_STEPS) < 15, LR, LR * GAMMA), rtol=1e-12)
    before = moved.eval_steps <= 15
    np.testing.assert_array_equal(step.eval_losses[before], moved.eval_losses[before])
    assert not np.array_equal(step.eval_losses[~before], moved.eval_losses[~before])


def test_the_milestones_arm_needs_a_milestone():
    with pytest.raises(ValueError, match="milestone"):
        _arm("milestones")


def test_the_oracle_study_runs_and_scores_moved_drops(tmp_path, capsys):
    import json

    import closed_loop_oracle

    out = tmp_path / "oracle.json"
    closed_loop_oracle.main(["--setups", "clusters/adam", "--seeds", "101", "--drops", "100", "200", "--two-drops",
                             "--json", str(out)])
    cases = {c["condition"]: c for c in json.loads(out.read_text())}
    assert set(cases["too_high"]["moved"]) == {"100", "200"} and set(cases["too_high"]["moved_twice"]) == {"100,200"}
    assert set(cases["tuned"]["moved"]) == {"100", "200"} and cases["tuned"]["moved_twice"] == {}
    printed = capsys.readouterr().out
    assert "oracle (knows the condition" in printed and "up to two drops" in printed
