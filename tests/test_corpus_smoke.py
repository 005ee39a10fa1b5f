"""Smoke test of the diagnosis-corpus generator (benchmarks/corpus_*.py) on a few very short runs."""

import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import corpus_runs  # noqa: E402
from corpus_cache import load_corpus, save_corpus  # noqa: E402
from corpus_runs import Labelling, RunSpec, step_and_measure, train_run  # noqa: E402
from corpus_scoring import DROP_TOLERANCE, match_drops, predict_run, score_split  # noqa: E402
from corpus_tasks import build_optimizer, load_task  # noqa: E402

SHORT = Labelling(warmup=10, every=5, window=10)
STEP_RUN = RunSpec("wine", "momentum", "step", "sensible", 0.05, seed=0, step_size=12, gamma=0.3, n_steps=40)
EXP_RUN = RunSpec("moons", "adam", "exponential", "too_aggressive", 0.01, seed=1, gamma=0.9, n_steps=40)
SGD_RUN = RunSpec("linreg", "sgd", "constant", "too_high", 0.3, seed=2, n_steps=40)
DIVERGING_RUN = RunSpec("linreg", "sgd", "constant", "diverging", 2.0, seed=1, n_steps=40)


@pytest.fixture(scope="module")
def runs():
    torch.set_num_threads(1)
    return {spec: train_run(spec, SHORT) for spec in (STEP_RUN, EXP_RUN, SGD_RUN, DIVERGING_RUN)}


def test_lr_series_follows_the_schedule_and_drops_are_where_it_falls(runs):
    step, exp = runs[STEP_RUN], runs[EXP_RUN]
    t = np.arange(40)
    np.testing.assert_allclose(step.lr, 0.05 * 0.3 ** (t // 12), rtol=1e-12)
    np.testing.assert_allclose(exp.lr, 0.01 * 0.9**t, rtol=1e-12)
    assert step.drops == [12, 24, 36]
    assert step.drops == [i for i in range(1, 40) if step.lr[i] < step.lr[i - 1]]
    assert exp.drops == [] and runs[SGD_RUN].drops == []


def test_sgd_displacement_is_lr_times_gradient_norm_of_the_same_update(runs):
    sgd = runs[SGD_RUN]
    np.testing.assert_allclose(sgd.displacement, sgd.lr * sgd.grad_norm, rtol=1e-4)
    np.testing.assert_allclose(sgd.descent, sgd.lr * sgd.grad_norm**2, rtol=1e-4)  # -<-lr g, g>
    assert (sgd.momentum == 0).all() and (runs[STEP_RUN].momentum == 0.9).all() and (runs[EXP_RUN].momentum == 0.9).all()


def test_checkpoints_are_labelled_and_keep_branch_replays_the_run(runs):
    for spec in (STEP_RUN, EXP_RUN, SGD_RUN):
        record = runs[spec]
        assert [c.step for c in record.checkpoints] == list(range(10, 40, 5))
        by_step = {c.step: c for c in record.checkpoints}
        for c in record.checkpoints:
            # the keep branch trains on the batches the run itself uses next, so it lands where the run does
            if c.step + SHORT.window in by_step:
                assert c.loss_keep == by_step[c.step + SHORT.window].loss_now
            assert c.decayed == (c.lr_next <= corpus_runs.DECAYED_AT_MOST * spec.lr)
            floor = corpus_runs.MIN_GAIN_FRACTION * record.start_loss
            gain_drop, gain_restore = c.loss_keep - c.loss_drop, c.loss_keep - c.loss_restore
            expected_high = (gain_drop > corpus_runs.WIN_MARGIN * c.loss_keep and gain_drop >= floor
                             and c.loss_drop < c.loss_restore)
            expected_aggressive = (c.decayed and gain_restore > corpus_runs.WIN_MARGIN * c.loss_keep
                                   and gain_restore >= floor and c.loss_restore < c.loss_drop)
            assert c.lr_too_high == expected_high
            assert c.decay_too_aggressive == expected_aggressive
    exp = runs[EXP_RUN]
    assert all(c.restore_lr == EXP_RUN.lr for c in exp.checkpoints if c.decayed)
    # the short runs hold both outcomes of both labels, so the rules above were exercised both ways
    labels = [(c.lr_too_high, c.decay_too_aggressive) for r in runs.values() for c in r.checkpoints]
    assert {high for high, _ in labels} == {True, False}
    assert {aggressive for _, aggressive in labels} == {True, False}


def test_diverging_run_is_detected_and_not_labelled_after_onset(runs):
    record = runs[DIVERGING_RUN]
    assert record.diverged
    onset = record.divergence_step
    assert np.all(np.isfinite(record.loss[:onset]))
    blown_up = record.loss[onset] > corpus_runs.DIVERGENCE_LOSS_RATIO * record.start_loss
    assert blown_up or not np.isfinite(record.loss[onset]) or not np.isfinite(record.displacement[onset])
    if record.first_nonfinite is not None:
        assert record.first_nonfinite >= onset
        assert np.all(np.isfinite(record.displacement[: record.first_nonfinite]))
    assert all(c.step < onset for c in record.checkpoints)
    assert not runs[SGD_RUN].diverged and runs[SGD_RUN].first_nonfinite is None


@pytest.mark.parametrize("end_ratio, climbed", [(1.9, False), (2.1, True)])
def test_a_run_that_ends_above_twice_its_start_loss_diverged_slowly(runs, end_ratio, climbed):
    record = copy.copy(runs[SGD_RUN])
    assert not record.diverged and record.divergence_step is None
    # only the last 50 losses count: the 70 before them lie on the other side of 2x
    before = (0.1 if climbed else 10.0) * record.start_loss
    record.loss = np.r_[np.full(70, before), np.full(corpus_runs.END_SAMPLES, end_ratio * record.start_loss)]
    assert (record.climbed, record.diverged, record.blew_up) == (climbed, climbed, False)
    if climbed:
        assert record.onset == 120
    # 100 losses at 0.5x, then 3x: the 100-step median passes 2x once 51 of its losses are high (step 150)
    record.loss = np.r_[np.full(100, 0.5 * record.start_loss), np.full(100, 3 * record.start_loss)]
    assert record.first_doubled() == 150


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw"])
def test_displacement_matches_flattened_parameter_vectors(optimizer):
    task = load_task("digits")
    model = task.build_model(seed=3)
    opt = build_optimizer(optimizer, model.parameters(), lr=0.05)
    params = list(model.parameters())
    for batch in (np.arange(0, 32), np.arange(32, 64), np.arange(64, 96)):
        opt.zero_grad()
        task.loss(model(task.inputs[batch]), task.targets[batch]).backward()
        before = torch.nn.utils.parameters_to_vector(params).detach().double()
        grad = torch.cat([p.grad.flatten() for p in params]).double()
        measured, descent = step_and_measure(opt, params)
        after = torch.nn.utils.parameters_to_vector(params).detach().double()
        reference = float(torch.linalg.vector_norm(after - before))
        assert reference > 0
        assert abs(measured - reference) <= 1e-6 * reference
        reference_descent = -float((after - before) @ grad)
        assert abs(descent - reference_descent) <= 1e-6 * reference * float(grad.norm())


def test_cache_round_trip_keeps_series_truth_and_labels(runs, tmp_path):
    records = list(runs.values())
    path = tmp_path / "corpus.npz"
    save_corpus(records, path, generation_seconds=1.5)
    loaded, seconds = load_corpus(path, [r.spec for r in records])
    assert seconds == 1.5
    for original, reloaded in zip(records, loaded):
        for name in ("displacement", "lr", "grad_norm", "loss"):
            np.testing.assert_array_equal(getattr(reloaded, name), getattr(original, name))
        assert (reloaded.drops, reloaded.first_nonfinite, reloaded.divergence_step, reloaded.start_loss) == (
            original.drops, original.first_nonfinite, original.divergence_step, original.start_loss)
        assert reloaded.checkpoints == original.checkpoints
    assert load_corpus(path, [r.spec for r in records][::-1]) is None


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"schedule": "cosine"}, "schedule"),
        ({"setting": "fine"}, "setting"),
        ({"lr": 0.0}, "lr"),
        ({"schedule": "step", "gamma": 0.1}, "step_size"),
        ({"schedule": "constant", "gamma": 0.1}, "gamma"),
    ],
)
def test_bad_run_spec_raises_naming_the_field(changes, named):
    fields = dict(task="wine", optimizer="sgd", schedule="constant", setting="sensible", lr=0.1, seed=0)
    with pytest.raises(ValueError, match=named):
        RunSpec(**{**fields, **changes})


def test_match_drops_pairs_one_to_one_within_tolerance():
    assert match_drops([10, 20, 30], [12, 19, 40, 29]) == 3
    assert match_drops([10, 12], [11]) == 1  # one prediction cannot match two true drops
    assert match_drops([10], [10 + DROP_TOLERANCE + 1]) == 0
    assert match_drops([50, 100], [100 - DROP_TOLERANCE, 50 + DROP_TOLERANCE]) == 2


def test_scores_of_a_detector_that_flags_everything(runs):
    """A stand-in for lrwatch.analyze: kind "constant", no drops, lr_too_high active everywhere and a
    diverging diagnosis at the last step it is given."""

    class Report:
        def __init__(self, n):
            self.schedule = SimpleNamespace(kind="constant", drops=[])
            self.diagnoses = [
                SimpleNamespace(kind="lr_too_high", start=0),
                SimpleNamespace(kind="diverging", start=n - 1),
            ]

        def active(self, step):
            return ["lr_too_high"]

        def to_dict(self):
            return {}

    records = list(runs.values())
    predictions = [predict_run(r, lambda m, loss=None, **_: Report(len(m))) for r in records]
    score = score_split(records, predictions)
    checkpoints = [c for r in records for c in r.checkpoints]
    positives = sum(c.lr_too_high for c in checkpoints)
    assert score.n_checkpoints == len(checkpoints)
    precision = score.precision["lr_too_high"]
    assert (precision.hits, precision.total) == (positives, len(checkpoints))
    assert score.recall["lr_too_high"].value == (1.0 if positives else None)
    assert score.recall["decay_too_aggressive"].hits == 0
    assert (score.kind_with_lr.hits, score.kind_with_lr.total) == (1, 3)  # SGD_RUN is the one constant, stable run
    assert (score.drops.true_positives, score.drops.n_true, score.drops.n_predicted) == (0, 3, 0)
    assert (score.diverging_caught.hits, score.diverging_caught.total) == (1, 1)
    assert score.diverging_lead_steps == [1]
    assert score.diverging_false_alarms.hits == 3


def test_fresh_corpus_repeats_every_run_on_shifted_seeds_and_is_its_own_split():
    from corpus_specs import FRESH_SEED_OFFSET, N_SEEDS, corpus_specs, split_of

    base, fresh = corpus_specs(), corpus_specs(FRESH_SEED_OFFSET)
    assert FRESH_SEED_OFFSET >= N_SEEDS
    assert [s.seed + FRESH_SEED_OFFSET for s in base] == [s.seed for s in fresh]
    assert [s.name.rsplit("/", 1)[0] for s in base] == [s.name.rsplit("/", 1)[0] for s in fresh]
    assert {split_of(s) for s in fresh} == {"fresh"}
    assert {split_of(s) for s in base} == {"tuning", "held-out"}
    assert split_of(next(s for s in base if s.seed == 2)) == "held-out"
    assert split_of(next(s for s in base if s.task == "moons")) == "held-out"


def test_redrawn_labels_come_from_other_batches_and_leave_the_run_alone(runs):
    record = train_run(STEP_RUN, SHORT, redraws=2)
    plain = runs[STEP_RUN]
    for name in ("displacement", "loss", "lr", "descent"):
        np.testing.assert_array_equal(getattr(record, name), getattr(plain, name))
    assert record.checkpoints == plain.checkpoints and plain.redrawn == []
    assert len(record.redrawn) == len(record.checkpoints) and all(len(r) == 2 for r in record.redrawn)
    assert [c.step for c in record.checkpoints] == [r[0].step for r in record.redrawn]
    task = load_task(STEP_RUN.task)
    own = corpus_runs.minibatch_indices(len(task.inputs), task.batch_size, 40 + SHORT.window, STEP_RUN.seed)
    windows = [corpus_runs.redraw_window(STEP_RUN, len(task.inputs), task.batch_size, SHORT.window, 10, k)
               for k in range(2)]
    assert windows[0].shape == (SHORT.window, task.batch_size)
    assert not np.array_equal(windows[0], windows[1]) and not np.array_equal(windows[0], own[11:11 + SHORT.window])
    np.testing.assert_array_equal(windows[0], corpus_runs.redraw_window(
        STEP_RUN, len(task.inputs), task.batch_size, SHORT.window, 10, 0))
    at_zero = corpus_runs.redraw_window(STEP_RUN, len(task.inputs), task.batch_size, SHORT.window, 0, 0)
    assert not np.array_equal(at_zero, own[:SHORT.window])  # step 0, draw 0 is not the run's own sequence either
    # the redrawn keep branch trains the same state on other batches: its loss differs from the corpus's
    assert any(r[0].loss_keep != c.loss_keep for c, r in zip(record.checkpoints, record.redrawn))


def test_label_consistency_figures_against_a_hand_count():
    from label_consistency import consistency

    labels = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]], dtype=bool)
    figures = consistency(labels)
    assert figures["checkpoints"] == 5 and figures["corpus positives"] == 3
    assert figures["all labels agree"] == pytest.approx(2 / 5)
    # draw 1: positives rows 0, 2, 4 -> corpus & d = rows 0, 4; draw 2: rows 0, 2 -> row 0
    assert figures["corpus labels' precision on other batches"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert figures["corpus labels' recall on other batches"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # at least half the redraws positive -> rows 0, 2, 4; corpus positive among them: 0, 4
    assert figures["informed (half) precision"] == pytest.approx(2 / 3)
    assert figures["informed (half) recall"] == pytest.approx(2 / 3)
    # all redraws positive -> rows 0, 2; corpus positive among them: 0
    assert figures["informed (all) precision"] == pytest.approx(1 / 2)
    assert figures["informed (all) recall"] == pytest.approx(1 / 3)
    empty = consistency(np.zeros((0, 1), dtype=bool))
    assert empty["checkpoints"] == 0 and np.isnan(empty["informed (all) precision"])


def test_detector_ceiling_margin_noise_at_zero_reproduces_the_labels_and_noise_changes_them(runs):
    from detector_ceiling import checkpoint_table, margin_noise

    table = checkpoint_table(list(runs.values()))
    assert len(table["task"]) == sum(len(r.checkpoints) for r in runs.values())
    exact = margin_noise(table, 0.0, np.random.default_rng(0))
    for kind in ("lr_too_high", "decay_too_aggressive"):
        np.testing.assert_array_equal(exact[kind], table[kind])
    noisy = [margin_noise(table, 1.0, np.random.default_rng(seed)) for seed in range(5)]
    assert any(not np.array_equal(n[kind], table[kind]) for n in noisy for kind in exact)


def test_detector_ceiling_features_are_causal_and_named(runs):
    from detector_ceiling import FEATURES, causal_features

    record = runs[STEP_RUN]
    step = record.checkpoints[2].step
    features = causal_features(record, step)
    assert features.shape == (len(FEATURES),)
    later = copy.deepcopy(record)
    for name in ("loss", "lr", "descent", "momentum", "grad_norm", "displacement"):
        getattr(later, name)[step + 1:] = 1e6  # what comes after the checkpoint must not matter
    np.testing.assert_array_equal(causal_features(later, step), features)
    earlier = copy.deepcopy(record)
    earlier.loss[step] *= 2  # the checkpoint's own update counts
    assert not np.array_equal(causal_features(earlier, step), features, equal_nan=True)


def test_detector_ceiling_precision_figures_against_a_hand_count():
    from detector_ceiling import best_precision, precision_recall

    labels = np.array([1, 0, 1, 1, 0], dtype=bool)
    assert precision_recall(np.array([1, 1, 0, 1, 0], dtype=bool), labels) == pytest.approx((2 / 3, 2 / 3))
    assert all(np.isnan(precision_recall(np.zeros(5, dtype=bool), np.zeros(5, dtype=bool))))
    scores = np.array([0.9, 0.7, 0.8, 0.6, 0.1])  # ranked (indices 0, 2, 1, 3, 4): T T F T F
    assert best_precision(scores, labels, 0.6) == pytest.approx(1.0)  # top 2: recall 2/3
    assert best_precision(scores, labels, 1.0) == pytest.approx(3 / 4)  # top 4 (top 3: 2/3 at recall 2/3)
    assert np.isnan(best_precision(scores, np.zeros(5, dtype=bool), 0.5))  # no positives: no recall reached


def test_detector_ceiling_near_ties_are_the_labels_the_margin_band_flips():
    from detector_ceiling import clear_of_margin

    keep = np.ones(4)
    table = {"loss_keep": keep, "loss_drop": np.array([0.5, 0.88, 1.2, 1.2]),
             "loss_restore": np.array([2.0, 2.0, 0.5, 0.88]), "decayed": np.array([True, True, True, True]),
             "gain_floor": np.zeros(4)}
    clear = clear_of_margin(table, (0.05, 0.15))
    # 0.88 wins at margin 0.05 but not at 0.15: a near-tie; 0.5 wins and 2.0 loses at both
    np.testing.assert_array_equal(clear["lr_too_high"], [True, False, True, True])
    np.testing.assert_array_equal(clear["decay_too_aggressive"], [True, True, True, False])
