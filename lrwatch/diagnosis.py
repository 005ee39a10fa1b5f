"""Diagnoses of how the lr schedule drives training, from per-step series (numpy only).

`Analyzer` takes a run chunk by chunk (the Lightning callback feeds it at every flush) and keeps a
bounded state: the last few blocks of samples and running figures. `analyze` is one chunk. The
result never depends on how the run was cut into chunks (every statistic is an order statistic,
an element-wise operation or a fixed-order sum, as in `lrwatch.signature`), every decision at a
step uses data up to that step only, and scaling the displacement by c > 0 changes nothing (only
ratios and coefficients of variation of it are used).

Windowed rules are evaluated at the last sample of each block of ``block`` samples and hold until
the next block ends (a lag of at most block - 1 samples); ``diverging`` is decided at every sample.
Windows count samples (one per recorded step). Per block each series is summarised by its median
(the loss and descent also by their means, for the least-squares fits of `lrwatch.noise_floor`);
over the last ``window`` samples:

* windowed m: the median of m's block medians;
* the loss's *progress*: how far its windowed median is below the best windowed median of the windows
  that ended at least ``stall_windows`` windows earlier, as a fraction of that best (<= 0: no new low);
* the loss's *gain*: the least-squares line through the block medians of the last two windows,
  compared at their centres, (earlier - later) / |earlier|, with its standard error.

Rules (thresholds in `Thresholds`; the windowed ones switch on at one threshold and off at a looser
one, so noise does not make them flicker):

* ``lr_too_high`` (needs the loss and the descent −⟨Δw, g⟩ that StepMeter measures): the lr's noise
  floor holds a large share of the loss, more than the loss's current fall would win back soon (the
  issue's "loss stagnates while m stays large", made quantitative). Over the last
  ``noise_window`` samples since the lr last fell (`lrwatch.noise_floor`), the excess-loss estimate
  mean(descent) / (4 (1 − β)) is at least ``noise_floor_fraction`` of the mean loss (it ends below
  ``noise_floor_exit``), and a 10× drop would gain more than the loss falls in ``noise_horizon``
  optimizer steps at its current rate: 0.9 · excess ≥ noise_horizon · fall (the least-squares fall per
  step, from the block means against their steps: the same figure when only every k-th step is
  measured). β is the optimizer's momentum coefficient (``momentum``; 0 when not given).
  Advice: bring the next lr drop forward. Without a descent series this rule never fires: neither
  the displacement nor the loss alone tells a noise floor the lr holds from a minimum the model holds
  (on the labelled corpus an m-and-loss rule reached recall 0.04).
* ``decay_too_aggressive`` (needs the loss): windowed m fell to ``collapse_fraction`` of its peak;
  at the last block where m was healthy (at least ``healthy_fraction`` of its peak) the gain was at
  least ``improving_gain`` and ``sigmas`` standard errors; progress is now at most ``stall_gain``; and
  the gradient part (grad_norm, else m / lr; unknown counts as intact) kept ``grad_keep`` of its
  size at that healthy block, so the lr, not the gradient, collapsed. Ends when m is healthy again,
  progress reaches ``resume_gain``, or the gradient part falls below ``grad_keep`` squared.
  Advice: decay more slowly.
  With the lr given it also holds while the lr has decayed (at most ``decayed_fraction`` of its running
  peak) and the run is *lr-limited*: over the last ``window`` samples the loss still falls, by at least
  ``sigmas`` standard errors (least-squares line through block means), and either at least
  ``lr_limited_efficiency`` of the first-order decrease the steps promise (the mean descent), or so fast
  that over ``noise_horizon`` steps it would fall ``lr_limited_floor_multiple`` times the excess loss
  the lr's noise holds (`lrwatch.noise_floor`, over the same window). A loss that falls about as fast
  as the steps promise, or far faster than its noise floor could account for, is in a descent, not on
  a noise floor, and a larger lr would go faster (needs the descent; decided at block ends). And it
  holds, decided at every sample, while the lr has *used little of its budget*: it is at most ``decayed_fraction`` of its running
  peak and its mean over the samples so far is at most ``lr_budget_fraction`` of that peak (the run
  has had fewer than that fraction of its steps' worth of training at the peak lr). On the labelled corpus (benchmarks/diagnosis_corpus.py,
  300-600-step runs) "restoring the lr wins" was found almost only where the schedule had spent
  little of its lr budget; an lr decayed after most of the budget was used seldom gains from more.
  None of its sides holds while ``diverging`` does: a run blown up by too high an lr needs a lower one,
  and its loss falling back under the decayed lr would read as an lr that limits progress.
* ``diverging``: a non-finite displacement, loss or gradient norm (then it stays flagged for good),
  or the last ``diverge_recent`` values of the loss or of the gradient part (m itself when neither
  grad_norm nor lr is given, so an lr warmup can pass for growth) all above ``diverge_factor`` times
  the median of the ``diverge_window`` samples before them; a jump keeps the flag ``diverge_hold``
  samples, so the flag shows before the first NaN. The loss also has a reference from its first
  samples: its *start level*, the median of its first ``diverge_start`` finite values, stands in for
  its running median until the first window exists, so a run that blows up within its first
  ``diverge_window`` steps is caught (the gradient part and m have none: they may rightly grow early,
  under a warmup or leaving a flat initialisation). When the loss is given, a jump counts only while
  the last ``diverge_recent`` losses are all above ``diverge_start_factor`` times the start level: a
  too-high lr makes a loss that has fallen near 0 spike many-fold without the run blowing up.
  A slow blow-up has no jump: a cross-entropy loss grows only linearly with the weights, and under a
  too-high lr can climb hundreds-fold over hundreds of steps without ever growing 4x within 20. So
  ``diverging`` also holds, decided at block ends, from when the loss's windowed median (over
  ``window`` samples) is at least ``diverge_start_factor`` times its start level until it is below
  ``diverge_level_exit`` times it: a loss settled far above where training began (not decided for a
  start level <= 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from lrwatch._checks import require_positive_int_fields
from lrwatch.noise_floor import DROP_GAIN, NoiseFloorWindow, block_summaries, excess_loss
from lrwatch.signature import (
    Signature,
    SignatureParams,
    SignatureTracker,
    Tail,
    as_series,
    as_steps,
    block_medians,
    json_float,
    split_blocks,
    window_dot,
    window_medians,
)

LR_TOO_HIGH = "lr_too_high"
DECAY_TOO_AGGRESSIVE = "decay_too_aggressive"
DIVERGING = "diverging"
RULES = (LR_TOO_HIGH, DECAY_TOO_AGGRESSIVE, DIVERGING)
"""Kinds `Analyzer` can flag, in the order it reports simultaneous starts."""
LR_LIMITED = "lr_limited"
"""Internal windowed state: a side of decay_too_aggressive (with a decayed lr), never reported alone."""
LOSS_CLIMBED = "loss_climbed"
"""Internal windowed state: the side of diverging that a slow blow-up shows, never reported alone."""


@dataclass(frozen=True)
class Diagnosis:
    """One flagged condition over a span of steps.

    kind: what was found ("lr_too_high", "decay_too_aggressive", "diverging", or a kind another
        component adds, e.g. "above_stability_ceiling").
    start: first step at which it held. end: last step at which it held (inclusive), None while it
        still holds at the last step seen.
    message: one sentence a person can act on. evidence: the figures that triggered it (finite floats).
    """

    kind: str
    start: int
    end: int | None
    message: str
    evidence: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready: plain ints, floats and strings; non-finite evidence as None."""
        return {
            "kind": self.kind,
            "start": int(self.start),
            "end": None if self.end is None else int(self.end),
            "message": self.message,
            "evidence": {k: json_float(v) for k, v in self.evidence.items()},
        }


@dataclass(frozen=True)
class Report:
    """The schedule's signature and the diagnoses of a run (or of the part of it seen so far).

    n_steps: number of samples (recorded steps) analysed.
    loss_progress: at the last block end, how far the loss's windowed median is below its best level
        among the windows that ended at least ``stall_windows`` windows earlier, as a fraction of that
        best (<= 0: no new low over that long horizon); None while unknown (no loss, or fewer than
        about (stall_windows + 1) windows of samples).
    """

    schedule: Signature
    diagnoses: list[Diagnosis]
    n_steps: int
    loss_progress: float | None = None

    def active(self, step: int) -> list[str]:
        """Kinds of the diagnoses that hold at ``step``."""
        return [d.kind for d in self.diagnoses if d.start <= step and (d.end is None or step <= d.end)]

    def to_dict(self) -> dict:
        """JSON-ready (no numpy scalars, no NaN)."""
        return {
            "schedule": self.schedule.to_dict(),
            "diagnoses": [d.to_dict() for d in self.diagnoses],
            "n_steps": int(self.n_steps),
            "loss_progress": json_float(self.loss_progress),
        }


@dataclass(frozen=True)
class Thresholds:
    """Named thresholds of the rules (see the module docstring). Windows count samples (measured steps:
    with a run measured every k-th step they reach k times further back); rates are per optimizer step.

    The defaults were set on tiny runs (SGD on scikit-learn's digits, as in tests/test_diagnosis.py),
    where they flag the noisy plateau, the early collapse and the divergence there and leave a clean
    improving run alone; they are meant to be tuned on a labelled corpus of real runs.

    block: samples per evaluation block; windowed rules update at each block's last sample.
    window: samples per comparison window, a multiple of ``block``.
    stall_gain: the loss stagnates while its progress (below its best earlier windowed level, as a
        fraction of it) is at most this: 0 means "no new low".
    stall_windows: progress is measured against windows that ended at least this many windows
        earlier: 2 keeps minibatch noise from passing a slowly improving loss for a stall.
    resume_gain: a stall ends when progress reaches this (above stall_gain: hysteresis against noise).
    sigmas: a gain counts as "improving" before a collapse only when it is at least this many of its
        standard errors.
    noise_window: samples over which ``lr_too_high`` averages the descent and the loss, a multiple of
        ``block``; the window starts after the lr last fell (``lr_fall_fraction``).
    noise_min_samples: fewest samples (a multiple of ``block``) such a window needs, e.g. right after
        an lr drop. On the corpus's tuning split (before noise_horizon) 20 / 30 / 40 gave precision
        0.83 / 0.85 / 0.85, recall 1.0.
    noise_floor_fraction: ``lr_too_high`` starts when the excess-loss estimate is at least this
        fraction of the mean loss. Dropping the lr 10x removes about 0.9 of the excess, so 0.3 asks
        for a drop to gain about a quarter of the loss. On the corpus's tuning split (benchmarks/
        diagnosis_corpus.py, exit 0.2, before noise_horizon existed) 0.2 / 0.3 / 0.4 / 0.5 gave
        precision 0.81 / 0.85 / 0.85 / 0.84 at recall 1.0 / 1.0 / 1.0 / 0.98; with noise_horizon 100,
        0.2 / 0.3 gave 0.85 / 0.90 at recall 0.82 / 0.80.
    noise_floor_exit: ... and ends when it falls below this (hysteresis), at most noise_floor_fraction.
    noise_horizon: optimizer steps over which keeping the lr is weighed against a 10x drop: the drop pays
        when 0.9 x the excess is at least this many steps' worth of the loss's current fall. On the tuning
        split 50 / 75 / 100 / 150 gave precision 0.85 / 0.87 / 0.90 / 0.88 at recall 0.91 / 0.84 / 0.80 /
        0.66; it is also what keeps a well-tuned high lr early in training (loss still falling fast)
        unflagged (benchmarks/closed_loop.py).
    lr_fall_fraction: the noise window starts after the latest block whose largest lr is above
        1 / this times the current block's smallest (an lr drop).
    improving_gain: least gain, at the last block where m was healthy, that counts as "still
        improving at a good rate" before a collapse (it must also be ``sigmas`` standard errors).
    collapse_fraction: m has collapsed when its windowed median is at most this times its peak.
    healthy_fraction: m is healthy when its windowed median is at least this times its peak.
    grad_keep: the gradient part is intact when its windowed median is at least this times its
        value at the last healthy block.
    diverge_factor: a jump is the last ``diverge_recent`` values all above this times the running median.
    diverge_recent: consecutive samples a jump must last.
    diverge_window: samples in the running median a jump is measured against, a multiple of ``block``.
    diverge_hold: samples a jump keeps ``diverging`` active.
    diverge_start: the loss's start level is the median of its first this many finite values; it is
        the loss's reference until the first ``diverge_window`` samples exist.
    diverge_start_factor: with a loss, a jump counts only while the last ``diverge_recent`` losses are
        all above this times the start level. On the corpus's tuning split (benchmarks/
        diagnosis_corpus.py, 25 runs that do not diverge, 4 that do) 1 / 2 / 3 / 4 / 6 / 8 gave 2 / 1 /
        0 / 0 / 0 / 0 false alarms (too-high lrs' spikes from a loss near 0), all 4 caught before onset.
        The same factor starts the slow side: a windowed loss median at this times the start level is a
        slow blow-up. On the whole corpus that median stayed below 1x the start level on every run that
        does not diverge, and reached 84x on the one that climbs without blowing up.
    diverge_level_exit: the slow side ends when the windowed loss median falls below this times the
        start level (hysteresis: at most diverge_start_factor).
    decayed_fraction: the lr counts as decayed when at most this times its running peak (0.5, as in
        the corpus's labelling: a decayed lr is one at most half the initial).
    lr_limited_efficiency: a decayed lr is *limiting* while the loss falls at least this fraction of the
        mean descent. On the corpus's tuning split (with the other two sides, window 100, sigmas 2)
        0.3 / 0.5 / 0.7 gave precision 0.89 / 0.92 / 0.93 at recall 0.86 / 0.84 / 0.77 (without this
        side: 0.91 / 0.60).
    lr_limited_floor_multiple: ... or while over ``noise_horizon`` steps the loss would fall at least
        this many times the excess loss (the mirror of ``lr_too_high``, which asks whether a drop gains
        more than that fall: here the fall dwarfs what the lr's noise costs). Chosen on the corpus's
        tuning split (with the other sides at their defaults), where 20 / 40 / 60 / 80 / 120 gave
        precision 0.85 / 0.90 / 0.93 / 0.93 / 0.93 at recall 0.88 / 0.88 / 0.86 / 0.85 / 0.84 (without
        this side: 0.92 / 0.84); on the held-out split 40-80 gave 0.83 / 0.65 (without: 0.81 / 0.58).
        Evaluated once on the fresh split after it was chosen.
    lr_budget_fraction: the lr has used little of its budget while its mean over the samples so far
        is at most this times its running peak. Chosen on the corpus's tuning split, where 0.2 / 0.3 / 0.4
        gave precision 0.97 / 0.91 / 0.84 and recall 0.48 / 0.60 / 0.74 (lr given, 300-600-step runs).
    """

    block: int = 10
    window: int = 100
    stall_gain: float = 0.0
    resume_gain: float = 0.05
    sigmas: float = 2.0
    stall_windows: int = 2
    noise_window: int = 50
    noise_min_samples: int = 30
    noise_floor_fraction: float = 0.3
    noise_floor_exit: float = 0.2
    noise_horizon: int = 100
    lr_fall_fraction: float = 0.5
    improving_gain: float = 0.1
    collapse_fraction: float = 0.1
    healthy_fraction: float = 0.5
    grad_keep: float = 0.5
    diverge_factor: float = 4.0
    diverge_recent: int = 3
    diverge_window: int = 20
    diverge_hold: int = 50
    diverge_start: int = 5
    diverge_start_factor: float = 4.0
    diverge_level_exit: float = 2.0
    decayed_fraction: float = 0.5
    lr_budget_fraction: float = 0.3
    lr_limited_efficiency: float = 0.5
    lr_limited_floor_multiple: float = 60.0

    def __post_init__(self):
        require_positive_int_fields(self, "block", "window", "stall_windows", "diverge_recent", "diverge_window",
                                    "diverge_hold", "diverge_start", "noise_window", "noise_min_samples", "noise_horizon")
        for name in ("window", "diverge_window", "noise_window", "noise_min_samples"):
            if getattr(self, name) % self.block:
                raise ValueError(f"{name} must be a multiple of block ({self.block}), got {getattr(self, name)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        for name in ("diverge_factor", "diverge_start_factor", "diverge_level_exit", "sigmas", "noise_floor_fraction",
                     "noise_floor_exit", "lr_limited_efficiency", "lr_limited_floor_multiple"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("collapse_fraction", "healthy_fraction", "grad_keep", "decayed_fraction", "lr_budget_fraction",
                     "lr_fall_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
        if self.resume_gain <= self.stall_gain:
            raise ValueError(f"resume_gain must be above stall_gain ({self.stall_gain}), got {self.resume_gain!r}")
        if self.noise_min_samples > self.noise_window:
            raise ValueError(f"noise_min_samples must be at most noise_window ({self.noise_window}), "
                             f"got {self.noise_min_samples!r}")
        if self.diverge_level_exit > self.diverge_start_factor:
            raise ValueError(f"diverge_level_exit must be at most diverge_start_factor ({self.diverge_start_factor}), "
                             f"got {self.diverge_level_exit!r}")
        if self.noise_floor_exit > self.noise_floor_fraction:
            raise ValueError(f"noise_floor_exit must be at most noise_floor_fraction ({self.noise_floor_fraction}), "
                             f"got {self.noise_floor_exit!r}")
        if self.collapse_fraction >= self.healthy_fraction:
            raise ValueError(
                f"collapse_fraction must be below healthy_fraction ({self.healthy_fraction}), "
                f"got {self.collapse_fraction!r}"
            )


M, LOSS, GRAD, JUMP, EXCESS, DESCENT, LR, STEP = range(8)
"""Columns of the per-sample table: displacement, loss, gradient part (NaN where unknown), the
series whose jumps signal divergence on the displacement side (the gradient part, else m), the
excess-loss estimate, the descent, the lr (NaN where unknown) and the sample's optimizer step."""


class Analyzer:
    """Streaming diagnosis: ``update`` with each chunk of a run, ``report`` any time.

    thresholds: `Thresholds` fields and `lrwatch.signature.SignatureParams` fields, by name.
    Amortized O(1) per sample; the state is bounded (a few windows of block summaries) apart from
    the diagnoses and drops found.
    """

    def __init__(self, **thresholds):
        rule_names, signature_names = {f.name for f in fields(Thresholds)}, {f.name for f in fields(SignatureParams)}
        unknown = sorted(set(thresholds) - rule_names - signature_names)
        if unknown:
            raise ValueError(f"unknown threshold {unknown[0]!r}; known: {sorted(rule_names | signature_names)}")
        self.t = Thresholds(**{k: v for k, v in thresholds.items() if k in rule_names})
        self.schedule = SignatureTracker(**{k: v for k, v in thresholds.items() if k in signature_names})
        t = self.t
        self.k = t.window // t.block  # blocks per window
        self.count = 0  # samples seen
        self.blocks = 0  # blocks completed
        self.last_step: int | None = None
        self.pending = np.empty((STEP + 1, 0))
        self.block_m, self.block_grad = Tail(self.k - 1), Tail(self.k - 1)
        self.block_loss = Tail(2 * self.k - 1)
        self.noise = NoiseFloorWindow(t.noise_window // t.block, t.block, t.lr_fall_fraction)
        self.trend = NoiseFloorWindow(self.k, t.block, None)  # the loss's fall against the descent, uncut
        self.decided_lr = np.nan  # least lr of the block whose end decided the windowed rules now in force
        self.windowed_loss = Tail(self.k * t.stall_windows)
        self.best_loss = np.nan  # lowest windowed loss among windows that ended stall_windows windows ago
        self.jump_refs = _JumpRefs(t)
        self.peak = np.nan  # largest windowed m so far
        self.loss_progress = np.nan  # progress at the last block end
        self.healthy = (np.nan, np.nan)  # (gain, windowed gradient part) at the last healthy block
        self.block_state = {LR_TOO_HIGH: False, DECAY_TOO_AGGRESSIVE: False, LR_LIMITED: False, LOSS_CLIMBED: False}
        self.block_evidence: dict[str, dict[str, float]] = {}  # evidence of each windowed rule at the last block end
        self.nonfinite = False  # a non-finite value has been seen: diverging for good
        self.lr_budget = _LrBudget(t)
        self.last_jump = -(10**18)  # sample index of the last divergence jump
        self.open: dict[str, Diagnosis] = {}
        self.closed: list[Diagnosis] = []

    def update(self, displacement=None, loss=None, lr=None, steps=None, grad_norm=None, descent=None,
               momentum=None) -> Analyzer:
        """Append one chunk: 1-D array-likes of one length (None where not measured).

        displacement, lr, grad_norm must be >= 0; NaN/Inf are data (they flag ``diverging``).
        descent: −⟨Δw, g⟩ per step (loss units, any sign). momentum: the optimizer's momentum
        coefficient β per step, in [0, 1) or NaN (unknown), or one number for every step; it is used
        only with descent.
        steps: strictly increasing integers after the last chunk's (default: continue by 1).
        Returns self, so ``Analyzer().update(...).report()`` works.
        """
        series = _validated(displacement, loss, lr, grad_norm, descent, momentum)
        n = len(next(iter(series.values())))
        step_values = as_steps(steps, n, self.last_step)
        if n == 0:
            return self
        self.schedule.update(series.get("displacement"), series.get("lr"), step_values)
        with np.errstate(all="ignore"):  # NaN, Inf and overflow are data here
            table = _sample_table(series, step_values)
            # the loss's start level first: the windowed rules compare the loss with it at block ends
            start = self.jump_refs.see_loss(table[LOSS], self.count + np.arange(n))
            states, evidence = self._block_rules(table, step_values)
            if "lr" in series:  # decay_too_aggressive: the windowed rule, a limiting decayed lr, or the lr budget
                spent, decayed, lr_evidence = self.lr_budget.update(series["lr"])
                windowed, windowed_evidence = states[DECAY_TOO_AGGRESSIVE], evidence[DECAY_TOO_AGGRESSIVE]
                limiting = states.pop(LR_LIMITED) & decayed
                limiting_evidence = evidence.pop(LR_LIMITED)
                states[DECAY_TOO_AGGRESSIVE] = windowed | spent | limiting
                evidence[DECAY_TOO_AGGRESSIVE] = lambda i: (
                    lr_evidence(i) if spent[i] else {**lr_evidence(i), **limiting_evidence(i)} if limiting[i]
                    else windowed_evidence(i))
            else:
                states.pop(LR_LIMITED), evidence.pop(LR_LIMITED)
            jumped, jump_evidence = self._divergence(table, series, step_values, start)
            settled_high, settled_evidence = states.pop(LOSS_CLIMBED), evidence.pop(LOSS_CLIMBED)
            states[DIVERGING] = jumped | settled_high
            evidence[DIVERGING] = lambda i: jump_evidence(i) if jumped[i] else settled_evidence(i)
            # a diverging run needs a lower lr: never advise restoring it meanwhile (its loss falling back from a
            # blow-up reads as an lr that limits progress)
            states[DECAY_TOO_AGGRESSIVE] = states[DECAY_TOO_AGGRESSIVE] & ~states[DIVERGING]
            self._track(states, evidence, step_values)
        self.count += n
        self.last_step = int(step_values[-1])
        return self

    def __setstate__(self, state: dict) -> None:
        """Unpickle (LRWatch keeps analyzers in checkpoints), filling in what an analyzer pickled by an
        earlier lrwatch lacks, so that a run resumed after an upgrade goes on instead of failing in training."""
        self.__dict__.update(state)
        self.block_state.setdefault(LOSS_CLIMBED, False)
        if self.pending.shape[0] == STEP:  # pickled before samples carried their step: take them as consecutive
            n, last = self.pending.shape[1], -1 if self.last_step is None else self.last_step
            self.pending = np.vstack([self.pending, np.arange(last - n + 1, last + 1, dtype=np.float64)])
            for window in (self.noise, self.trend):
                window.assume_consecutive_steps(last - n)
        if "block_evidence" not in state:
            # pickled before the evidence of the last block end was kept: a carried state that can switch a
            # diagnosis on between block ends (the lr-limited side, lr_too_high while an lr fall masks it)
            # waits for the next block end instead of starting one without its evidence
            self.block_evidence = {}
            for carried, shown in ((LR_LIMITED, DECAY_TOO_AGGRESSIVE), (LR_TOO_HIGH, LR_TOO_HIGH)):
                if shown not in self.open:  # an open diagnosis keeps its state: no split episode
                    self.block_state[carried] = False

    def report(self) -> Report:
        """Signature and diagnoses of everything seen so far (open diagnoses have end None)."""
        diagnoses = sorted(self.closed + list(self.open.values()), key=lambda d: (d.start, RULES.index(d.kind)))
        return Report(self.schedule.result(), diagnoses, self.count, json_float(self.loss_progress))

    # -- windowed rules, evaluated at block ends -------------------------------------------------
    def _block_rules(self, table: np.ndarray, steps: np.ndarray) -> tuple[dict, dict]:
        """Per-sample states of the windowed rules over this chunk, and their evidence at a sample."""
        t = self.t
        blocks, self.pending = split_blocks(self.pending, table, t.block)
        # a block's decision holds from its last sample until the next block's last sample: the new
        # block in force at each sample of the chunk (-1: the one before the chunk)
        which = np.maximum((self.count + np.arange(len(steps)) + 1) // t.block - 1 - self.blocks, -1)
        n_blocks = blocks.shape[1]
        self.blocks += n_blocks
        figures = self._block_figures(blocks) if n_blocks else {}
        states, evidence = {}, {}
        for kind in (DECAY_TOO_AGGRESSIVE, LR_TOO_HIGH, LR_LIMITED, LOSS_CLIMBED):
            by_block = np.empty(0, dtype=bool)
            if n_blocks:
                enter, stay = _conditions(kind, figures, t)
                by_block = _hysteresis(enter, stay, self.block_state[kind])
            states[kind] = np.concatenate([[self.block_state[kind]], by_block])[which + 1]
            # the block in force: a new one, or (which -1) the last one before this chunk, whose figures
            # are gone; a state combined with per-sample conditions can switch on under it
            evidence[kind] = lambda i, kind=kind, before=self.block_evidence.get(kind, {}): (
                _evidence(kind, figures, int(which[i]), t) if which[i] >= 0 else dict(before))
            if len(by_block):
                self.block_state[kind] = bool(by_block[-1])
                self.block_evidence[kind] = _evidence(kind, figures, n_blocks - 1, t)
        # an lr drop ends lr_too_high at once (the advice was taken), not at the next block end
        decided_lr = np.concatenate([[self.decided_lr], figures.get("noise_block_lr", [])])[which + 1]
        with np.errstate(invalid="ignore"):
            states[LR_TOO_HIGH] = states[LR_TOO_HIGH] & ~(decided_lr * t.lr_fall_fraction > table[LR])
        if n_blocks:
            self.decided_lr = float(figures["noise_block_lr"][-1])
        return states, evidence

    def _block_figures(self, blocks: np.ndarray) -> dict[str, np.ndarray]:
        """Windowed figures at each new block end (NaN where the history is too short)."""
        k = self.k
        medians = {c: block_medians(blocks[c]) for c in (M, LOSS, GRAD)}
        m_windowed = window_medians(self.block_m.extend(medians[M]), k)
        grad_windowed = window_medians(self.block_grad.extend(medians[GRAD]), k)
        summaries = block_summaries(blocks[EXCESS], blocks[DESCENT], blocks[LOSS], blocks[LR], blocks[STEP])
        noise, trend = self.noise.add(summaries), self.trend.add(summaries)
        loss_medians = self.block_loss.extend(medians[LOSS])
        gain, gain_se = _loss_gain(loss_medians, k)
        confident = gain >= self.t.sigmas * gain_se  # NaN: False
        loss_level = window_medians(loss_medians[k:], k)
        # best windowed loss among the windows that ended at least stall_windows windows ago
        old_level = self.windowed_loss.extend(loss_level)[: len(loss_level)]
        best = np.fmin.accumulate(np.concatenate([[self.best_loss], old_level]))[1:]
        self.best_loss = float(best[-1])
        with np.errstate(invalid="ignore", divide="ignore"):
            progress = (best - loss_level) / np.abs(best)
            peak = np.fmax.accumulate(np.concatenate([[self.peak], m_windowed]))[1:]
            healthy = m_windowed >= self.t.healthy_fraction * peak
        self.peak = float(peak[-1])
        self.loss_progress = float(progress[-1])
        # gain and gradient part at the last healthy block so far (carried in from earlier chunks)
        last = np.maximum.accumulate(np.where(healthy, np.arange(1, len(healthy) + 1), 0))
        # a healthy block's gain counts only when it is confidently positive
        healthy_gain = np.concatenate([[self.healthy[0]], np.where(confident, gain, -np.inf)])[last]
        healthy_grad = np.concatenate([[self.healthy[1]], grad_windowed])[last]
        self.healthy = (float(healthy_gain[-1]), float(healthy_grad[-1]))
        self.jump_refs.add(blocks)
        # the loss's start level where it was known at each block end (a block's last sample index)
        ends = (self.blocks - len(loss_level) + np.arange(1, len(loss_level) + 1)) * self.t.block - 1
        start = self.jump_refs.start_at(ends)
        return {
            "m": m_windowed, "loss_level": loss_level, "loss_start": start,
            "loss_over_start": _ratio_to(loss_level, start), "peak": peak, "gain": gain, "progress": progress,
            "grad": grad_windowed,
            "healthy_gain": healthy_gain, "healthy_grad": healthy_grad, **{f"noise_{k}": v for k, v in noise.items()},
            **{f"trend_{k}": v for k, v in trend.items()},
        }

    # -- divergence, decided at every sample ------------------------------------------------------
    def _divergence(self, table: np.ndarray, series: dict, steps: np.ndarray, start: np.ndarray):
        """Per-sample state of ``diverging``'s non-finite and jump sides over this chunk, and their
        evidence at a sample. ``start``: the loss's start level in force at each sample (NaN: unknown)."""
        t = self.t
        index = self.count + np.arange(len(steps))  # global sample index
        bad = np.zeros(len(steps), dtype=bool)
        for name in ("displacement", "loss", "grad_norm"):
            if name in series:
                bad |= ~np.isfinite(series[name])
        nonfinite = np.logical_or.accumulate(np.concatenate([[self.nonfinite], bad]))[1:]
        self.nonfinite = bool(nonfinite[-1])
        (least_loss, growth_loss), (_, growth_jump) = (self.jump_refs.growth(c, table[c], index) for c in (LOSS, JUMP))
        growth = {LOSS: growth_loss, JUMP: growth_jump}
        self.jump_refs.forget_chunk()
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            # a loss that jumps from a level far below where the run started is a too-high lr's spike,
            # not a blow-up: with a loss, a jump counts only while the last diverge_recent losses are
            # all above diverge_start_factor times its start level (unknown, or a start <= 0: no)
            above_start = _ratio_to(least_loss, start)
            climbed = above_start > t.diverge_start_factor if "loss" in series else True
            jump = ((growth[LOSS] > t.diverge_factor) | (growth[JUMP] > t.diverge_factor)) & climbed
        last_jump = np.maximum.accumulate(np.where(jump, index, self.last_jump))
        self.last_jump = int(last_jump[-1]) if len(last_jump) else self.last_jump
        state = nonfinite | (index - last_jump < t.diverge_hold)
        displacement_side = "grad_growth" if ("grad_norm" in series or "lr" in series) else "displacement_growth"

        def evidence(i: int) -> dict[str, float]:
            if bad[i] or (nonfinite[i] and not jump[i]):
                found = {"nonfinite": 1.0}
                for name in ("displacement", "loss", "grad_norm"):
                    if name in series and not np.isfinite(series[name][i]):
                        found[f"{name}_nonfinite"] = 1.0
                return found
            return {"loss_growth": float(growth[LOSS][i]), displacement_side: float(growth[JUMP][i]),
                    "loss_over_start": float(above_start[i]) if "loss" in series else math.nan,
                    "diverge_factor": t.diverge_factor, "recent_steps": float(t.diverge_recent)}

        return state, evidence

    # -- episodes --------------------------------------------------------------------------------
    def _track(self, states: dict[str, np.ndarray], evidence: dict, steps: np.ndarray) -> None:
        """Open and close diagnoses where the per-sample states switch."""
        previous_step = np.concatenate([[self.last_step if self.last_step is not None else -1], steps[:-1]])
        events = []
        for kind in RULES:
            state = states[kind]
            was = np.concatenate([[kind in self.open], state[:-1]])
            for i in np.flatnonzero(state != was).tolist():
                events.append((i, RULES.index(kind), kind, bool(state[i])))
        for i, _, kind, on in sorted(events):
            if on:
                found = {k: v for k, v in evidence[kind](i).items() if math.isfinite(v)}
                self.open[kind] = Diagnosis(kind, int(steps[i]), None, _message(kind, found, self.t), found)
            else:
                d = self.open.pop(kind)
                self.closed.append(Diagnosis(d.kind, d.start, int(previous_step[i]), d.message, d.evidence))


class _LrBudget:
    """Running peak and sum of the lr, for the budget side of ``decay_too_aggressive``.

    Sequential sums (``np.add.accumulate`` carried across chunks), so exact under any chunking;
    non-finite lr values are unknown: they count neither as samples nor towards the peak or sum.
    """

    def __init__(self, t: Thresholds):
        self.t = t
        self.peak = np.nan  # largest finite lr so far
        self.total = 0.0  # sum of the finite lr values so far
        self.samples = 0  # number of finite lr values so far

    def update(self, lr: np.ndarray):
        """Per-sample states over this chunk — (lr decayed and little of its budget used, lr decayed) — and
        the lr figures at a sample."""
        t = self.t
        finite = np.isfinite(lr)
        peak = np.fmax.accumulate(np.concatenate([[self.peak], np.where(finite, lr, np.nan)]))[1:]
        total = np.add.accumulate(np.concatenate([[self.total], np.where(finite, lr, 0.0)]))[1:]
        samples = self.samples + np.cumsum(finite)
        if len(lr):
            self.peak, self.total, self.samples = float(peak[-1]), float(total[-1]), int(samples[-1])
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            fraction = lr / peak
            mean_fraction = total / (samples * peak)
        decayed = finite & (peak > 0) & (fraction <= t.decayed_fraction)

        def evidence(i: int) -> dict[str, float]:
            return {"lr_fraction": float(fraction[i]), "mean_lr_fraction": float(mean_fraction[i]),
                    "lr_samples": float(samples[i])}

        return decayed & (mean_fraction <= t.lr_budget_fraction), decayed, evidence


class _JumpRefs:
    """References that divergence jumps are measured against.

    Running medians, one per block end, kept for the last few blocks so each sample can look up the
    median of the window that ended before its recent run (``diverge_recent`` samples) began; and the
    loss's *start level*, the median of its first ``diverge_start`` finite values, which stands in for
    the loss's running median until the first window exists (a run can blow up within its first
    ``diverge_window`` steps) and tells a blow-up from a spike of a loss that had fallen far below it.
    """

    def __init__(self, t: Thresholds):
        self.t = t
        self.k = t.diverge_window // t.block
        self.block_medians = {c: Tail(self.k - 1) for c in (LOSS, JUMP)}
        keep = 2 + -(-t.diverge_recent // t.block)
        self.refs = {c: Tail(keep) for c in (LOSS, JUMP)}
        self.recent = {c: Tail(t.diverge_recent - 1) for c in (LOSS, JUMP)}
        self.blocks = 0  # blocks added
        self.current = {c: self.refs[c].values for c in (LOSS, JUMP)}  # refs of the last chunk and a few before
        self.opening = np.empty(0)  # the loss's first finite values, up to diverge_start of them
        self.start = np.nan  # their median once there are diverge_start: the loss's start level
        self.start_index = math.inf  # global sample index from which the start level is known

    def add(self, blocks: np.ndarray) -> None:
        """Take completed blocks (columns, n_blocks, block); call once per chunk, before `growth`."""
        for c in (LOSS, JUMP):
            medians = window_medians(self.block_medians[c].extend(block_medians(blocks[c])), self.k)
            self.current[c] = self.refs[c].extend(medians)
        self.blocks += blocks.shape[1]

    def forget_chunk(self) -> None:
        """Drop the refs of the chunk just analysed beyond the few kept (bounded state)."""
        self.current = {c: self.refs[c].values for c in (LOSS, JUMP)}

    def see_loss(self, loss: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Take this chunk's losses (global sample indices ``index``) towards the start level; the
        start level in force at each of its samples (NaN before the last of its samples)."""
        need = self.t.diverge_start - len(self.opening)
        if need > 0:
            finite = np.flatnonzero(np.isfinite(loss))[:need]
            self.opening = np.concatenate([self.opening, loss[finite]])
            if len(finite) == need:
                self.start, self.start_index = float(np.median(self.opening)), int(index[finite[-1]])
        return self.start_at(index)

    def start_at(self, index: np.ndarray) -> np.ndarray:
        """The start level in force at each global sample index (NaN before it is known)."""
        return np.where(index >= self.start_index, self.start, np.nan)

    def growth(self, column: int, values: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Least of the last ``diverge_recent`` values at each sample, and its ratio to the running
        median of the window that ended before those values began (for the loss, to the start level
        while there is no such window yet; NaN where there is no reference). ``index``: global sample
        indices of ``values``."""
        r, block = self.t.diverge_recent, self.t.block
        recent = self.recent[column].extend(values)
        smallest = recent[r - 1 :].copy()
        for lag in range(1, r):
            smallest = np.minimum(smallest, recent[r - 1 - lag : len(recent) - lag])
        # sample i uses the ref of block (i - r + 1) // block - 1; per sample, refs repeat block-wise
        refs = self.current[column]  # refs of blocks self.blocks - len(refs) .. self.blocks - 1
        first = (self.blocks - len(refs) + 1) * block  # first (i - r + 1) served by refs[0]
        per_sample = np.repeat(refs, block)
        start = int(index[0]) - r + 1 - first
        if start < 0:
            per_sample = np.concatenate([np.full(-start, np.nan), per_sample])
            start = 0
        ref = per_sample[start : start + len(values)]
        if column == LOSS:  # before the first window: the start level, once known before the recent run
            began = index - r + 1
            early = (began > self.start_index) & (began < self.t.diverge_window)
            ref = np.where(early, self.start, ref)
        return smallest, _ratio_to(smallest, ref)


def _ratio_to(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """values / reference where the reference (a loss's start level, a running median) is known and > 0,
    else NaN: a reference at or below 0 has no scale to rise against."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return np.where(reference > 0, values / reference, np.nan)


def _validated(displacement, loss, lr, grad_norm, descent, momentum) -> dict[str, np.ndarray]:
    """The given series as float64 arrays of one length, by name; ValueError naming a bad one.
    A single number for momentum stands for every step."""
    given = [(n, v) for n, v in (("displacement", displacement), ("loss", loss), ("lr", lr),
                                 ("grad_norm", grad_norm), ("descent", descent)) if v is not None]
    if not given:
        raise ValueError("displacement is None, and so are loss, lr, grad_norm and descent: nothing to analyze")
    series: dict[str, np.ndarray] = {}
    length = None
    for name, values in given:
        series[name] = as_series(name, values, length, nonnegative=name not in ("loss", "descent"))
        length = len(series[name])
    if momentum is not None:
        if isinstance(momentum, (int, float, np.number)) and not isinstance(momentum, bool):
            momentum = np.full(length, float(momentum))
        series["momentum"] = as_series("momentum", momentum, length)
        outside = np.flatnonzero(~np.isnan(series["momentum"]) & ~((series["momentum"] >= 0) & (series["momentum"] < 1)))
        if len(outside):
            i = int(outside[0])
            raise ValueError(f"momentum must be in [0, 1) or NaN, got {series['momentum'][i]!r} at index {i}")
    return series


def _sample_table(series: dict[str, np.ndarray], steps: np.ndarray) -> np.ndarray:
    """Per-sample series M, LOSS, GRAD, JUMP, EXCESS, DESCENT, LR, STEP as rows (8, n) (NaN where not measured);
    ``steps``: shape (n,), the samples' optimizer steps."""
    missing = np.full(len(steps), np.nan)
    m = series.get("displacement", missing)
    if "grad_norm" in series:
        grad = series["grad_norm"]
    elif "lr" in series:
        lr = series["lr"]
        usable = (lr > 0) & (m > 0)  # m == 0: the update was lost below float resolution, not a zero gradient
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            grad = np.where(usable, m / np.where(usable, lr, 1.0), np.nan)
    else:
        grad = missing
    jump = grad if ("grad_norm" in series or "lr" in series) else m
    descent = series.get("descent", missing)
    excess = excess_loss(descent, series.get("momentum", missing))
    return np.stack([m, series.get("loss", missing), grad, jump, excess, descent, series.get("lr", missing),
                     steps.astype(np.float64)])


def _loss_gain(medians: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative improvement of the loss per window at each block end, and its standard error.

    The least-squares line through the last 2k block medians is compared at the centres of its two
    windows: (f_earlier - f_later) / |f_earlier|. ``medians`` starts 2k - 1 blocks before the first
    new block; NaN where unknown. Fixed-order sums, so exact under chunking.
    """
    offsets = np.arange(2 * k) - (2 * k - 1) / 2
    spread = (offsets**2).sum()
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = window_dot(medians, np.full(2 * k, 1 / (2 * k)))
        slope = window_dot(medians, offsets / spread)
        squares = window_dot(medians**2, np.ones(2 * k))
        residual = np.maximum(squares - 2 * k * mean**2 - slope**2 * spread, 0.0)
        earlier = np.abs(mean - slope * k / 2)
        slope_se = np.sqrt(residual / (2 * k - 2) / spread)
        return -slope * k / earlier, slope_se * k / earlier


def _conditions(kind: str, f: dict[str, np.ndarray], t: Thresholds) -> tuple[np.ndarray, np.ndarray]:
    """(enter, stay) conditions of a windowed rule at each new block end."""
    with np.errstate(invalid="ignore"):
        improving = f["healthy_gain"] >= t.improving_gain
        # an unknown progress (no loss) neither starts nor keeps a stall
        stalled, not_resumed = f["progress"] <= t.stall_gain, f["progress"] < t.resume_gain
        if kind == LOSS_CLIMBED:  # the loss has settled far above where training started
            return f["loss_over_start"] >= t.diverge_start_factor, f["loss_over_start"] >= t.diverge_level_exit
        if kind == LR_LIMITED:  # the loss falls significantly: about as fast as promised, or far above its noise floor
            falls = (f["trend_fall"] >= t.sigmas * f["trend_fall_se"]) & (f["trend_descent"] > 0)
            as_promised = f["trend_fall"] >= t.lr_limited_efficiency * f["trend_descent"]
            above_floor = f["trend_fall"] * t.noise_horizon >= t.lr_limited_floor_multiple * f["trend_excess_loss"]
            limited = falls & (as_promised | above_floor)
            return limited, limited
        if kind == LR_TOO_HIGH:  # the lr's noise floor holds much of a loss that no longer falls
            pays = (f["noise_samples"] >= t.noise_min_samples) & (
                f["noise_fall"] * t.noise_horizon <= DROP_GAIN * f["noise_excess_loss"])
            return (pays & (f["noise_excess_fraction"] >= t.noise_floor_fraction),
                    pays & (f["noise_excess_fraction"] >= t.noise_floor_exit))
        # hysteresis: a collapse lasts until m is healthy again, an intact gradient until below grad_keep**2
        collapsed = f["m"] <= t.collapse_fraction * f["peak"]
        still_low = f["m"] < t.healthy_fraction * f["peak"]
        intact = ~(f["grad"] < t.grad_keep * f["healthy_grad"])  # an unknown gradient part counts as intact
        still_intact = ~(f["grad"] < t.grad_keep**2 * f["healthy_grad"])
        return collapsed & improving & intact & stalled, still_low & improving & still_intact & not_resumed


def _hysteresis(enter: np.ndarray, stay: np.ndarray, was: bool) -> np.ndarray:
    """State per block: switched on where ``enter``, off where not ``stay``, else unchanged."""
    event = np.where(enter, 1, np.where(stay, -1, 0))
    index = np.where(event >= 0, np.arange(1, len(event) + 1), 0)
    last = np.maximum.accumulate(index)
    return np.concatenate([[1 if was else 0], event.clip(0)])[last] == 1


def _evidence(kind: str, f: dict[str, np.ndarray], block: int, t: Thresholds) -> dict[str, float]:
    """The figures behind a windowed rule at a block end."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if kind == LR_TOO_HIGH:
            return {name: float(f[f"noise_{name}"][block])
                    for name in ("excess_fraction", "excess_loss", "loss", "descent", "fall", "samples")}
        if kind == LOSS_CLIMBED:
            return {"loss_level": float(f["loss_level"][block]), "loss_start": float(f["loss_start"][block]),
                    "loss_level_over_start": float(f["loss_over_start"][block]), "window": float(t.window)}
        if kind == LR_LIMITED:
            return {"loss_fall": float(f["trend_fall"][block]), "fall_se": float(f["trend_fall_se"][block]),
                    "descent": float(f["trend_descent"][block]), "excess_loss": float(f["trend_excess_loss"][block]),
                    "window": float(t.window)}
        return {"displacement_fraction": float(f["m"][block] / f["peak"][block]),
                "grad_fraction": float(f["grad"][block] / f["healthy_grad"][block]),
                "gain_before": float(f["healthy_gain"][block]), "loss_progress": float(f["progress"][block]),
                "window": float(t.window)}


def _floor_multiple(e: dict[str, float], t: Thresholds) -> str:
    """The clause naming how many times the excess loss the fall over noise_horizon steps is ("" if unknown)."""
    if e.get("excess_loss", 0.0) > 0:
        return (f", and over {t.noise_horizon} steps {e['loss_fall'] * t.noise_horizon / e['excess_loss']:.0f}x the "
                f"excess loss the lr's noise holds")
    return ""


def _message(kind: str, e: dict[str, float], t: Thresholds) -> str:
    """One actionable sentence from a diagnosis's evidence."""
    if kind == LR_TOO_HIGH:
        excess, fraction, fall = (e.get(k, math.nan) for k in ("excess_loss", "excess_fraction", "fall"))
        share = (f"{fraction:.0%} of the loss" if fraction < 1 else
                 f"{fraction:.1f}x the loss itself (past the estimate's quadratic range: far too high)")
        trend = f"falls {abs(fall):.3g} a step" if fall >= 0 else f"rises {-fall:.3g} a step"
        return (
            f"The lr's gradient noise holds the loss an estimated {excess:.3g} above its floor, {share}, over the "
            f"last {e.get('samples', math.nan):.0f} measured steps; a 10x drop would gain about {DROP_GAIN * excess:.3g}, more "
            f"than {t.noise_horizon} steps at the current rate give (the loss {trend}): the lr is too high for this "
            f"stage; bring the next lr drop forward (step schedule: drop now; exponential or cosine: decay faster)."
        )
    if kind == DECAY_TOO_AGGRESSIVE and "loss_fall" in e:
        return (
            f"The lr is at {e['lr_fraction']:.1%} of its peak, yet over the last {e['window']:.0f} measured steps the loss "
            f"still fell {e['loss_fall']:.3g} a step, {e['loss_fall'] / e['descent']:.0%} of what the steps promise "
            f"to first order{_floor_multiple(e, t)}: progress is limited by the lr, not by noise; restore it or decay "
            f"more slowly (larger gamma or alpha, fewer or later drops)."
        )
    if kind == DECAY_TOO_AGGRESSIVE and "mean_lr_fraction" in e:
        return (
            f"The lr is at {e['lr_fraction']:.1%} of its peak and has averaged only {e['mean_lr_fraction']:.0%} of "
            f"it over the {e['lr_samples']:.0f} measured steps so far: the schedule decayed before training used its lr; "
            f"restore it or decay more slowly (larger gamma or alpha, fewer or later drops)."
        )
    if kind == DECAY_TOO_AGGRESSIVE:
        grad = f" while the gradient kept {e['grad_fraction']:.0%} of its size" if "grad_fraction" in e else ""
        return (
            f"Displacement collapsed to {e.get('displacement_fraction', math.nan):.1%} of its peak{grad}, and the "
            f"loss, improving {e.get('gain_before', math.nan):.1%} per {t.window} measured steps before, made no new low "
            f"since ({e.get('loss_progress', math.nan):+.1%}): the lr decayed too fast; restore it or decay more "
            f"slowly (larger gamma or alpha, fewer or later drops)."
        )
    if "nonfinite" in e:
        what = [n.replace("grad_norm", "gradient norm") for n in ("loss", "displacement", "grad_norm")
                if f"{n}_nonfinite" in e]
        named = ", ".join(what[:-1]) + " and " + what[-1] if len(what) > 1 else "".join(what) or "values"
        return (
            f"Non-finite {named}: training diverged; restart from the last good checkpoint with a lower lr "
            f"(or clip gradients)."
        )
    if "loss_level" in e:  # (the ratio overflows to inf, and leaves the evidence, for a start level near 0)
        return (
            f"Over the last {e.get('window', math.nan):.0f} measured steps the loss (median of block medians, "
            f"{e['loss_level']:.3g}) has stayed {e.get('loss_level_over_start', math.inf):.3g}x where training "
            f"started ({e.get('loss_start', math.nan):.3g}): training is diverging, slowly; lower the lr now "
            f"(or clip gradients)."
        )
    growth, series = max(((v, k) for k, v in e.items() if k.endswith("_growth")), default=(math.nan, "values"))
    label = series.removesuffix("_growth").replace("grad", "gradient")
    return (
        f"The {label} rose {growth:.1f}x above its recent level for {t.diverge_recent} measured steps: training is "
        f"diverging; lower the lr now (or clip gradients) before it turns NaN."
    )


def analyze(displacement=None, loss=None, lr=None, steps=None, grad_norm=None, descent=None, momentum=None,
            **thresholds) -> Report:
    """Diagnose one run from its per-step series (see the module docstring for the rules).

    displacement: m_t = ||w_t - w_{t-1}|| per step (>= 0). loss: training loss per step. lr: the lr
    of the step (>= 0). grad_norm: gradient norm per step (>= 0). descent: −⟨w_t − w_{t−1}, g_t⟩ per
    step (loss units, any sign; ``lrwatch/descent`` in the logs). momentum: the optimizer's momentum
    coefficient β per step (SGD's momentum, Adam's β₁), or one number. All 1-D array-likes of one
    length, any of them None; NaN/Inf are data. steps: strictly increasing integers (default 0..n-1).
    thresholds: `Thresholds` and `lrwatch.signature.SignatureParams` fields by name.
    ValueError names a bad argument; otherwise never raises, whatever the values or length.
    """
    return Analyzer(**thresholds).update(displacement, loss=loss, lr=lr, steps=steps, grad_norm=grad_norm,
                                         descent=descent, momentum=momentum).report()
