"""lrwatch series in TensorBoard: read them back from a log folder, lay them out, summarise diagnoses as text.

Reading (``read_runs``) turns every run under a log directory into ``RunSeries``: one ``Track`` per optimizer
holding the inputs of one ``lrwatch.analyze`` call on one step axis. The step axis is the optimizer step
(``trainer.global_step`` after the step, see ``lrwatch.tags``). Runs logged only with Lightning's
``LearningRateMonitor`` get an lr-only track; Lightning's own tags are shifted onto that axis. Event files are
decoded by ``lrwatch.event_files``; a truncated or corrupted file is reported in ``RunSeries.problems``.

Writing: the custom-scalars layout (``custom_scalars_layout``, ``write_layout``) and the markdown of the
``lrwatch/diagnoses`` text tag (``diagnoses_markdown``), used by the ``LRWatch`` callback and the report.

No Lightning or torch import: this module serves the offline report as well as the callback.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrwatch import tags
from lrwatch._checks import require_int
from lrwatch.diagnosis import Diagnosis, Report
from lrwatch.event_files import EventScalars, read_event_file
from lrwatch.signature import json_float

EVENT_FILE_MARKER = "tfevents"
"""A file belongs to a run when its name contains this, as TensorBoard decides (``events.out.tfevents.*``)."""

LOSS_FALLBACK_TAGS = ("train_loss", "loss", "train/loss", "train_loss_step")
"""Loss tags read, in this order of preference, when a run has no ``lrwatch/loss``."""

LR_MONITOR_PREFIX = "lr-"
"""Lightning's ``LearningRateMonitor`` names its tags ``lr-<Optimizer>[-<i>][/<group>]``, or ``<name>[/<group>]``
for a scheduler given a ``"name"`` in its config: those are read only when named (``lr_tag``)."""

LR_MONITOR_OTHER_SUFFIXES = ("-momentum", "-weight_decay")
"""``LearningRateMonitor`` tags that carry something other than the lr."""

LIGHTNING_STEP_OFFSET = 1
"""Added to the step of Lightning's own tags (``LearningRateMonitor``, ``self.log`` losses) to put them on the
lrwatch axis. Lightning logs them at ``_batches_that_stepped`` *before* the optimizer step they belong to: the lr
logged at step k is the lr of the update that ends at global step k + 1."""


# --------------------------------------------------------------------------------------------------------------
# Runs: per-tag series, tracks on a step axis
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One tag as logged: (n,) strictly increasing int64 steps and float64 values."""

    steps: np.ndarray
    values: np.ndarray


def _latest_per_step(steps: np.ndarray, values: np.ndarray) -> Series:
    """Keep an event only if every later event of its tag has a larger step (input in file order).

    A later write to the same step overrides the earlier one, and a restart from an earlier step (resuming from
    a checkpoint) discards the abandoned steps at or after it, so every series has strictly increasing steps.
    (TensorBoard itself purges such orphans only after a ``SessionLog.START`` event, which PyTorch's
    ``SummaryWriter`` never writes: its charts show both attempts.)
    """
    later_minimum = np.minimum.accumulate(steps[::-1])[::-1]
    keep = steps < np.append(later_minimum[1:], np.iinfo(np.int64).max)
    return Series(steps[keep], values[keep])


def _series_by_tag(files: list[EventScalars]) -> dict[str, Series]:
    """Per tag, the run's series across its files (files in name order, so in the order they were written);
    tags in the order they first appear, so an optimizer's param groups keep their logging order."""
    names: dict[str, int] = {}
    parts = []
    offset = 0
    for scalars in files:
        remap = np.array([names.setdefault(n, len(names)) for n in scalars.tag_names], dtype=np.int64)
        parts.append((scalars.order + offset, remap[scalars.tag], scalars.step, scalars.value))
        offset += int(scalars.order.max()) + 1 if scalars.order.size else 0
    order, tag, step, value = (np.concatenate(column) for column in zip(*parts)) if parts else [np.zeros(0)] * 4
    if not tag.size:
        return {}
    ranked = np.lexsort((order, tag))
    order, tag, step, value = order[ranked], tag[ranked], step[ranked], value[ranked]
    bounds = np.flatnonzero(np.diff(tag)) + 1
    starts = np.concatenate([[0], bounds])
    tag_names = list(names)
    series = {
        tag_names[t[0]]: _latest_per_step(s, v)
        for t, s, v in zip(np.split(tag, bounds), np.split(step, bounds), np.split(value, bounds))
    }
    first_seen = {tag_names[tag[i]]: order[i] for i in starts}
    return {name: series[name] for name in sorted(series, key=first_seen.__getitem__)}


@dataclass(frozen=True)
class Track:
    """One optimizer's series on one step axis: the inputs of one ``lrwatch.analyze`` call.

    optimizer: the optimizer's name, None when the run logged untagged series (a single optimizer).
    steps: (n,) int64 optimizer steps, strictly increasing; every array below has this length.
    displacement: ||w_t - w_{t-1}||, None for an lr-only track (``LearningRateMonitor`` without lrwatch).
    lr: per lr tag, the lr held from its latest logged step; the first entry is the one ``analyze`` gets.
    loss, grad_norm, descent, momentum: None when not logged (descent: −⟨Δw, g⟩; momentum: the β of the
        optimizer's first param group, see `lrwatch.noise_floor`).
    flags: per diagnosis kind, the logged ``lrwatch/diagnosis/<kind>`` value (1 active, 0 not), held likewise.
    sources: series name -> the tags it was read from.
    notes: how a series was fitted onto the axis, where it was not logged at every step.
    """

    optimizer: str | None
    steps: np.ndarray
    displacement: np.ndarray | None
    lr: dict[str, np.ndarray]
    loss: np.ndarray | None
    grad_norm: np.ndarray | None
    descent: np.ndarray | None
    momentum: np.ndarray | None
    flags: dict[str, np.ndarray]
    sources: dict[str, list[str]]
    notes: tuple[str, ...]

    @property
    def lr_only(self) -> bool:
        """True when there is no displacement: the schedule is read from the logged lr alone."""
        return self.displacement is None

    @property
    def analysis_lr(self) -> np.ndarray | None:
        """The lr given to ``analyze``: the first logged param group of this optimizer, or None."""
        return next(iter(self.lr.values()), None)


@dataclass(frozen=True)
class RunSeries:
    """Everything lrwatch read from one run (a directory of event files).

    name: the run directory relative to LOGDIR, in POSIX form ('.' for LOGDIR itself).
    tracks: one per optimizer; empty when the run has neither lrwatch nor learning-rate tags.
    actions: per ``lrwatch/action/<kind>`` tag, the sparse series of actions taken.
    scalars: every scalar tag of the run, as logged (restarts resolved, no step shift).
    problems: truncated or corrupted event files, each described in one line.
    n_records: records read, all kinds.
    """

    name: str
    tracks: tuple[Track, ...]
    actions: dict[str, Series]
    scalars: dict[str, Series]
    problems: tuple[str, ...]
    n_records: int


@dataclass(frozen=True)
class LoggedAction:
    """An EarlyStepDrop action as a run logged it: the first optimizer step it affected, its kind ("drop",
    "hold", "release", or the tag's last part for another kind) and the value logged (a drop: the lr after it)."""

    step: int
    kind: str
    value: float

    def describe(self) -> str:
        after = f" (lr {self.value:.3g})" if self.kind == "drop" else ""
        return f"{self.kind} at step {self.step}{after}"

    def to_dict(self) -> dict:
        """JSON-ready: a non-finite value becomes None (JSON has no NaN)."""
        return {"step": self.step, "kind": self.kind, "value": json_float(self.value)}


def logged_actions(run: RunSeries) -> list[LoggedAction]:
    """The run's ``lrwatch/action/<kind>`` events in step order. EarlyStepDrop logs a hold as 1 and its release
    as 0 on the same ``hold`` tag; they are told apart here."""
    found = []
    for tag, series in run.actions.items():
        name = tag[len(tags.ACTION) + 1:] or "unnamed"  # a bare "lrwatch/action/" tag
        for step, value in zip(series.steps.tolist(), series.values.tolist()):
            kind = "release" if name == "hold" and value == 0 else name
            found.append(LoggedAction(int(step), kind, float(value)))
    return sorted(found, key=lambda a: (a.step, a.kind))


def _held(series: Series, axis: np.ndarray, fill_before: bool = True) -> np.ndarray:
    """Values of a piecewise-constant series on ``axis``: the latest logged value at or before each step;
    before the first logged step its first value, or NaN without ``fill_before`` (a param group added
    mid-fit had no lr there)."""
    index = np.searchsorted(series.steps, axis, side="right") - 1
    held = series.values[np.maximum(index, 0)]
    return held if fill_before else np.where(index >= 0, held, np.nan)


def _fitted(name: str, series: Series, tag: str, axis: np.ndarray, notes: list[str]) -> np.ndarray:
    """A series on ``axis``: exact where logged, linear in the step between logged steps, held beyond its ends.

    Adds a note when any axis step was not logged.
    """
    logged = int(np.isin(axis, series.steps).sum())
    if logged < axis.size:
        notes.append(f"{name} from '{tag}' logged at {logged} of {axis.size} steps; interpolated in between")
    return np.interp(axis, series.steps, series.values)


def _shifted(series: Series, offset: int) -> Series:
    return Series(series.steps + offset, series.values)


def _split_optimizer(rest: str, optimizers: Sequence[str]) -> tuple[str, str | None]:
    """'kind/opt' -> ('kind', 'opt') when the last part names one of ``optimizers``, else (rest, None)."""
    head, _, last = rest.rpartition("/")
    return (head, last) if head and last in optimizers else (rest, None)


def _loss_source(scalars: dict[str, Series], optimizer: str | None) -> tuple[str, Series] | None:
    """(tag, series on the lrwatch axis) of the run's training loss, preferring lrwatch's own tag."""
    own = [tags.series_tag(tags.LOSS, optimizer), tags.LOSS] if optimizer else [tags.LOSS]
    for tag in own:
        if tag in scalars:
            return tag, scalars[tag]
    for tag in LOSS_FALLBACK_TAGS:
        if tag in scalars:
            return tag, _shifted(scalars[tag], LIGHTNING_STEP_OFFSET)
    return None


def _lrwatch_lr_tags(scalars: dict[str, Series]) -> dict[str, list[str]]:
    """lrwatch lr tags grouped by optimizer name: ``lrwatch/lr/<optimizer>[/<group>]``."""
    groups: dict[str, list[str]] = {}
    for tag in scalars:
        if tag.startswith(tags.LR + "/"):
            groups.setdefault(tag[len(tags.LR) + 1 :].split("/")[0], []).append(tag)
    return groups


def _lr_monitor_tags(scalars: dict[str, Series], lr_tag: str | None) -> dict[str, list[str]]:
    """``LearningRateMonitor`` lr tags grouped by optimizer (the part before any ``/<group>``): ``lr_tag`` and
    ``lr_tag/<group>`` as one optimizer where the run has them, else the default ``lr-<Optimizer>`` tags."""
    if lr_tag is not None:
        named = [t for t in scalars
                 if t == lr_tag or (t.startswith(lr_tag + "/") and not t.endswith(LR_MONITOR_OTHER_SUFFIXES))]
        if named:
            return {lr_tag: named}
    groups: dict[str, list[str]] = {}
    for tag in scalars:
        if tag.startswith(LR_MONITOR_PREFIX) and not tag.endswith(LR_MONITOR_OTHER_SUFFIXES):
            groups.setdefault(tag[len(LR_MONITOR_PREFIX) :].split("/")[0], []).append(tag)
    return groups


def _build_track(
    optimizer: str | None,
    axis_tag: str,
    lr_tags: list[str],
    lr_offset: int,
    scalars: dict[str, Series],
    optimizers: Sequence[str],
) -> Track:
    """A track on the steps of ``axis_tag`` (the displacement, or the first lr tag for an lr-only track)."""
    lr_series = {t: _shifted(scalars[t], lr_offset) for t in lr_tags}
    axis = lr_series[axis_tag].steps if axis_tag in lr_series else scalars[axis_tag].steps
    notes: list[str] = []
    sources: dict[str, list[str]] = {"lr": list(lr_tags)}
    displacement = None
    if axis_tag.startswith(tags.DISPLACEMENT):
        displacement = scalars[axis_tag].values
        sources["displacement"] = [axis_tag]
    measured: dict[str, np.ndarray | None] = {}
    for name, base in (("grad_norm", tags.GRAD_NORM), ("descent", tags.DESCENT), ("momentum", tags.MOMENTUM)):
        tag = tags.series_tag(base, optimizer)
        measured[name] = _fitted(name, scalars[tag], tag, axis, notes) if tag in scalars else None
        if tag in scalars:
            sources[name] = [tag]
    if displacement is not None and measured["descent"] is None:
        notes.append("no lrwatch/descent logged (logs from before it was measured): lr_too_high is not decided")
    loss = None
    found_loss = _loss_source(scalars, optimizer)
    if found_loss is not None:
        loss = _fitted("loss", found_loss[1], found_loss[0], axis, notes)
        sources["loss"] = [found_loss[0]]
    flags: dict[str, np.ndarray] = {}
    for tag in scalars:
        if tag.startswith(tags.DIAGNOSIS + "/"):
            kind, owner = _split_optimizer(tag[len(tags.DIAGNOSIS) + 1 :], optimizers)
            if owner is None or owner == optimizer:
                flags[kind] = _held(scalars[tag], axis)
                sources.setdefault("diagnosis", []).append(tag)
    return Track(
        optimizer=optimizer,
        steps=axis,
        displacement=displacement,
        # the first group's lr is the analysis lr (held back to the first step); a later group's may start later
        lr={t: _held(s, axis, fill_before=i == 0) for i, (t, s) in enumerate(lr_series.items())},
        loss=loss,
        **measured,
        flags=flags,
        sources=sources,
        notes=tuple(notes),
    )


def _tracks(scalars: dict[str, Series], lr_tag: str | None = None) -> tuple[Track, ...]:
    """One track per optimizer: lrwatch displacement first, else lrwatch lr, else ``LearningRateMonitor`` lr
    (its default tags, or ``lr_tag``)."""
    displacement_tags = [t for t in scalars if t == tags.DISPLACEMENT or t.startswith(tags.DISPLACEMENT + "/")]
    lrwatch_lr = _lrwatch_lr_tags(scalars)
    if displacement_tags:
        owners = {t: None if t == tags.DISPLACEMENT else t[len(tags.DISPLACEMENT) + 1 :] for t in displacement_tags}
        optimizers = [owner for owner in owners.values() if owner is not None]
        return tuple(
            _build_track(owner, tag, [t for name, group in lrwatch_lr.items() if owner in (None, name) for t in group],
                         0, scalars, optimizers)
            for tag, owner in owners.items()
        )
    lr_groups, offset = (lrwatch_lr, 0) if lrwatch_lr else (_lr_monitor_tags(scalars, lr_tag), LIGHTNING_STEP_OFFSET)
    optimizers = list(lr_groups)
    return tuple(
        _build_track(name if len(optimizers) > 1 else None, group[0], group, offset, scalars, optimizers)
        for name, group in lr_groups.items()
    )


def find_runs(logdir: str | os.PathLike) -> dict[str, list[Path]]:
    """Every run under ``logdir``: run name (directory relative to logdir, POSIX, '.' for logdir) -> event files
    in name order. Raises ValueError when logdir is missing, not a directory, or holds no event files."""
    root = Path(logdir)
    if not root.exists():
        raise ValueError(f"logdir {str(logdir)!r} does not exist")
    if not root.is_dir():
        raise ValueError(f"logdir {str(logdir)!r} is not a directory")
    runs: dict[str, list[Path]] = {}
    for directory, _, files in os.walk(root):
        events = sorted(f for f in files if EVENT_FILE_MARKER in f)
        if events:
            name = Path(directory).relative_to(root).as_posix()
            runs[name] = [Path(directory, f) for f in events]
    if not runs:
        raise ValueError(f"logdir {str(logdir)!r} holds no TensorBoard event files (events.out.tfevents.*)")
    return dict(sorted(runs.items()))


def check_lr_tag(lr_tag: str | None) -> str | None:
    """``lr_tag`` itself if it can name a tag (None: the default tags); ValueError otherwise."""
    if lr_tag is not None and (not isinstance(lr_tag, str) or not lr_tag or lr_tag.endswith("/")):
        raise ValueError(f"lr_tag must be a non-empty tag name not ending in '/', got {lr_tag!r}")
    return lr_tag


def read_run(name: str, files: Sequence[str | os.PathLike], lr_tag: str | None = None) -> RunSeries:
    """Read one run's event files (in the order given, oldest first) into a ``RunSeries``.

    lr_tag: for a run without lrwatch tags, the ``LearningRateMonitor`` tag of a scheduler given a ``"name"``:
    its lr is read from ``lr_tag`` and ``lr_tag/<group>`` where the run has them, from the default
    ``lr-<Optimizer>`` tags otherwise."""
    lr_tag = check_lr_tag(lr_tag)
    decoded, problems, n_records = [], [], 0
    for path in files:
        try:
            scalars, records, problem = read_event_file(path)
        except OSError as error:
            problems.append(f"{Path(path).name}: cannot read ({error.strerror or error})")
            continue
        decoded.append(scalars)
        n_records += records
        if problem:
            problems.append(f"{Path(path).name}: {problem}")
    scalars = _series_by_tag(decoded)
    actions = {t: s for t, s in scalars.items() if t.startswith(tags.ACTION + "/")}
    return RunSeries(name, _tracks(scalars, lr_tag), actions, scalars, tuple(problems), n_records)


def read_runs(
    logdir: str | os.PathLike,
    run: str | None = None,
    progress: Callable[[int, int, RunSeries], None] | None = None,
    lr_tag: str | None = None,
) -> dict[str, RunSeries]:
    """Every run under ``logdir`` (or only ``run``), by name, in name order.

    progress: called after each run is read with (runs done, runs in all, the run).
    lr_tag: as in ``read_run``.
    Raises ValueError for a missing or empty logdir, a ``run`` that is not there and a bad ``lr_tag``.
    """
    check_lr_tag(lr_tag)
    runs = find_runs(logdir)
    if run is not None:
        if run not in runs:
            raise ValueError(f"run {run!r} is not under logdir {str(logdir)!r}; runs: {', '.join(runs)}")
        runs = {run: runs[run]}
    result: dict[str, RunSeries] = {}
    for done, (name, files) in enumerate(runs.items(), start=1):
        result[name] = read_run(name, files, lr_tag)
        if progress is not None:
            progress(done, len(runs), result[name])
    return result


# --------------------------------------------------------------------------------------------------------------
# Presentation in TensorBoard: custom-scalars layout, text summary
# --------------------------------------------------------------------------------------------------------------

LAYOUT_CATEGORY = "lrwatch"


def _exact(tag: str) -> str:
    """A custom-scalars tag regex (matched from the start by TensorBoard) that matches ``tag`` only."""
    return re.escape(tag) + "$"


def custom_scalars_layout(lr_tags: Sequence[str], series_suffixes: Sequence[str] | None = None):
    """TensorBoard custom-scalars ``Layout`` proto: category "lrwatch" with, per optimizer, lr and displacement in
    one multiline chart, then grad norm, loss, diagnosis flags (``lrwatch/diagnosis/.*``) and actions.

    lr_tags: the lr tags logged (``lrwatch/lr/<optimizer>[/<group>]``); with several optimizers each chart of
      optimizer ``o`` gets the tags under ``lrwatch/lr/<o>``.
    series_suffixes: the optimizer names when the series tags carry a ``/<optimizer>`` suffix, else None.
    """
    from tensorboard.plugins.custom_scalar import layout_pb2

    if isinstance(lr_tags, str) or not all(isinstance(t, str) and t for t in lr_tags):
        raise ValueError(f"lr_tags must be a sequence of non-empty tag strings, got {lr_tags!r}")
    if series_suffixes is not None and (
        isinstance(series_suffixes, str)
        or not series_suffixes
        or not all(isinstance(s, str) and s and "/" not in s for s in series_suffixes)
    ):
        raise ValueError(f"series_suffixes must be None or optimizer names without '/', got {series_suffixes!r}")
    optimizers: list[str | None] = list(series_suffixes) if series_suffixes is not None else [None]

    def chart(title: str, regexes: list[str]):
        return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=regexes))

    def owned_lr(optimizer: str | None) -> list[str]:
        prefix = f"{tags.LR}/{optimizer}"
        return [t for t in lr_tags if optimizer is None or t == prefix or t.startswith(prefix + "/")]

    def titled(title: str, optimizer: str | None) -> str:
        return title if optimizer is None else f"{title} ({optimizer})"

    charts = [
        chart(
            titled("lr and displacement", o),
            [_exact(t) for t in owned_lr(o)] + [_exact(tags.series_tag(tags.DISPLACEMENT, o))],
        )
        for o in optimizers
    ]
    charts.append(chart("grad norm", [_exact(tags.series_tag(tags.GRAD_NORM, o)) for o in optimizers]))
    charts.append(chart("descent", [_exact(tags.series_tag(tags.DESCENT, o)) for o in optimizers]))
    charts.append(chart("loss", [re.escape(tags.LOSS) + "(/.*)?$"]))
    charts.append(chart("diagnoses", [re.escape(tags.DIAGNOSIS + "/") + ".*"]))
    charts.append(chart("actions", [re.escape(tags.ACTION + "/") + ".*"]))
    return layout_pb2.Layout(category=[layout_pb2.Category(title=LAYOUT_CATEGORY, chart=charts)])


def write_layout(summary_writer, layout) -> None:
    """Write ``layout`` (a custom-scalars ``Layout``) with a ``SummaryWriter`` (torch or tensorboardX), through its
    public ``add_custom_scalars``. TensorBoard shows the last layout written to a run."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    if not isinstance(layout, layout_pb2.Layout):
        raise ValueError(f"layout must be a tensorboard custom_scalar layout_pb2.Layout, got {type(layout).__name__}")
    if not callable(getattr(summary_writer, "add_custom_scalars", None)):
        raise ValueError(
            f"summary_writer must have add_custom_scalars (a SummaryWriter), got {type(summary_writer).__name__}"
        )
    summary_writer.add_custom_scalars(
        {
            category.title: {
                c.title: (
                    ["Margin", [c.margin.series[0].value, c.margin.series[0].lower, c.margin.series[0].upper]]
                    if c.HasField("margin")
                    else ["Multiline", list(c.multiline.tag)]
                )
                for c in category.chart
            }
            for category in layout.category
        }
    )


def _format_steps(diagnosis: Diagnosis) -> str:
    """'start–end', or 'start– (still active)' when the diagnosis holds at the last step."""
    end = "(still active)" if diagnosis.end is None else str(diagnosis.end)
    return f"{diagnosis.start}–{end}"


def _format_schedule(report: Report, latest: int | None) -> str:
    """One line: schedule kind, where it was read from, and each drop as step (×factor) — only the
    ``latest`` last drops, after their count, when there are more."""
    schedule = report.schedule
    line = f"{schedule.kind} (read from {schedule.source})"
    if schedule.rate is not None:
        line += f", ×{schedule.rate:.6g} per step"
    drops = list(zip(schedule.drops, schedule.factors))
    if not drops:
        return line + "; no drops"
    shown = drops if latest is None or len(drops) <= latest else drops[-latest:]
    head = "drops at " if len(shown) == len(drops) else f"{len(drops)} drops, the last {len(shown)} at "
    return line + "; " + head + ", ".join(f"step {s} (×{f:.3g})" for s, f in shown)


def diagnoses_markdown(report: Report, latest: int | None = None) -> str:
    """Markdown for the ``lrwatch/diagnoses`` text tag: the schedule line, then a table of diagnoses
    (kind, steps, message) or a line saying there are none.

    latest: show only ``latest`` diagnoses — every one still active, then the most recent others — and the
    ``latest`` last drops, after a line counting every episode of each kind, so that the text LRWatch
    rewrites whenever the diagnoses change stays the same size however long the run (None: all; the
    offline report)."""
    if not isinstance(report, Report):
        raise ValueError(f"report must be an lrwatch Report, got {type(report).__name__}")
    if latest is not None:
        require_int("latest", latest)
    lines = [f"**Schedule:** {_format_schedule(report, latest)}", ""]
    if not report.diagnoses:
        lines.append(f"No diagnoses over {report.n_steps} steps.")
        return "\n".join(lines)
    shown = report.diagnoses
    if latest is not None and len(shown) > latest:
        listed = ", ".join(f"{kind} {count}" for kind, count in Counter(d.kind for d in shown).items())
        lines += [f"**Episodes:** {listed}; those still active and the latest, {latest} in all:", ""]
        active = [d for d in shown if d.end is None]
        ended = sorted((d for d in shown if d.end is not None), key=lambda d: d.end)
        shown = sorted(active + ended[len(ended) - max(latest - len(active), 0):], key=lambda d: d.start)
    lines += ["| diagnosis | steps | message |", "|---|---|---|"]
    for d in shown:
        message = d.message.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {d.kind} | {_format_steps(d)} | {message} |")
    return "\n".join(lines)
