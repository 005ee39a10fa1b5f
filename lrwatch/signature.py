"""Schedule signature of a run: kind, drop steps, drop factors, plateaus (numpy only).

Read exactly from the learning-rate series when it is known, otherwise from the displacement
m_t = ||w_t - w_{t-1}|| alone, which carries the lr (m_t = eta_t * ||g_t|| under SGD) under minibatch
noise (coefficient of variation 0.2-0.5 is normal) and a slow drift from the shrinking gradient.

Everything here is streaming: `SignatureTracker.update` takes the run chunk by chunk and keeps a bounded
state, and the result never depends on where the chunks were cut. To make that exact (not just close)
every statistic is either an order statistic (medians, counts), an element-wise IEEE operation, a sum
taken in a fixed order, or an integer sum. The same window helpers serve `lrwatch.diagnosis`.

Displacement-only detection, in brief: the series is cut into blocks of ``block`` samples, each
summarised by its median. A drop is a level shift between two adjacent windows of ``drop_window``
samples: the later window's median is at most ``drop_ratio`` times the earlier one's and at least
``drop_rank`` of the (earlier, later) block pairs are ordered downwards; and the same holds between
the windows of ``confirm_scale`` times as many samples about the same split (so it is reported once
the wide window after it is complete, or at the end of the run on the samples there are; the wide
windows leave out blocks before the run). The short windows resolve
short plateaus; the wide ones reject the shifts that short windows find in pure noise, which would
otherwise pile up in proportion to the run's length. A drop is then placed to the sample by a CUSUM
of log m about the middle of the two levels, and its factor is the ratio of the trimmed-mean log
levels of the windows either side. Only an *abrupt* shift can be a schedule's drop: most of its fall
happens within a few samples of the split, and a ramp does not fit the samples about it better than
two levels (the gradient's own falls, such as a too-high lr settling into a minimum, take tens of
steps). A coarse profile of log m over the whole run (a bounded number of
points) decides the rest: drops are *sharp* (schedule steps) when the profile, fitted by a line on
each side of a drop (over at most ``jump_reach`` points, and not past the neighbouring drops), jumps
by at least ``drop_ratio`` at them; a steady exponential decay also yields level shifts, but the
profile falls smoothly through them. The kind is "step" when sharp drops explain at least
``step_share`` of the run's decline, else "constant"
(flat within ``flat_decline`` over the whole run, or over its later half when the fall is not a
steady exponential: a constant lr's displacement falls early, while the gradient settles, then stays),
"exponential" (a straight falling log profile) or "other"; a level shift upwards by ``rise_ratio``
(warmup, restart), confirmed in the same way, makes it "other".

Defaults: windows of 30 samples (6 blocks of 5) resolve plateaus down to about 40 steps, the shortest
in the labelled corpus of 300-600-step runs (benchmarks/diagnosis_corpus.py), confirmed on windows of
90. On their own, the 30-sample windows found about 170 level shifts per million samples of constant
lognormal noise at CV 0.4 (and about 830 at CV 0.7), enough to bury a long run's real drops; with the
90-sample confirmation there were none in a million samples at CV 0.4, 0.7 or 1.0. The coarse profile
adapts to any length (its span doubles).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lrwatch._checks import require_positive_int_fields

KINDS = ("constant", "step", "exponential", "other")
"""The schedule kinds a `Signature` can report."""

LOG_QUANTUM = 2.0**20
"""Log levels are summed as integers in units of 1/LOG_QUANTUM (about 1e-6), so sums are exact and
do not depend on the order or grouping in which chunks arrive."""


# -- validation shared with lrwatch.diagnosis -------------------------------------------------------
def as_series(name: str, values, length: int | None = None, nonnegative: bool = False) -> np.ndarray:
    """``values`` as a 1-D float64 array; ValueError naming ``name`` if it is not one.

    length: required length (that of the other inputs), or None. nonnegative: reject values < 0
    (NaN is data, not an error).
    """
    try:
        if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor (no torch import here): its values
            values = values.detach().cpu()
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as error:
        raise ValueError(f"{name} must be a 1-D array of numbers, got {_echo(values)}") from error
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {array.shape}: {_echo(values)}")
    if length is not None and len(array) != length:
        raise ValueError(f"{name} has length {len(array)}, but the other inputs have length {length}")
    if nonnegative:
        negative = np.flatnonzero(array < 0)
        if len(negative):
            i = int(negative[0])
            raise ValueError(f"{name} must be >= 0, got {array[i]!r} at index {i}")
    return array


def as_steps(steps, length: int, after: int | None) -> np.ndarray:
    """Optimizer steps as int64, strictly increasing and after ``after`` (the last step seen, or None).

    None gives ``after + 1, after + 2, ...`` (0, 1, ... at the start). ValueError naming ``steps``.
    """
    first = 0 if after is None else after + 1
    if steps is None:
        return np.arange(first, first + length, dtype=np.int64)
    try:
        raw = np.asarray(steps)
    except (TypeError, ValueError) as error:
        raise ValueError(f"steps must be a 1-D array of integers, got {_echo(steps)}") from error
    if raw.ndim != 1:
        raise ValueError(f"steps must be 1-D, got an array of shape {raw.shape}: {_echo(steps)}")
    if len(raw) != length:
        raise ValueError(f"steps has length {len(raw)}, but the other inputs have length {length}")
    if raw.dtype.kind == "b" or raw.dtype.kind not in "iuf":
        raise ValueError(f"steps must be integers, got dtype {raw.dtype}: {_echo(steps)}")
    if raw.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(raw) | (raw != np.round(raw)))
        if len(bad):
            raise ValueError(f"steps must be integers, got {raw[bad[0]]!r} at index {int(bad[0])}")
    result = raw.astype(np.int64)
    rising = np.diff(result) > 0
    if not rising.all():
        i = int(np.flatnonzero(~rising)[0]) + 1
        raise ValueError(f"steps must be strictly increasing, got {result[i - 1]} then {result[i]} at index {i}")
    if length and after is not None and result[0] <= after:
        raise ValueError(f"steps must continue after the last step seen ({after}), got {result[0]}")
    return result


def json_float(value) -> float | None:
    """A plain float, or None where it is None or not finite (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _echo(values) -> str:
    """A short repr of a bad input for an error message."""
    text = repr(values)
    return text if len(text) <= 120 else text[:117] + "..."


# -- exact streaming window helpers shared with lrwatch.diagnosis ------------------------------------
class Tail:
    """The last ``keep`` values of a stream, so a window statistic over new values sees their past.

    Starts filled with ``fill`` (NaN by default: windows reaching before the first value are unknown).
    """

    def __init__(self, keep: int, fill: float = np.nan):
        self.values = np.full(keep, fill)

    def extend(self, new: np.ndarray) -> np.ndarray:
        """The kept past followed by ``new``; afterwards keeps the last ``keep`` values of that."""
        joined = np.concatenate([self.values, new])
        if len(self.values):
            self.values = joined[len(joined) - len(self.values):]
        return joined


def block_medians(blocks: np.ndarray) -> np.ndarray:
    """Median of each row of ``blocks`` (n_blocks, block), ignoring NaN; NaN where a row is all NaN.

    Exact: a selection (or the mean of two selected values), so chunking never changes it.
    """
    missing = np.isnan(blocks)
    if not missing.any():
        return row_medians(blocks)
    if missing.all():
        return np.full(len(blocks), np.nan)
    ordered = np.sort(blocks, axis=1)  # NaN sorts last
    count = blocks.shape[1] - missing.sum(axis=1)
    rows = np.arange(len(blocks))
    with np.errstate(invalid="ignore", over="ignore"):
        medians = (ordered[rows, np.maximum(count - 1, 0) // 2] + ordered[rows, count // 2]) / 2
    return np.where(count > 0, medians, np.nan)


def row_medians(rows: np.ndarray) -> np.ndarray:
    """Median of each row of ``rows`` (n, k); NaN where a row holds a NaN (unknown, so every
    comparison on it is False)."""
    k = rows.shape[1]
    ordered = np.sort(rows, axis=1)  # NaN sorts last, so a row holding one has NaN in its last place
    with np.errstate(invalid="ignore", over="ignore"):
        middle = (ordered[:, (k - 1) // 2] + ordered[:, k // 2]) / 2
    return np.where(np.isnan(ordered[:, -1]), np.nan, middle)


def window_medians(values: np.ndarray, width: int) -> np.ndarray:
    """Median of every run of ``width`` consecutive values (len(values) - width + 1 of them), NaN-propagating."""
    if len(values) < width:
        return np.empty(0)
    return row_medians(sliding_window_view(values, width))


def window_dot(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted sum of every run of len(weights) consecutive values, summed in a fixed order (exact
    under chunking); NaN where a run holds a NaN."""
    width = len(weights)
    count = len(values) - width + 1
    if count <= 0:
        return np.empty(0)
    total = weights[0] * values[:count]
    for offset in range(1, width):
        total += weights[offset] * values[offset : offset + count]
    return total


def split_blocks(pending: np.ndarray, new: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Complete blocks of the columns ``pending`` + ``new`` (each (n_columns, n_samples)), shaped
    (n_columns, n_blocks, block), and the samples left over (n_columns, < block)."""
    joined = np.concatenate([pending, new], axis=1) if pending.shape[1] else new
    whole = joined.shape[1] // block * block
    return joined[:, :whole].reshape(len(joined), -1, block), joined[:, whole:]


# -- the signature -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signature:
    """What the learning-rate schedule looks like, read from the lr or from the displacement.

    kind: "constant" | "step" | "exponential" | "other".
    drops: steps at which a drop took effect (the first step at the lower level).
    factors: new level / old level of each drop (gamma), same length as ``drops``.
    rate: per-step factor alpha for "exponential", else None.
    segments: plateaus (runs at one level) as (first_step, last_step), inclusive.
    source: "lr" | "displacement" | "none" (nothing to read).
    """

    kind: str
    drops: list[int]
    factors: list[float]
    rate: float | None
    segments: list[tuple[int, int]]
    source: str

    def to_dict(self) -> dict:
        """JSON-ready: plain ints and floats (None for a non-finite one), segments as [first, last] lists."""
        result = asdict(self)
        result["drops"] = [int(s) for s in self.drops]
        result["factors"] = [json_float(f) for f in self.factors]
        result["rate"] = json_float(self.rate)
        result["segments"] = [[int(a), int(b)] for a, b in self.segments]
        return result


@dataclass(frozen=True)
class SignatureParams:
    """Tolerances of the schedule detector. Windows count samples (one per recorded step).

    lr_rtol: two lrs (or two ratios of lrs) are equal when they differ by at most this fraction.
        ExponentialLR's ratios agree to 2e-16, and to 1.3e-7 once logged as float32 (TensorBoard).
    block: samples per block; the displacement is summarised by one median per block.
    drop_window: samples on each side of a displacement drop (multiple of ``block``); plateaus shorter
        than about this are not resolved.
    confirm_scale: a level shift found between windows of ``drop_window`` samples counts only if it also
        holds between windows of ``confirm_scale`` times as many samples about the same split (1: no
        confirmation). Short windows alone find about 170 shifts per million samples of pure noise at
        CV 0.4; confirmed at 3x, none were found in a million samples at CV 0.4 to 1.0.
    drop_ratio: largest new/old level that counts as a drop (0.7: a 30 % fall); also the least jump
        of the profile that makes a drop sharp.
    rise_ratio: least later/earlier level ratio that counts as an upward shift (warmup, restart); above
        1 / drop_ratio because a schedule's rises are large while a too-high lr makes m swing upwards
        by tens of percent for a window or two.
    drop_rank: least fraction of (earlier, later) block-median pairs that must be ordered downwards.
    step_share: least fraction of the run's decline that sharp drops must explain for kind "step".
    flat_decline: a drop-free run whose fitted level changes by no more than this factor (either way),
        over the whole run or, unless it falls as a steady exponential, over its later half, is "constant".
    exp_bend: an exponential's fitted log-slopes in the first and second half of the run may differ
        by at most this factor.
    profile_size: the coarse log-level profile keeps between this and twice this many points; a run
        with more than 2/3 of this many level shifts is not read as a step schedule.
    jump_reach: the profile's jump at a drop is measured between lines fitted to at most this many
        profile points on each side (an eighth to a quarter of the run at the default profile_size):
        a step schedule's plateaus are straight, while a curved decay (a cosine's tail) bends away
        from a line fitted to a whole segment and would fake a jump.
    abrupt_reach, abrupt_share: a drop counts only if it is abrupt: at least ``abrupt_share`` of its
        log fall happens between the ``abrupt_reach`` samples before it and the ``abrupt_reach``
        after it (allowing two standard errors of minibatch noise), and a straight line does not fit
        the log m of the ``drop_window / 2`` samples on each side better than two levels do (by more
        than four noise variances). A scheduler changes the lr from one step to the next, and with
        PyTorch's optimizers (lr outside the momentum buffer, Adam's moments) the displacement
        follows at once, while the gradient's own falls (a too-high lr settling into a minimum, the
        end of a catapult) take tens of steps. Optimizers that fold the lr into a momentum buffer
        spread a drop over ~1/(1-β) steps and need a larger reach. On the labelled corpus's tuning
        runs the true drops had 0.56-1.25 of their fall within 3 samples, the gradual falls read as
        drops 0.18-0.28.
    """

    lr_rtol: float = 1e-6
    block: int = 5
    drop_window: int = 30
    confirm_scale: int = 3
    drop_ratio: float = 0.7
    rise_ratio: float = 2.0
    drop_rank: float = 0.9
    step_share: float = 0.5
    flat_decline: float = 0.5
    exp_bend: float = 2.0
    profile_size: int = 64
    jump_reach: int = 16
    abrupt_reach: int = 3
    abrupt_share: float = 0.4

    def __post_init__(self):
        require_positive_int_fields(self, "block", "drop_window", "confirm_scale", "profile_size", "jump_reach",
                                    "abrupt_reach")
        if self.drop_window % self.block or self.drop_window < 2 * self.block:
            raise ValueError(
                f"drop_window must be a multiple of block and at least 2 blocks, got {self.drop_window} "
                f"with block {self.block}"
            )
        _check_fraction(self, "lr_rtol", "drop_ratio", "drop_rank", "step_share", "flat_decline", "abrupt_share")
        if isinstance(self.rise_ratio, bool) or not isinstance(self.rise_ratio, (int, float)) or not self.rise_ratio > 1:
            raise ValueError(f"rise_ratio must be a number > 1, got {self.rise_ratio!r}")
        if not (isinstance(self.exp_bend, (int, float)) and self.exp_bend >= 1):
            raise ValueError(f"exp_bend must be a number >= 1, got {self.exp_bend!r}")


def _check_fraction(params, *names: str) -> None:
    """ValueError naming the first of ``names`` that is not a number strictly between 0 and 1."""
    for name in names:
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")


FLAT, FALL, RISE, IRREGULAR = range(4)
"""Kinds of a ratio of consecutive lrs."""


class _LrShape:
    """Exact schedule shape of a known lr series, from consecutive ratios lr_t / lr_{t-1}.

    Each ratio is flat (|change| <= rtol * lr), a fall, a rise, or irregular (non-finite). Keeps
    counts, the first fall ratio (for "exponential"), falls that follow a flat step (drop candidates)
    and flat runs (plateaus); all bounded by the number of plateaus.
    """

    def __init__(self, rtol: float):
        self.rtol = rtol
        self.count = 0
        self.last_lr = np.nan
        self.last_step = 0
        self.last_kind = FLAT  # kind of the last ratio; the first ratio counts as following a flat one
        self.falls = self.rises = self.irregular = 0
        self.alpha: float | None = None
        self.alpha_steady = True
        self.consecutive_falls = False
        self.drops: list[list] = []  # [step, factor, followed_by_fall]
        self.segments: list[tuple[int, int]] = []
        self.run_start: int | None = None  # first step of the current flat run

    def update(self, lr: np.ndarray, steps: np.ndarray) -> None:
        """Take the next chunk of lrs at ``steps``."""
        if not len(lr):
            return
        previous = np.concatenate([[self.last_lr], lr[:-1]])
        before = np.concatenate([[self.last_step], steps[:-1]])
        skip = 1 if self.count == 0 else 0  # the first sample of the run has no ratio
        previous, before, current, at = previous[skip:], before[skip:], lr[skip:], steps[skip:]
        self.count += len(lr)
        if len(current):
            self._take_ratios(previous, current, before, at)
        self.last_lr, self.last_step = float(lr[-1]), int(steps[-1])

    def _take_ratios(self, previous: np.ndarray, current: np.ndarray, before: np.ndarray, at: np.ndarray) -> None:
        """Classify each ratio current/previous (the step from ``before`` to ``at``) and track drops and runs."""
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            finite = np.isfinite(current) & np.isfinite(previous)
            flat = finite & (np.abs(current - previous) <= self.rtol * np.abs(previous))
            fall = finite & ~flat & (current < previous)
            rise = finite & ~flat & (current > previous)
            ratio = current / previous
        kinds = (FALL * fall + RISE * rise + IRREGULAR * ~(flat | fall | rise)).astype(np.int8)
        self.falls += int(fall.sum())
        self.rises += int(rise.sum())
        self.irregular += int((kinds == IRREGULAR).sum())
        self._track_alpha(ratio[fall])
        prior = np.concatenate([[self.last_kind], kinds[:-1]])
        after_fall = fall & (prior == FALL)
        if after_fall.any():
            self.consecutive_falls = True
        if after_fall[0] and self.drops and self.drops[-1][0] == int(before[0]):
            self.drops[-1][2] = True  # the last drop of the previous chunk was followed by a fall
        followed = np.concatenate([after_fall[1:], [False]])
        for i in np.flatnonzero(fall & (prior == FLAT)).tolist():
            self.drops.append([int(at[i]), float(ratio[i]), bool(followed[i])])
        self._track_runs(flat, before, at)
        self.last_kind = int(kinds[-1])

    def _track_alpha(self, fall_ratios: np.ndarray) -> None:
        """Whether every fall so far has the same ratio (within rtol)."""
        if not len(fall_ratios):
            return
        if self.alpha is None:
            self.alpha = float(fall_ratios[0])
        if (np.abs(fall_ratios - self.alpha) > self.rtol * self.alpha).any():
            self.alpha_steady = False

    def _track_runs(self, flat: np.ndarray, before: np.ndarray, at: np.ndarray) -> None:
        """Close and open runs of flat ratios; a run over ratios i..j spans steps before[i]..at[j]."""
        was_open = self.run_start is not None
        edges = np.diff(np.concatenate([[was_open], flat, [False]]).astype(np.int8))
        firsts = ([self.run_start] if was_open else []) + before[np.flatnonzero(edges == 1)].tolist()
        lasts = (np.flatnonzero(edges == -1) - 1).tolist()  # index of a run's last flat ratio; -1: the previous chunk's
        self.run_start = None
        for first, j in zip(firsts, lasts):
            if j == len(flat) - 1:
                self.run_start = int(first)  # still open
            else:
                self.segments.append((int(first), int(at[j]) if j >= 0 else int(before[0])))

    def result(self) -> Signature:
        """The exact signature of the lr series so far."""
        segments = self.segments + ([(self.run_start, self.last_step)] if self.run_start is not None else [])
        changed = self.falls + self.rises + self.irregular
        if self.count == 0:
            return Signature("constant", [], [], None, [], "none")
        if changed == 0:
            return Signature("constant", [], [], None, segments or [(self.last_step, self.last_step)], "lr")
        if self.count <= 2:
            return Signature("other", [], [], None, [], "lr")
        if self.falls == self.count - 1 and self.alpha_steady:
            return Signature("exponential", [], [], self.alpha, [], "lr")
        isolated = [d for d in self.drops if not d[2]]
        kind = "step" if not (self.rises or self.irregular or self.consecutive_falls) else "other"
        return Signature(kind, [d[0] for d in isolated], [d[1] for d in isolated], None, segments, "lr")


class _LogProfile:
    """Coarse profile of log levels over the whole run: (mean position, mean log level) per group of
    ``span`` values, the span doubling whenever the profile reaches 2 * size points. Sums are integers
    (positions in steps, levels in units of 1/LOG_QUANTUM), so the profile is exact under any chunking.
    """

    def __init__(self, size: int):
        self.size = size
        self.span = 1
        self.points: list[tuple[int, int]] = []  # (sum of positions, sum of quantized logs), span values each
        self.partial = (0, 0, 0)  # sums and count of the group being filled

    def add(self, positions: np.ndarray, levels: np.ndarray) -> None:
        """Append positions (int64 steps) and their positive, finite levels."""
        quantized = np.rint(np.log(levels) * LOG_QUANTUM).astype(np.int64)
        i = 0
        while i < len(positions):
            sum_x, sum_y, count = self.partial
            take = min(self.span - count, len(positions) - i)
            if count or take < self.span:  # finish (or extend) the partial group
                self.partial = (sum_x + int(positions[i : i + take].sum()),
                                sum_y + int(quantized[i : i + take].sum()), count + take)
                i += take
                if self.partial[2] == self.span:
                    self._append([self.partial[:2]])
                    self.partial = (0, 0, 0)
                continue
            groups = min((len(positions) - i) // self.span, 2 * self.size - len(self.points))
            end = i + groups * self.span
            xs = positions[i:end].reshape(groups, self.span).sum(axis=1).tolist()
            ys = quantized[i:end].reshape(groups, self.span).sum(axis=1).tolist()
            self._append(list(zip(xs, ys)))
            i = end

    def _append(self, points: list) -> None:
        """Add complete groups; at 2 * size points, merge neighbours pairwise and double the span."""
        self.points.extend((int(x), int(y)) for x, y in points)
        if len(self.points) >= 2 * self.size:
            pairs = self.points
            self.points = [(pairs[j][0] + pairs[j + 1][0], pairs[j][1] + pairs[j + 1][1])
                           for j in range(0, len(pairs) - 1, 2)]
            self.span *= 2

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions, mean log levels and weights (values per point) of the profile, partial group included."""
        rows = [(x, y, self.span) for x, y in self.points]
        if self.partial[2]:
            rows.append(self.partial)
        if not rows:
            return np.empty(0), np.empty(0), np.empty(0)
        table = np.array(rows, dtype=np.float64)
        return table[:, 0] / table[:, 2], table[:, 1] / table[:, 2] / LOG_QUANTUM, table[:, 2]


class _DisplacementShape:
    """Schedule shape read from the displacement alone (see the module docstring)."""

    def __init__(self, params: SignatureParams):
        self.p = params
        self.k = params.drop_window // params.block  # blocks per window
        self.wide = self.k * params.confirm_scale  # blocks per confirmation window
        self.count = 0  # samples seen
        self.blocks = 0  # blocks completed
        self.pending = np.empty((2, 0))  # m and step of the samples of the unfinished block
        self.medians = Tail(2 * self.wide - 1)
        self.raw = np.empty((2, 0))  # m and step of the last `keep` samples; raw[:, j] is sample raw_start + j
        self.raw_start = 0
        # a drop is found up to 2 confirmation windows after its earliest sample and measured on up to
        # 2 + 3 windows either side of its rough place, at least 5 windows after it
        self.keep = 5 * params.drop_window + max(5 * params.drop_window, 2 * self.wide * params.block) + params.block
        self.next_block = 0  # first block allowed to report a new drop
        self.waiting: list[int] = []  # rough sample index of drops still collecting samples after them
        self.found: list[_Drop] = []  # measured drops
        self.shifts = 0  # downward level shifts seen
        self.resolvable = 2 * params.profile_size // 3  # more shifts than this cannot all be sharp drops
        self.rose = False  # whether a level shift upwards was seen (warmup, restart, growth)
        self.profile = _LogProfile(params.profile_size)
        self.first_step: int | None = None
        self.last_step = 0

    def update(self, m: np.ndarray, steps: np.ndarray) -> None:
        """Take the next chunk of displacements (NaN where missing) at ``steps``."""
        if not len(m):
            return
        if self.first_step is None:
            self.first_step = int(steps[0])
        self.last_step = int(steps[-1])
        rows = np.stack([m, steps.astype(np.float64)])
        self.raw = np.concatenate([self.raw, rows], axis=1)
        self.count += len(m)
        blocks, self.pending = split_blocks(self.pending, rows, self.p.block)
        if blocks.shape[1]:
            medians = block_medians(blocks[0])
            self._profile(medians, blocks[1])
            self._detect(self.medians.extend(medians), self.blocks)
            self.blocks += blocks.shape[1]
        while self.waiting and self.waiting[0] + 5 * self.p.drop_window <= self.count:
            self.found.append(self._measure(0))
            self.waiting.pop(0)
        drop = max(0, self.raw.shape[1] - self.keep)
        self.raw, self.raw_start = self.raw[:, drop:], self.raw_start + drop

    def _profile(self, medians: np.ndarray, block_steps: np.ndarray) -> None:
        """Add the usable block medians to the profile, skipping the first window (momentum build-up)."""
        centres = ((block_steps[:, 0] + block_steps[:, -1]) // 2).astype(np.int64)
        starts = self.blocks + np.arange(len(medians))
        usable = (starts * self.p.block >= self.p.drop_window) & np.isfinite(medians) & (medians > 0)
        self.profile.add(centres[usable], medians[usable])

    def _detect(self, medians: np.ndarray, first_block: int) -> None:
        """Find level shifts confirmed at each new block; ``medians`` starts 2 * wide - 1 blocks before
        ``first_block``.

        Block j completes the confirmation windows (``wide`` blocks each side) of the split before block
        j - wide + 1; the short windows (k blocks each side) of that split end at block b = j - wide + k.
        A shift is a short-window hit that the confirmation windows agree with.
        """
        k, wide = self.k, self.wide
        windows = sliding_window_view(medians, 2 * wide)  # row r: the confirmation windows completed at block first_block + r
        earlier, later = windows[:, wide - k : wide], windows[:, wide : wide + k]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = row_medians(later) / row_medians(earlier)
        least = self.p.drop_rank * k * k  # ordered (earlier, later) pairs needed
        ups = np.flatnonzero(ratio >= self.p.rise_ratio)
        upwards = np.count_nonzero(later[ups, None, :] > earlier[ups, :, None], axis=(1, 2))
        ups = ups[upwards >= least]
        self.rose |= bool(_lasting(windows[ups], self.p.rise_ratio, rising=True, rank=self.p.drop_rank).any())
        downs = np.flatnonzero(ratio <= self.p.drop_ratio)
        downwards = np.count_nonzero(later[downs, None, :] < earlier[downs, :, None], axis=(1, 2))
        downs = downs[downwards >= least]
        hits = downs[_lasting(windows[downs], self.p.drop_ratio, rising=False, rank=self.p.drop_rank)]
        first_b = first_block - wide + k  # b of row 0
        position = 0
        while True:
            position += int(np.searchsorted(hits[position:], self.next_block - first_b))
            if position >= len(hits):
                return
            b = first_b + int(hits[position])
            self.shifts += 1
            if self.shifts <= self.resolvable:
                c = self._place(b, float(ratio[hits[position]]))
                self.waiting.append(c)
            else:  # too many shifts to be schedule steps: count them, skip placing and measuring
                c = (b - k + 1) * self.p.block
            self.next_block = -(-c // self.p.block) + 2 * k - 1

    def _with_pending(self) -> _DisplacementShape:
        """A copy that has also judged the splits whose confirmation windows are still filling, on the
        blocks there are (so a drop in the last few windows of a run is reported); ``self`` is unchanged."""
        settled = copy.copy(self)
        settled.waiting = list(self.waiting)
        if self.wide > self.k:
            unseen = np.full(self.wide - self.k, np.nan)  # the blocks that would complete those windows
            settled._detect(np.concatenate([self.medians.values, unseen]), self.blocks)
        return settled

    def _place(self, b: int, ratio: float) -> int:
        """Rough sample index of the drop found at block ``b``: the split of the two windows' samples that
        misclassifies the fewest against the geometric middle of the two levels."""
        start = (b - 2 * self.k + 1) * self.p.block
        x = self.raw[0, start - self.raw_start : (b + 1) * self.p.block - self.raw_start]
        middle = math.sqrt(ratio) * _median(x[: len(x) // 2])
        high, low = x >= middle, x < middle
        # splitting before sample j misclassifies the low samples before j and the high ones from j on
        cost = np.cumsum(low)[:-1] + np.cumsum(high[::-1])[::-1][1:]
        return start + int(np.argmin(cost)) + 1

    def _measure(self, i: int) -> _Drop:
        """Measure waiting drop ``i`` on the samples there are.

        Placed within 2 * ``drop_window`` of its rough place at the split that best separates the log
        displacements above and below the middle of the two levels (a CUSUM on log m). Its log
        ratio is that of the trimmed-mean log levels of up to 3 * ``drop_window`` samples on each
        side, stopping at the neighbouring drops; ``distance`` is between those windows' centres.
        """
        w, x, steps = self.p.drop_window, self.raw[0], self.raw[1]
        lowest = (self.found[-1].index if self.found else 0) - self.raw_start
        highest = (self.waiting[i + 1] - self.p.block if i + 1 < len(self.waiting) else self.count) - self.raw_start
        at = self.waiting[i] - self.raw_start
        lo, hi = max(at - 2 * w, lowest, 0), min(at + 2 * w, highest)
        y = _logs(x[lo:hi])
        before, after = _log_level(y[: at - lo]), _log_level(y[at - lo :])
        if after - before < 0:  # (False for NaN)
            push = np.clip(np.nan_to_num(y - (before + after) / 2), after - before, before - after)
            at = lo + 1 + int(np.argmax(np.cumsum(push)[:-1]))  # push > 0: looks like the earlier level
        return self._levels(at, max(lowest, 0), max(highest, at + 1))

    def _levels(self, at: int, lowest: int, highest: int) -> _Drop:
        """The drop split before raw sample ``at``, measured on the samples in [lowest, highest)."""
        w, x, steps, r = self.p.drop_window, self.raw[0], self.raw[1], self.p.abrupt_reach
        lo, hi = max(at - 3 * w, lowest), min(at + 3 * w, highest)
        y = _logs(x[lo:hi])
        log_ratio = _log_level(y[at - lo :]) - _log_level(y[: at - lo])
        distance = float(np.mean(steps[at:hi]) - np.mean(steps[lo:at]))
        local = _log_level(y[at - lo : at - lo + r]) - _log_level(y[max(at - lo - r, 0) : at - lo])
        steps_apart = np.diff(y)
        noise = 1.4826 * _median(np.abs(steps_apart - _median(steps_apart))) / math.sqrt(2)
        half = w // 2
        near = y[max(at - lo - half, 0) : at - lo + half]
        return _Drop(at + self.raw_start, int(steps[at]), int(steps[at - 1]), log_ratio, distance, local,
                     noise, _ramp_gain(near, min(at - lo, half)))

    def result(self) -> Signature:
        """The signature read so far (drops still collecting samples measured on those there are)."""
        if self.count == 0:
            return Signature("constant", [], [], None, [], "none")
        x, y, weight = self.profile.arrays()
        if len(x) < 4:
            return Signature("other", [], [], None, [], "displacement")
        settled = self._with_pending()
        found = settled.found + [settled._measure(i) for i in range(len(settled.waiting))]
        jumps, drift = _jumps(x, y, weight, [d.step for d in found], self.p.jump_reach)
        if settled.shifts > self.resolvable:
            jumps = [0.0] * len(found)
        log_drop = math.log(self.p.drop_ratio)
        log_factors = [d.log_ratio - drift * d.distance for d in found]
        sharp = [(d.step, d.previous, _exp(f)) for d, f, j in zip(found, log_factors, jumps)
                 if j <= log_drop and f <= log_drop
                 and d.abrupt(self.p.abrupt_share, f, self.p.abrupt_reach)]
        sharp_decline = -sum(j for j in jumps if j <= log_drop)
        slope, fitted = _line(x, y, weight)
        decline = fitted[0] - fitted[-1]
        drops, factors = [d[0] for d in sharp], [d[2] for d in sharp]
        if settled.rose:
            return Signature("other", drops, factors, None, [], "displacement")
        if sharp and sharp_decline >= self.p.step_share * decline:
            bounds = [self.first_step] + drops
            lasts = [d[1] for d in sharp] + [self.last_step]
            return Signature("step", drops, factors, None, list(zip(bounds, lasts)), "displacement")
        steady = decline > 0 and _steady(x, y, weight, self.p.exp_bend)
        flat = -math.log(self.p.flat_decline)
        if not sharp and (abs(decline) <= flat or (not steady and abs(_late_change(x, y, weight)) <= flat)):
            return Signature("constant", [], [], None, [(self.first_step, self.last_step)], "displacement")
        if steady:
            return Signature("exponential", [], [], math.exp(slope), [], "displacement")
        return Signature("other", drops, factors, None, [], "displacement")


@dataclass(frozen=True)
class _Drop:
    """A level shift found in the displacement: its sample index, its step and the step before, the
    log ratio of the levels after and before it, the distance (steps) between their windows, the
    log ratio of the levels of the ``abrupt_reach`` samples on either side (``local``), the noise of
    one log sample (``noise``, from the median absolute successive difference of log m, which one
    jump or a steady slope does not move) and how much better a straight line fits the log samples
    within ``drop_window / 2`` of the split than two levels do (``ramp_gain``, in squared log units)."""

    index: int
    step: int
    previous: int
    log_ratio: float
    distance: float
    local: float
    noise: float
    ramp_gain: float

    def abrupt(self, share: float, log_factor: float, reach: int) -> bool:
        """Whether at least ``share`` of a fall of ``log_factor`` (< 0) happens across the split (within
        ``reach`` samples either side), up to two standard errors, and a ramp does not fit the samples
        about it better than two levels by more than four noise variances. False for NaN figures."""
        across = self.local <= share * log_factor + 2 * self.noise * math.sqrt(2 / reach)
        return bool(across and self.ramp_gain <= 4 * self.noise**2)


def _ramp_gain(y: np.ndarray, split: int) -> float:
    """Sum of squared residuals of log values ``y`` about two levels (split before index ``split``)
    minus that about their least-squares line; NaN values left out; NaN when either side is empty."""
    usable = ~np.isnan(y)
    before, after = y[:split][usable[:split]], y[split:][usable[split:]]
    if not len(before) or not len(after):
        return math.nan
    levels = float(np.sum((before - before.mean()) ** 2) + np.sum((after - after.mean()) ** 2))
    x = np.flatnonzero(usable).astype(np.float64)
    _, fitted = _line(x, y[usable], np.ones(len(x)))
    return levels - float(np.sum((y[usable] - fitted) ** 2))


def _lasting(windows: np.ndarray, threshold: float, rising: bool, rank: float) -> np.ndarray:
    """Whether each row of ``windows`` (n, 2 * w) of block medians shifts between its halves: the later
    half's median is at least (rising) or at most (falling) ``threshold`` times the earlier half's, and
    at least a ``rank`` fraction of the (earlier, later) pairs is ordered that way. NaN blocks (before
    the run, not yet seen, or missing) are left out of both figures. Shape (n,) bool."""
    if not len(windows):
        return np.zeros(0, dtype=bool)
    w = windows.shape[1] // 2
    earlier, later = windows[:, :w], windows[:, w:]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = block_medians(later) / block_medians(earlier)
    pairs = np.count_nonzero(~np.isnan(earlier), axis=1) * np.count_nonzero(~np.isnan(later), axis=1)
    if rising:
        shifted = ratio >= threshold
        ordered = np.count_nonzero(later[:, None, :] > earlier[:, :, None], axis=(1, 2))
    else:
        shifted = ratio <= threshold
        ordered = np.count_nonzero(later[:, None, :] < earlier[:, :, None], axis=(1, 2))
    return shifted & (ordered >= rank * pairs)


def _exp(value: float) -> float:
    """exp(value): NaN for NaN, inf past the float range (no OverflowError)."""
    return float(np.exp(value))


def _logs(x: np.ndarray) -> np.ndarray:
    """Natural log of the positive finite values of x, NaN elsewhere."""
    usable = np.isfinite(x) & (x > 0)
    return np.log(np.where(usable, x, 1.0)) + np.where(usable, 0.0, np.nan)


def _log_level(y: np.ndarray, trim: float = 0.25) -> float:
    """Level of log values y: the mean of the middle half (a ``trim`` fraction cut off at each end),
    nearly as efficient as the mean under lognormal noise and as robust as the median; NaN ignored."""
    y = np.sort(y[~np.isnan(y)])
    cut = int(len(y) * trim)
    return float(np.mean(y[cut : len(y) - cut])) if len(y) else math.nan


def _median(x: np.ndarray) -> float:
    """Median of the non-NaN values of x; NaN when there are none."""
    x = x[~np.isnan(x)]
    return float(np.median(x)) if len(x) else math.nan


def _line(x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> tuple[float, np.ndarray]:
    """Weighted least-squares slope of y on x, and the fitted values."""
    centre = np.average(x, weights=weight)
    spread = np.average((x - centre) ** 2, weights=weight)
    mean = np.average(y, weights=weight)
    slope = float(np.average((x - centre) * (y - mean), weights=weight) / spread) if spread > 0 else 0.0
    return slope, mean + slope * (x - centre)


def _jumps(x: np.ndarray, y: np.ndarray, weight: np.ndarray, at: list[int], reach: int) -> tuple[list[float], float]:
    """Discontinuity of the profile's log level at each step of ``at``, and the common drift.

    The profile is cut into segments at ``at``; at each cut, the last ``reach`` points of the segment
    before it and the first ``reach`` of the segment after it each get a least-squares line (the
    common drift's slope when there are fewer than 3 points), and the cut's jump is the later line
    minus the earlier one, both taken at the cut: about log(gamma) at a schedule step, about
    0 where the level falls smoothly through the cut (exponential, cosine). A cut without profile
    points on both sides gets 0, and so do all cuts when there are more than a third as many as
    points. The common drift is the slope of the fit with one level per segment and one slope for
    all (the plain line's slope when there are no cuts).
    """
    if not at or len(at) > len(x) // 3:
        return [0.0] * len(at), _line(x, y, weight)[0]
    cuts = np.asarray(at, dtype=np.float64)
    segment = np.searchsorted(cuts, x, side="right")
    used = np.unique(segment).tolist()
    design = np.column_stack([segment == s for s in used] + [x - x.mean()]).astype(np.float64)
    root = np.sqrt(weight)
    common = float(np.linalg.lstsq(design * root[:, None], y * root, rcond=None)[0][-1])
    jumps = []
    for i, cut in enumerate(cuts):
        before, after = np.flatnonzero(segment == i)[-reach:], np.flatnonzero(segment == i + 1)[:reach]
        if len(before) and len(after):
            jumps.append(_level_at(cut, x[after], y[after], weight[after], common)
                         - _level_at(cut, x[before], y[before], weight[before], common))
        else:
            jumps.append(0.0)
    return jumps, common


def _level_at(position: float, x: np.ndarray, y: np.ndarray, weight: np.ndarray, common: float) -> float:
    """The least-squares line of y on x (slope ``common`` when there are fewer than 3 points) at ``position``."""
    slope = _line(x, y, weight)[0] if len(x) >= 3 else common
    return float(np.average(y, weights=weight) + slope * (position - np.average(x, weights=weight)))


def _late_change(x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> float:
    """Change of the fitted log level over the later half of the profile (its line's slope times the
    span of its positions): the part of the run where the gradient has settled, so a constant lr
    leaves it flat while any decaying schedule keeps pulling it down."""
    half = len(x) // 2
    slope, _ = _line(x[half:], y[half:], weight[half:])
    return slope * float(x[-1] - x[half])


def _steady(x: np.ndarray, y: np.ndarray, weight: np.ndarray, bend: float) -> bool:
    """Whether both halves of the profile fall, with log-slopes within a factor ``bend`` of each other."""
    half = len(x) // 2
    first, _ = _line(x[:half], y[:half], weight[:half])
    second, _ = _line(x[half:], y[half:], weight[half:])
    return first < 0 and second < 0 and max(first, second) * bend <= min(first, second)


class SignatureTracker:
    """Streaming schedule detector: ``update`` chunk by chunk, ``result`` any time.

    Reads the lr exactly when every sample came with an lr, else the displacement; the result does
    not depend on how the run was cut into chunks.
    """

    def __init__(self, **params):
        self.params = SignatureParams(**params)
        self.lr_shape = _LrShape(self.params.lr_rtol)
        self.m_shape = _DisplacementShape(self.params)
        self.lr_complete = True
        self.m_seen = False

    def update(self, displacement: np.ndarray | None, lr: np.ndarray | None, steps: np.ndarray) -> None:
        """Take validated chunks: float64 arrays (or None where not given) and int64 ``steps``."""
        if not len(steps):
            return
        with np.errstate(all="ignore"):  # NaN, Inf and overflow are data here
            self._update(displacement, lr, steps)

    def _update(self, displacement: np.ndarray | None, lr: np.ndarray | None, steps: np.ndarray) -> None:
        if lr is None:
            self.lr_complete = False
        elif self.lr_complete:
            self.lr_shape.update(lr, steps)
        if displacement is not None:
            self.m_seen = True
        self.m_shape.update(displacement if displacement is not None else np.full(len(steps), np.nan), steps)

    def result(self) -> Signature:
        """The signature of everything seen so far."""
        if self.lr_complete and self.lr_shape.count:
            return self.lr_shape.result()
        if self.m_seen:
            with np.errstate(all="ignore"):
                return self.m_shape.result()
        return Signature("constant", [], [], None, [], "none")


def signature(displacement=None, lr=None, steps=None, **params) -> Signature:
    """Schedule signature of one run: exact from ``lr`` when given, else from ``displacement``.

    displacement, lr: 1-D array-likes of one length (lr >= 0, displacement >= 0; NaN allowed).
    steps: strictly increasing integer steps (default 0..n-1). params: `SignatureParams` fields.
    Never raises on valid arrays of any length (0 and 1 included); ValueError names a bad argument.
    """
    given = [(n, v) for n, v in (("displacement", displacement), ("lr", lr)) if v is not None]
    length = len(as_series(*given[0])) if given else 0
    m = as_series("displacement", displacement, length, nonnegative=True) if displacement is not None else None
    rates = as_series("lr", lr, length, nonnegative=True) if lr is not None else None
    tracker = SignatureTracker(**params)
    tracker.update(m, rates, as_steps(steps, length, None))
    return tracker.result()
