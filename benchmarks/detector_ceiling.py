"""How good can a causal detector get on the diagnosis corpus? Two bounds beside ``analyze``'s own scores.

    python benchmarks/detector_ceiling.py [--repeats N]

``benchmarks/diagnosis_corpus.py`` scores ``lrwatch.analyze`` against counterfactual labels: at a checkpoint,
copies of the run train 50 more updates with the lr kept, dropped 10x and restored, and a branch "wins" when
its full-data loss is at least 10% below the keep branch's (``corpus_runs.branch_labels``). Its goals ask
for precision >= 0.90 and recall >= 0.80 per diagnosis. This script measures two things that say how far
those goals are within reach of any detector that sees only the run so far (both corpora of the benchmark,
seeds 0-2 and 10-12, read from the cache that script fills; no network is trained here):

* **Margin noise.** A detector predicts the branches' losses 50 updates ahead. An oracle that knows them up
  to independent multiplicative errors exp(sigma * z), z standard normal, relabels every checkpoint from the
  perturbed losses; printed: its precision and recall against the true labels, per sigma (mean over
  ``--repeats`` draws). It tells how accurately the future losses must be predicted to meet the goals,
  because many checkpoints sit near the 10% margin.
* **A fitted classifier.** Gradient-boosted trees (scikit-learn's ``HistGradientBoostingClassifier``) on
  ``FEATURES``, figures of the series up to each checkpoint (the loss's fall and its significance over 50 and
  100 updates, the descent's first-order promise, the noise-floor excess of ``lrwatch.noise_floor`` now and at
  the peak lr, where the lr stands against its peak and its mean, the displacement's and gradient's size
  against the peak-lr phase, the loss against its start and best), fitted on the labels themselves. Scored
  three ways: in-sample (what the features can express), leave-one-task-out (each task predicted by trees
  fitted on the other five: a user's run is a task the detector has not seen) and seeds 0-2 -> seeds 10-12
  (the same configurations on new seeds, as the benchmark's *fresh* split). Decay labels are fitted on
  decayed checkpoints only (the label requires a decayed lr, which the lr series shows).

Both bounds are against the same labels and checkpoints as the benchmark (every checkpoint of every run,
before any divergence). Last, ``lrwatch.analyze`` itself, scored as the benchmark scores it, on all
checkpoints and on those whose labels do not hang on the margin's exact value (the same at margins
``BAND``[0] and ``BAND``[1]): how much of what it misses is a near-tie.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from lrwatch import analyze
from lrwatch.noise_floor import excess_loss

from corpus_cache import corpus
from corpus_runs import MIN_GAIN_FRACTION, RunRecord, branch_labels
from corpus_scoring import GOAL_RECALL, LABELLED_KINDS, predict_run
from corpus_scoring import precision_recall as ratios
from corpus_specs import FRESH_SEED_OFFSET, split_of

SIGMAS = (0.0, 0.02, 0.05, 0.1, 0.2)
#: Margins between which a label is a near-tie: it changes when the 10% margin moves within them.
BAND = (0.05, 0.15)
#: Names of the columns of `causal_features`, in order.
FEATURES = (
    "fall50", "z50", "efficiency50", "excess50", "loss_cv50", "displacement_cv50",
    "fall100", "z100", "efficiency100", "excess100", "loss_cv100", "displacement_cv100",
    "log_lr_fraction", "mean_lr_fraction", "momentum", "step", "steps_since_peak_lr", "log_loss_over_start",
    "fall_since_peak_lr", "excess_at_peak_lr", "grad_norm_over_peak_lr", "log_displacement_over_peak_lr",
    "loss_over_best",
)


def _fall(y: np.ndarray) -> tuple[float, float]:
    """The least-squares fall of ``y`` per index and its standard error."""
    x = np.arange(len(y), dtype=float) - (len(y) - 1) / 2
    slope = float((x * (y - y.mean())).sum() / (x * x).sum())
    residual = y - y.mean() - slope * x
    return -slope, float(np.sqrt((residual**2).sum() / max(len(y) - 2, 1) / (x * x).sum()))


def causal_features(record: RunRecord, step: int) -> np.ndarray:
    """`FEATURES` at checkpoint ``step`` from the run's series up to and including update ``step``: shape
    (len(FEATURES),), NaN where undefined (a zero loss or descent)."""
    n = step + 1
    loss, lr, descent, beta, grad, m = (np.asarray(a[:n], dtype=float) for a in (
        record.loss, record.lr, record.descent, record.momentum, record.grad_norm, record.displacement))
    excess = excess_loss(descent, beta)
    peak = lr.max()
    at_peak = lr >= 0.5 * peak
    values = []
    with np.errstate(all="ignore"):
        for window in (50, 100):
            w = min(window, n)
            level, fall = loss[-w:].mean(), _fall(loss[-w:])
            values += [fall[0] * 100 / level, fall[0] / fall[1], fall[0] / descent[-w:].mean(),
                       excess[-w:].mean() / level, loss[-w:].std() / level, m[-w:].std() / m[-w:].mean()]
        level = loss[-50:].mean()
        values += [np.log10(lr[-1] / peak), lr.mean() / peak, beta[-1], step, n - 1 - np.flatnonzero(at_peak)[-1],
                   np.log10(level / np.median(loss[:5])), (loss[at_peak][-20:].mean() - level) / level,
                   excess[at_peak][-50:].mean() / level, grad[-50:].mean() / np.median(grad[at_peak][-50:]),
                   np.log10(np.median(m[-50:]) / np.median(m[at_peak][-50:])), level / loss.min()]
    features = np.array(values, dtype=float)
    features[~np.isfinite(features)] = np.nan
    return features


def precision_recall(flags: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """`corpus_scoring.precision_recall` as floats for the tables here, NaN for 0/0."""
    return tuple(float("nan") if ratio.value is None else ratio.value for ratio in ratios(flags, labels))


def checkpoint_table(records: list[RunRecord]) -> dict[str, np.ndarray]:
    """Per checkpoint of every record: branch losses, decayed, gain floor, labels, run task and split."""
    rows = [(r, c) for r in records for c in r.checkpoints]
    column = {name: np.array([getattr(c, name) for _, c in rows]) for name in
              ("loss_keep", "loss_drop", "loss_restore", "decayed", *LABELLED_KINDS)}
    column["gain_floor"] = np.array([MIN_GAIN_FRACTION * r.start_loss for r, _ in rows])
    column["task"] = np.array([r.spec.task for r, _ in rows])
    column["split"] = np.array([split_of(r.spec) for r, _ in rows])
    return column


def clear_of_margin(table: dict[str, np.ndarray], band: tuple[float, float] = BAND) -> dict[str, np.ndarray]:
    """Per kind, the checkpoints whose label is the same at both margins of ``band``."""
    at = [branch_labels(table["loss_keep"], table["loss_drop"], table["loss_restore"], table["decayed"],
                        table["gain_floor"], margin) for margin in band]
    return {kind: at[0][i] == at[1][i] for i, kind in enumerate(LABELLED_KINDS)}


def margin_noise(table: dict[str, np.ndarray], sigma: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Labels from the drop and restore losses each times exp(sigma * z): what an oracle predicting them with
    that error would flag, per kind."""
    noisy = [table[name] * np.exp(sigma * rng.standard_normal(len(table[name])))
             for name in ("loss_drop", "loss_restore")]
    flags = branch_labels(table["loss_keep"], *noisy, table["decayed"], table["gain_floor"])
    return dict(zip(LABELLED_KINDS, flags))


def best_precision(scores: np.ndarray, labels: np.ndarray, least_recall: float) -> float:
    """The highest precision any threshold on ``scores`` reaches at recall >= ``least_recall``: chosen on the
    scored predictions themselves, so optimistic."""
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(labels[order])
    precision, recall = hits / np.arange(1, len(order) + 1), hits / max(labels.sum(), 1)
    reached = recall >= least_recall
    return float(precision[reached].max()) if reached.any() else float("nan")


def fitted_scores(features: np.ndarray, table: dict[str, np.ndarray], kind: str) -> dict[str, tuple[float, ...]]:
    """(precision, recall at probability 0.5, best precision at recall >= GOAL_RECALL) of gradient-boosted trees
    fitted on ``kind``'s labels: in-sample, leave one task out, seeds 0-2 -> fresh seeds. Checkpoints the trees
    do not score (decay: not decayed) get probability 0."""
    labels = table[kind].astype(bool)
    usable = table["decayed"].astype(bool) if kind == "decay_too_aggressive" else np.ones(len(labels), dtype=bool)

    def probabilities(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        model = HistGradientBoostingClassifier(max_depth=3, max_iter=200, learning_rate=0.05, random_state=0)
        model.fit(features[train & usable], labels[train & usable])
        result = np.zeros(len(labels))
        result[test & usable] = model.predict_proba(features[test & usable])[:, 1]
        return result

    def figures(p: np.ndarray, truth: np.ndarray) -> tuple[float, ...]:
        return (*precision_recall(p > 0.5, truth), best_precision(p, truth, GOAL_RECALL))

    everything = np.ones(len(labels), dtype=bool)
    by_task = np.zeros(len(labels))
    for task in np.unique(table["task"]):
        by_task += probabilities(table["task"] != task, table["task"] == task)
    fresh = table["split"] == "fresh"
    return {"in-sample": figures(probabilities(everything, everything), labels),
            "leave-one-task-out": figures(by_task, labels),
            "seeds 0-2 -> fresh": figures(probabilities(~fresh, fresh)[fresh], labels[fresh])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="noise draws per sigma (default 20)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    records = [r for offset in (0, FRESH_SEED_OFFSET) for r in corpus(seed_offset=offset)[0]]
    table = checkpoint_table(records)
    print(f"{len(records)} runs, {len(table['task'])} checkpoints; positives: "
          + ", ".join(f"{kind} {int(table[kind].sum())}" for kind in LABELLED_KINDS))

    print("\nmargin noise: an oracle knowing each branch's loss 50 updates ahead up to a factor exp(sigma z)")
    print(f"{'sigma':>6s}" + "".join(f"{kind + ' P':>26s}{'R':>6s}" for kind in LABELLED_KINDS))
    rng = np.random.default_rng(0)
    for sigma in SIGMAS:
        draws = [margin_noise(table, sigma, rng) for _ in range(args.repeats)]
        cells = [np.mean([precision_recall(d[kind], table[kind]) for d in draws], axis=0) for kind in LABELLED_KINDS]
        print(f"{sigma:6.2f}" + "".join(f"{p:26.3f}{r:6.3f}" for p, r in cells))

    flags = [kind in active for r in records for active in predict_run(r, analyze).checkpoint_flags
             for kind in LABELLED_KINDS]
    flagged = {kind: np.array(flags[i::len(LABELLED_KINDS)]) for i, kind in enumerate(LABELLED_KINDS)}
    clear = clear_of_margin(table)
    print(f"\nlrwatch.analyze{'':7s}" + "".join(f"{kind + ' P':>26s}{'R':>6s}{'n':>6s}" for kind in LABELLED_KINDS))
    for name, subset in (("all checkpoints", None), (f"clear of {BAND[0]}-{BAND[1]}", clear)):
        cells = []
        for kind in LABELLED_KINDS:
            keep = np.ones(len(table[kind]), dtype=bool) if subset is None else subset[kind]
            cells.append((*precision_recall(flagged[kind][keep], table[kind][keep].astype(bool)), keep.sum()))
        print(f"{name:22s}" + "".join(f"{p:26.3f}{r:6.3f}{n:6d}" for p, r, n in cells))

    features = np.stack([causal_features(r, c.step) for r in records for c in r.checkpoints])
    print(f"\nfitted classifier on {len(FEATURES)} causal features (gradient-boosted trees, depth 3, 200 rounds)")
    print(f"{'scored':22s}" + "".join(f"{kind + ' P':>26s}{'R':>6s}{'P@R>=' + str(GOAL_RECALL):>10s}"
                                      for kind in LABELLED_KINDS))
    scores = {kind: fitted_scores(features, table, kind) for kind in LABELLED_KINDS}
    for way in next(iter(scores.values())):
        print(f"{way:22s}" + "".join(f"{scores[kind][way][0]:26.3f}{scores[kind][way][1]:6.3f}{scores[kind][way][2]:10.3f}"
                                      for kind in LABELLED_KINDS))
    print(f"(P, R: at probability 0.5; P@R>={GOAL_RECALL}: the best precision of any threshold with recall >= "
          f"{GOAL_RECALL}, the threshold chosen on the scored predictions themselves, so optimistic)")


if __name__ == "__main__":
    main()
