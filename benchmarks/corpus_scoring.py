"""Score ``lrwatch.analyze`` on the labelled corpus: schedule kind, drop steps, diagnoses, divergence.

``analyze`` is passed in (the CLI imports ``lrwatch.analyze`` lazily), so this module runs against any
function with its contract. Two ways of calling it:

* full information, ``analyze(m, loss, lr=lr, grad_norm=g, descent=d, momentum=β)``: what the LRWatch
  callback has online;
  used for the kind "with lr", the checkpoint diagnoses and divergence,
* displacement only, ``analyze(m, loss)``: for the kind and the drop steps read off the displacement.

A diagnosis counts at checkpoint t only when ``analyze`` on the series cut at t (inputs ``[:t+1]``) has
it active at t, so a detector that looks ahead gains nothing. Runs that diverge are left out of the
schedule scores (their displacement after the blow-up says nothing about the schedule) and scored on
whether a ``diverging`` diagnosis appears on the series cut just before the divergence onset (a run
that diverges slowly, without a blow-up, must be flagged somewhere in it: ``RunRecord.onset``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from corpus_runs import END_SAMPLES, RunRecord

#: A predicted drop matches a true one within this many steps.
DROP_TOLERANCE = 3
#: Diagnosis kinds scored against the counterfactual labels (Checkpoint attributes of the same name).
LABELLED_KINDS = ("lr_too_high", "decay_too_aggressive")
DIVERGING = "diverging"

#: Goals printed beside the figures.
GOAL_KIND_ACCURACY_WITH_LR = 0.95
GOAL_KIND_ACCURACY_DISPLACEMENT = 0.90
GOAL_DROP_F1 = 0.90
GOAL_PRECISION = 0.90
GOAL_RECALL = 0.80


def true_kind(record: RunRecord) -> str:
    """Ground-truth schedule kind: the spec's schedule ("constant" | "step" | "exponential")."""
    return record.spec.schedule


@dataclass
class RunPrediction:
    """What ``analyze`` said about one run. ``checkpoint_flags[i]`` are the kinds active at checkpoint
    i on the cut series; ``diverging_start`` is the first step of a ``diverging`` diagnosis, on the
    series cut before the onset for diverging runs and on the whole series otherwise (None: none)."""

    kind_with_lr: str
    kind_from_displacement: str
    drops_from_displacement: list[int]
    checkpoint_flags: list[list[str]]
    diverging_start: int | None
    report_with_lr: dict = field(repr=False)
    report_from_displacement: dict = field(repr=False)


def _first_start(report, kind: str) -> int | None:
    starts = [d.start for d in report.diagnoses if d.kind == kind]
    return min(starts) if starts else None


def predict_run(record: RunRecord, analyze) -> RunPrediction:
    """Run ``analyze`` on one record in every way the scores need."""
    m, loss = record.displacement, record.loss
    known = {"lr": record.lr, "grad_norm": record.grad_norm, "descent": record.descent, "momentum": record.momentum}

    def cut(end: int) -> dict:
        return {name: values[:end] for name, values in known.items()}

    full = analyze(m, loss, **known)
    blind = analyze(m, loss)
    flags = [list(analyze(m[: c.step + 1], loss[: c.step + 1], **cut(c.step + 1)).active(c.step))
             for c in record.checkpoints]
    if record.diverged:
        onset = record.onset
        before = analyze(m[:onset], loss[:onset], **cut(onset)) if onset > 0 else None
        diverging_start = None if before is None else _first_start(before, DIVERGING)
    else:
        diverging_start = _first_start(full, DIVERGING)
    return RunPrediction(
        kind_with_lr=full.schedule.kind,
        kind_from_displacement=blind.schedule.kind,
        drops_from_displacement=[int(d) for d in blind.schedule.drops],
        checkpoint_flags=flags,
        diverging_start=diverging_start,
        report_with_lr=full.to_dict(),
        report_from_displacement=blind.to_dict(),
    )


def match_drops(true: list[int], predicted: list[int], tolerance: int = DROP_TOLERANCE) -> int:
    """Number of one-to-one matches |true − predicted| ≤ tolerance, closest pairs first."""
    pairs = sorted((abs(t - p), i, j) for i, t in enumerate(true) for j, p in enumerate(predicted))
    used_true, used_pred = set(), set()
    for distance, i, j in pairs:
        if distance <= tolerance and i not in used_true and j not in used_pred:
            used_true.add(i)
            used_pred.add(j)
    return len(used_true)


@dataclass(frozen=True)
class Ratio:
    """hits / total, printed with its counts so small denominators show."""

    hits: int
    total: int

    @property
    def value(self) -> float | None:
        return self.hits / self.total if self.total else None

    def meets(self, goal: float) -> bool | None:
        return None if self.value is None else self.value >= goal

    def __str__(self) -> str:
        return "n/a (0/0)" if self.value is None else f"{self.value:.3f} ({self.hits}/{self.total})"


@dataclass(frozen=True)
class DropScore:
    true_positives: int
    n_true: int
    n_predicted: int

    @property
    def f1(self) -> float | None:
        denominator = self.n_true + self.n_predicted
        return 2 * self.true_positives / denominator if denominator else None

    def __str__(self) -> str:
        if self.f1 is None:
            return "n/a"
        return f"{self.f1:.3f} (tp {self.true_positives}, true {self.n_true}, found {self.n_predicted})"


@dataclass
class SplitScore:
    """Every figure of the table for one split of the corpus."""

    n_runs: int
    n_diverging: int
    n_checkpoints: int
    n_positive: dict[str, int]
    kind_with_lr: Ratio
    kind_from_displacement: Ratio
    drops: DropScore
    precision: dict[str, Ratio]
    recall: dict[str, Ratio]
    diverging_caught: Ratio
    diverging_lead_steps: list[int]
    slow_divergences_flagged: list[str]
    diverging_false_alarms: Ratio
    misread_kinds: list[str]


def precision_recall(flagged: np.ndarray, truth: np.ndarray) -> tuple[Ratio, Ratio]:
    """Precision and recall of boolean ``flagged`` against boolean ``truth`` (one shape)."""
    hits = int((flagged & truth).sum())
    return Ratio(hits, int(flagged.sum())), Ratio(hits, int(truth.sum()))


def score_split(records: list[RunRecord], predictions: list[RunPrediction]) -> SplitScore:
    """Pool every figure over the runs given (one split)."""
    stable = [(r, p) for r, p in zip(records, predictions) if not r.diverged]
    diverging = [(r, p) for r, p in zip(records, predictions) if r.diverged]
    step_runs = [(r, p) for r, p in stable if r.spec.schedule == "step"]
    labelled = [
        (c, flags) for r, p in zip(records, predictions) for c, flags in zip(r.checkpoints, p.checkpoint_flags)
    ]
    precision, recall, positives = {}, {}, {}
    for kind in LABELLED_KINDS:
        truth = np.array([getattr(c, kind) for c, _ in labelled], dtype=bool)
        flagged = np.array([kind in flags for _, flags in labelled], dtype=bool)
        positives[kind] = int(truth.sum())
        precision[kind], recall[kind] = precision_recall(flagged, truth)
    caught = [(r, p) for r, p in diverging if p.diverging_start is not None]
    return SplitScore(
        n_runs=len(records),
        n_diverging=len(diverging),
        n_checkpoints=len(labelled),
        n_positive=positives,
        kind_with_lr=Ratio(sum(p.kind_with_lr == true_kind(r) for r, p in stable), len(stable)),
        kind_from_displacement=Ratio(
            sum(p.kind_from_displacement == true_kind(r) for r, p in stable), len(stable)
        ),
        drops=DropScore(
            true_positives=sum(match_drops(r.drops, p.drops_from_displacement) for r, p in step_runs),
            n_true=sum(len(r.drops) for r, _ in step_runs),
            n_predicted=sum(len(p.drops_from_displacement) for _, p in step_runs),
        ),
        precision=precision,
        recall=recall,
        diverging_caught=Ratio(len(caught), len(diverging)),
        diverging_lead_steps=[r.onset - p.diverging_start for r, p in caught if r.blew_up],
        slow_divergences_flagged=[
            f"{r.spec.name}: loss ends {np.median(r.loss[-END_SAMPLES:]) / r.start_loss:.0f}x its start, its "
            f"100-step median above 2x from step {r.first_doubled()}; "
            + (f"flagged from step {p.diverging_start}" if p.diverging_start is not None else "NOT flagged")
            + f" (of {len(r.loss)})" for r, p in diverging if r.climbed],
        diverging_false_alarms=Ratio(sum(p.diverging_start is not None for _, p in stable), len(stable)),
        misread_kinds=[
            f"{r.spec.name}: with lr {p.kind_with_lr}, displacement only {p.kind_from_displacement}"
            for r, p in stable
            if true_kind(r) != p.kind_with_lr or true_kind(r) != p.kind_from_displacement
        ],
    )
