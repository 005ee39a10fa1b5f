"""How far the diagnosis corpus's labels are from chance: every checkpoint labelled again on other batches.

    python benchmarks/label_consistency.py [--draws N] [--fresh] [--json FILE]

A corpus label (``corpus_runs``) is one counterfactual outcome: the state at checkpoint t trained on
for 50 updates on the minibatches the run itself would see next. On other minibatches the same state
may come out the other way, and no detector, which sees only the run up to t, can know which batches
come. This retrains every corpus run (``--fresh``: the fresh corpus's seeds) and labels each checkpoint
``--draws`` more times, each on an independent window of minibatches (``corpus_runs.redraw_window``),
then prints per split and diagnosis kind:

* how often all labels of a checkpoint agree;
* the corpus labels scored against the redrawn ones (mean over draws): what a detector that reproduced
  the corpus labels exactly would score on the same states with other batches;
* two *informed* detectors, which flag where at least half / all of the redrawn labels are positive
  (they know each state's outcome on other batches), scored against the corpus labels as the benchmark
  scores ``analyze``: the precision and recall the labels' own noise leaves within reach.

Several minutes (about four at the default three draws, on one thread); nothing is cached.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from corpus_runs import RunRecord, train_run
from corpus_scoring import LABELLED_KINDS
from corpus_specs import FRESH_SEED_OFFSET, corpus_specs, split_of


def label_matrix(records: list[RunRecord], kind: str) -> np.ndarray:
    """Shape (n_checkpoints, 1 + draws), bool: the corpus label of ``kind`` then the redrawn ones."""
    rows = [[getattr(c, kind), *(getattr(r, kind) for r in again)]
            for record in records for c, again in zip(record.checkpoints, record.redrawn)]
    return np.array(rows, dtype=bool) if rows else np.zeros((0, 1), dtype=bool)


def consistency(labels: np.ndarray) -> dict[str, float]:
    """Figures of one (n_checkpoints, 1 + draws) label matrix (see the module docstring); NaN where a
    ratio has no denominator."""
    corpus, redrawn = labels[:, 0], labels[:, 1:]

    def ratio(hits, total) -> float:
        return float(hits / total) if total else float("nan")

    def mean(values: list[float]) -> float:
        finite = [v for v in values if not np.isnan(v)]
        return float(np.mean(finite)) if finite else float("nan")

    half = 2 * redrawn.sum(axis=1) >= redrawn.shape[1]
    unanimous = redrawn.all(axis=1)
    return {
        "checkpoints": len(labels),
        "corpus positives": int(corpus.sum()),
        "all labels agree": ratio(np.all(labels == labels[:, :1], axis=1).sum(), len(labels)),
        "corpus labels' precision on other batches": mean([ratio((corpus & d).sum(), corpus.sum()) for d in redrawn.T]),
        "corpus labels' recall on other batches": mean([ratio((corpus & d).sum(), d.sum()) for d in redrawn.T]),
        **{f"informed ({name}) {figure}": value for name, informed in (("half", half), ("all", unanimous))
           for figure, value in (("precision", ratio((informed & corpus).sum(), informed.sum())),
                                 ("recall", ratio((informed & corpus).sum(), corpus.sum())))},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=3, help="extra labels per checkpoint (default 3)")
    parser.add_argument("--fresh", action="store_true", help="the fresh corpus (seeds shifted) instead")
    parser.add_argument("--json", metavar="FILE", help="save the figures")
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws must be at least 1, got {args.draws}")

    torch.set_num_threads(1)
    started = time.perf_counter()
    records = [train_run(spec, redraws=args.draws)
               for spec in corpus_specs(FRESH_SEED_OFFSET if args.fresh else 0)]
    splits = sorted({split_of(r.spec) for r in records})
    splits += ["all"] if len(splits) > 1 else []
    figures = {kind: {split: consistency(label_matrix(
        [r for r in records if split in ("all", split_of(r.spec))], kind)) for split in splits}
        for kind in LABELLED_KINDS}
    print(f"{len(records)} runs retrained, every checkpoint labelled {args.draws} more times on independent "
          f"minibatches ({time.perf_counter() - started:.0f} s)")
    for kind, per_split in figures.items():
        print(f"\n{kind:42s}" + "".join(f"{split:>10s}" for split in per_split))
        for name in next(iter(per_split.values())):
            print(f"{name:42s}" + "".join(f"{values[name]:>10.3g}" for values in per_split.values()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
