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
    assert "plateau rules on the exact full-data loss" in printed
    assert all(len(c["fixed_eval_losses"]) == len(c["fixed_eval_steps"]) for c in cases.values())


def _falling_then_flat(flat_from: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-data losses every 10 steps over 300 steps: halving every 10 steps until ``flat_from``, then flat."""
    steps = np.arange(0, 301, 10)
    return steps, 0.5 ** (np.minimum(steps, flat_from) / 10)


def test_recent_fall_reads_only_the_window_up_to_t():
    from closed_loop_oracle import recent_fall

    steps, losses = _falling_then_flat(flat_from=100)
    # mean over (50, 100] against (0, 50]: steps 60..100 and 10..50, each falling 2x a sample
    expected = 1 - (0.5 ** np.arange(6, 11)).mean() / (0.5 ** np.arange(1, 6)).mean()
    assert recent_fall(steps, losses, 100, 100, "mean") == pytest.approx(expected, rel=1e-12)
    assert recent_fall(steps, losses, 200, 100, "mean") == 0.0
    # best over (100, 200] against the best up to 100: both the flat level
    assert recent_fall(steps, losses, 200, 100, "best") == 0.0
    assert recent_fall(steps, losses, 100, 50, "best") == pytest.approx(1 - 0.5**5, rel=1e-12)
    later_changed = losses.copy()
    later_changed[steps > 150] = np.nan
    for statistic in ("mean", "best"):
        assert recent_fall(steps, later_changed, 150, 100, statistic) == recent_fall(steps, losses, 150, 100, statistic)
    assert np.isnan(recent_fall(steps, later_changed, 250, 100, "mean"))


def test_a_plateau_rule_drops_at_its_first_flat_decision_step_and_is_scored_by_that_run():
    from closed_loop_oracle import plateau_rule_frontier, plateau_rule_meets

    steps, losses = _falling_then_flat(flat_from=100)
    case = {"condition": "too_high", "fixed_eval_steps": steps.tolist(), "fixed_eval_losses": losses.tolist(),
            "moved": {50: {"meets": False}, 150: {"meets": True}, 250: {"meets": False}},
            "unmoved": {"meets": False}}
    assert plateau_rule_meets(case, "mean", 50, 0.01)  # still falling at 50, flat by 150
    assert not plateau_rule_meets(case, "mean", 50, 2.0)  # any fall is "flat": drops at 50
    assert not plateau_rule_meets(case, "mean", 200, 0.01)  # first decision at 250
    assert not plateau_rule_meets(case, "best", 50, -1.0)  # never flat enough: the fixed run's outcome
    tuned = {**case, "condition": "tuned", "moved": {50: {"meets": False}, 150: {"meets": False}},
             "unmoved": {"meets": True}}
    front = plateau_rule_frontier([case, tuned])
    assert [(h, u) for h, u, _ in front] == [(0, 1), (1, 0)]


def test_loss_ratios_survive_a_loss_that_underflowed_to_zero():
    from closed_loop import loss_ratio

    assert loss_ratio(0.5, 0.25) == 2.0
    assert loss_ratio(0.0, 0.0) == 1.0 and loss_ratio(1e-9, 0.0) == np.inf and loss_ratio(0.0, 0.5) == 0.0
