"""Benchmark ``lrwatch.analyze`` on a labelled corpus of real (tiny) training runs.

    python benchmarks/diagnosis_corpus.py [--rebuild] [--runs-summary] [--json FILE]

Builds (or loads from ``benchmarks/_cache/``) fifty plain-torch runs on six bundled or generated
scikit-learn tasks — SGD, SGD+momentum, Adam, AdamW under constant, StepLR and ExponentialLR schedules
at sensible, too-high, too-aggressive and diverging settings — with every optimizer step measured and
counterfactual labels at checkpoints (see ``corpus_runs``), and the same fifty again on other seeds.
Then scores ``lrwatch.analyze`` against the ground truth on three splits and prints the figures
beside their goals: *tuning* (the runs the thresholds were chosen on), *held-out* (whole seeds and a
whole task, ``corpus_specs.HELD_OUT_*``: scored after every change, so no longer unseen) and *fresh*
(the fifty runs on seeds shifted by ``corpus_specs.FRESH_SEED_OFFSET``, never used to choose anything).

``--json FILE`` saves per-run series, labels and predictions for whoever tunes the detector;
``--runs-summary`` lists the runs with their label counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys

import corpus_scoring as scoring
from corpus_cache import cache_path, corpus, labelling_constants
from corpus_runs import RunRecord
from corpus_specs import FRESH_SEED_OFFSET, split_of as spec_split

SPLITS = ("tuning", "held-out", "fresh")


def split_of(record: RunRecord) -> str:
    return spec_split(record.spec)


def _print_progress(i: int, record: RunRecord, seconds: float) -> None:
    print(f"  built {i + 1:2d} {record.spec.name:55s} {seconds:5.1f} s", flush=True)


def label_counts(records: list[RunRecord]) -> dict[str, int]:
    """Runs, checkpoints and positive labels of a group of records."""
    checkpoints = [c for r in records for c in r.checkpoints]
    return {
        "runs": len(records),
        "diverging runs": sum(r.diverged for r in records),
        "checkpoints": len(checkpoints),
        "decayed checkpoints": sum(c.decayed for c in checkpoints),
        **{f"{kind} positives": sum(getattr(c, kind) for c in checkpoints) for kind in scoring.LABELLED_KINDS},
    }


def print_label_counts(groups: dict[str, list[RunRecord]]) -> None:
    counts = {name: label_counts(group) for name, group in groups.items()}
    rows = next(iter(counts.values())).keys()
    print(f"\n{'label counts':30s}" + "".join(f"{name:>12s}" for name in counts))
    for row in rows:
        print(f"{row:30s}" + "".join(f"{counts[name][row]:>12d}" for name in counts))


def print_runs_summary(records: list[RunRecord]) -> None:
    print(f"\n{'split':9s} {'task':14s} {'optimizer':9s} {'schedule':12s} {'setting':15s} {'lr':>7s} seed"
          f" {'steps':>5s} {'drops':14s} {'diverges':>8s} {'ckpts':>5s} {'high':>4s} {'aggr':>4s}")
    for r in records:
        s = r.spec
        drops = ",".join(map(str, r.drops[:2])) + (f",…({len(r.drops)})" if len(r.drops) > 2 else "")
        print(f"{split_of(r):9s} {s.task:14s} {s.optimizer:9s} {s.schedule:12s} {s.setting:15s} {s.lr:7.3g}"
              f" {s.seed:4d} {len(r.lr):5d} {drops or '-':14s} {'slow' if r.climbed else str(r.divergence_step or '-'):>8s}"
              f" {len(r.checkpoints):5d} {sum(c.lr_too_high for c in r.checkpoints):4d}"
              f" {sum(c.decay_too_aggressive for c in r.checkpoints):4d}")


def _mark(met: bool | None) -> str:
    return {True: "ok", False: "MISS", None: "-"}[met]


def score_table(scores: dict[str, scoring.SplitScore]) -> list[tuple[str, str, list[str], list[bool | None]]]:
    """Rows (figure, goal, value per split, goal met per split)."""
    rows = []

    def add(name, goal, values, met):
        rows.append((name, goal, values, met))

    s = scores.values()
    add("runs (diverging)", "", [f"{x.n_runs} ({x.n_diverging})" for x in s], [None for _ in s])
    add("checkpoints", "", [str(x.n_checkpoints) for x in s], [None for _ in s])
    for kind in scoring.LABELLED_KINDS:
        add(f"  {kind} positives", "", [str(x.n_positive[kind]) for x in s], [None for _ in s])
    for label, attr, goal in (("kind accuracy, with lr", "kind_with_lr", scoring.GOAL_KIND_ACCURACY_WITH_LR),
                              ("kind accuracy, displacement only", "kind_from_displacement",
                               scoring.GOAL_KIND_ACCURACY_DISPLACEMENT)):
        add(label, f">= {goal}", [str(getattr(x, attr)) for x in s], [getattr(x, attr).meets(goal) for x in s])
    add(f"drop F1 (±{scoring.DROP_TOLERANCE}), displacement only", f">= {scoring.GOAL_DROP_F1}",
        [str(x.drops) for x in s],
        [None if x.drops.f1 is None else x.drops.f1 >= scoring.GOAL_DROP_F1 for x in s])
    for kind in scoring.LABELLED_KINDS:
        add(f"{kind} precision", f">= {scoring.GOAL_PRECISION}", [str(x.precision[kind]) for x in s],
            [x.precision[kind].meets(scoring.GOAL_PRECISION) for x in s])
        add(f"{kind} recall", f">= {scoring.GOAL_RECALL}", [str(x.recall[kind]) for x in s],
            [x.recall[kind].meets(scoring.GOAL_RECALL) for x in s])
    add("diverging runs flagged before onset", "all", [str(x.diverging_caught) for x in s],
        [x.diverging_caught.meets(1.0) for x in s])
    add("  steps ahead of a blow-up (min/median)", "", [
        f"{min(x.diverging_lead_steps)}/{statistics.median(x.diverging_lead_steps):g}"
        if x.diverging_lead_steps else "-" for x in s], [None for _ in s])
    add("'diverging' on non-diverging runs", "none", [str(x.diverging_false_alarms) for x in s],
        [None if x.diverging_false_alarms.total == 0 else x.diverging_false_alarms.hits == 0 for x in s])
    return rows


def print_scores(scores: dict[str, scoring.SplitScore]) -> None:
    width = 34
    print(f"\n{'figure':42s} {'goal':>8s}" + "".join(f"  {name:>{width}s}" for name in scores))
    for name, goal, values, met in score_table(scores):
        cells = "".join(f"  {v + ('' if m is None else ' ' + _mark(m)):>{width}s}" for v, m in zip(values, met))
        print(f"{name:42s} {goal:>8s}{cells}")
    for split, score in scores.items():
        for line in score.misread_kinds:
            print(f"  kind misread ({split}): {line}")
        for line in score.slow_divergences_flagged:
            print(f"  slow divergence ({split}): {line}")
    constants = labelling_constants()
    print("\nOnset of divergence: the first non-finite loss or displacement, or a loss above "
          f"{constants['DIVERGENCE_LOSS_RATIO']:g}x the initial one (a blow-up); a run without one that ends "
          f"above {constants['SLOW_DIVERGENCE_RATIO']:g}x its initial loss diverged slowly and must be flagged "
          "somewhere in it. Kind and drop scores leave diverging runs out; a diagnosis counts at checkpoint t "
          "only if active at t on the series cut at t.")


def _json_safe(value):
    """Floats that JSON cannot hold (NaN, ±inf) become None; containers are converted recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    return value


def run_details(record: RunRecord, prediction: scoring.RunPrediction | None) -> dict:
    """Everything about one run, JSON-ready."""
    checkpoints = [dataclasses.asdict(c) for c in record.checkpoints]
    if prediction is not None:
        for c, flags in zip(checkpoints, prediction.checkpoint_flags):
            c["flags"] = flags
    return _json_safe({
        "name": record.spec.name,
        "split": split_of(record),
        "spec": dataclasses.asdict(record.spec),
        "truth": {"kind": scoring.true_kind(record), "drops": record.drops, "start_loss": record.start_loss,
                  "first_nonfinite": record.first_nonfinite, "divergence_step": record.divergence_step,
                  "slow_divergence": record.climbed},
        "series": {"displacement": record.displacement, "lr": record.lr, "grad_norm": record.grad_norm,
                   "loss": record.loss, "descent": record.descent, "momentum": record.momentum},
        "checkpoints": checkpoints,
        "prediction": None if prediction is None else dataclasses.asdict(prediction),
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="regenerate the corpus even if cached")
    parser.add_argument("--runs-summary", action="store_true", help="list every run with its label counts")
    parser.add_argument("--json", metavar="FILE", help="save per-run series, labels and predictions")
    args = parser.parse_args(argv)

    records, seconds = [], 0.0
    for offset in (0, FRESH_SEED_OFFSET):
        part, part_seconds, built = corpus(rebuild=args.rebuild, progress=_print_progress, seed_offset=offset)
        print(f"corpus (seeds +{offset}): {len(part)} runs, generated in {part_seconds:.1f} s on 1 thread "
              f"({'built now' if built else 'cached'}: {cache_path(offset)})")
        records, seconds = records + part, seconds + part_seconds
    print("labelling: " + ", ".join(f"{k}={v:g}" for k, v in labelling_constants().items()))
    groups = {split: [r for r in records if split_of(r) == split] for split in SPLITS}
    print_label_counts({**groups, "all": records})
    if args.runs_summary:
        print_runs_summary(records)

    try:
        from lrwatch import analyze
    except ImportError as error:
        print(f"\nlrwatch.analyze is not importable ({error}); no scores.")
        predictions = [None] * len(records)
    else:
        predictions = [scoring.predict_run(r, analyze) for r in records]
        scores = {}
        for split in SPLITS:
            members = [i for i, r in enumerate(records) if split_of(r) == split]
            scores[split] = scoring.score_split([records[i] for i in members], [predictions[i] for i in members])
        print_scores(scores)

    if args.json:
        details = {
            "labelling": labelling_constants(),
            "generation_seconds": seconds,
            "runs": [run_details(r, p) for r, p in zip(records, predictions)],
        }
        if predictions[0] is not None:
            details["scores"] = _json_safe({k: dataclasses.asdict(v) for k, v in scores.items()})
        with open(args.json, "w") as f:
            json.dump(details, f)
        print(f"\nper-run details written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
