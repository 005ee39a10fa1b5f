"""The report figure (matplotlib, the optional ``lrwatch[plot]`` extra; imported only when a plot is asked for).

One row per analysed run: on the left lr and displacement on a log y-axis with the schedule's drops as dashed
vertical lines, EarlyStepDrop's actions (when the run logged any) as dotted ones and each diagnosis shaded over
its steps; on the right the training loss with the same marks (on a log y-axis too when it spans more than
``LOG_LOSS_SPAN``, as a diverging run's does).
Built on ``matplotlib.figure.Figure`` directly, so no pyplot state and no GUI backend are involved.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from lrwatch.diagnosis import Report
from lrwatch.tensorboard import LoggedAction, Track

FIGURE_WIDTH_INCHES = 12.0
ROW_HEIGHT_INCHES = 3.0
DPI = 100
SPAN_ALPHA = 0.2
"""Opacity of the diagnosis shading: light enough to read the lines through it."""
DROP_LINE = {"color": "black", "linestyle": "--", "linewidth": 0.8}
ACTION_LINES = {"drop": {"color": "tab:blue", "linestyle": ":", "linewidth": 1.5},
                "hold": {"color": "tab:orange", "linestyle": ":", "linewidth": 1.5},
                "release": {"color": "tab:gray", "linestyle": ":", "linewidth": 1.5}}
"""EarlyStepDrop's actions; another kind is drawn as a release is."""
LOG_LOSS_SPAN = 1e3
"""The loss panel goes to a log y-axis when the (positive, finite) loss spans more than this ratio, as a
diverging run's does: on a linear axis everything before the blow-up is a flat line at 0."""
DIAGNOSIS_COLORS = ("tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def _kind_colors(rows: Sequence[tuple]) -> dict[str, str]:
    """One colour per diagnosis kind, the same in every row."""
    kinds = sorted({d.kind for row in rows for d in row[2].diagnoses})
    return {kind: DIAGNOSIS_COLORS[i % len(DIAGNOSIS_COLORS)] for i, kind in enumerate(kinds)}


def _mark(ax, track: Track, report: Report, actions: Sequence[LoggedAction], colors: dict[str, str],
          with_labels: bool) -> None:
    """Drops and actions as vertical lines, diagnoses as shaded spans (inclusive steps, so each span is widened
    by half a step on both sides); legend labels only when ``with_labels``."""
    for i, step in enumerate(report.schedule.drops):
        ax.axvline(step, label="lr drop" if with_labels and i == 0 else None, **DROP_LINE)
    drawn: set[str] = set()
    for action in actions:
        label = f"EarlyStepDrop {action.kind}" if with_labels and action.kind not in drawn else None
        drawn.add(action.kind)
        ax.axvline(action.step, label=label, **ACTION_LINES.get(action.kind, ACTION_LINES["release"]))
    labelled: set[str] = set()
    last = int(track.steps[-1]) if track.steps.size else 0
    for d in report.diagnoses:
        end = last if d.end is None else d.end
        label = d.kind if with_labels and d.kind not in labelled else None
        labelled.add(d.kind)
        ax.axvspan(d.start - 0.5, end + 0.5, color=colors[d.kind], alpha=SPAN_ALPHA, label=label)


def plot_report(rows: Sequence[tuple], path: str | os.PathLike | None = None) -> Figure:
    """The report figure for ``rows`` of (label, track, report) or (label, track, report, actions), ``actions``
    a sequence of `LoggedAction`; saved to ``path`` (format from its extension) when given. Returns the Figure:
    axes[2 i] is row i's lr/displacement panel, axes[2 i + 1] its loss panel."""
    if not rows or not all(len(r) in (3, 4) and isinstance(r[1], Track) and isinstance(r[2], Report)
                           and all(isinstance(a, LoggedAction) for a in (r[3] if len(r) == 4 else ())) for r in rows):
        raise ValueError(f"rows must be a non-empty sequence of (label, Track, Report[, LoggedActions]), got {rows!r}")
    colors = _kind_colors(rows)
    figure = Figure(figsize=(FIGURE_WIDTH_INCHES, ROW_HEIGHT_INCHES * len(rows)), layout="constrained")
    axes = figure.subplots(len(rows), 2, squeeze=False, sharex="row")
    for (label, track, report, *more), (schedule_ax, loss_ax) in zip(rows, axes):
        actions = more[0] if more else ()
        for tag, lr in track.lr.items():
            schedule_ax.plot(track.steps, lr, label=f"lr ({tag})", drawstyle="steps-post")
        if track.displacement is not None:
            schedule_ax.plot(track.steps, track.displacement, label="displacement", linewidth=0.8)
        schedule_ax.set_yscale("log")
        _mark(schedule_ax, track, report, actions, colors, with_labels=True)
        what = "lr-only" if track.lr_only else f"schedule read from {report.schedule.source}"
        schedule_ax.set_title(f"{label}: {report.schedule.kind} schedule ({what})", fontsize="medium")
        schedule_ax.legend(fontsize="small", loc="best")
        if track.loss is not None and np.isfinite(track.loss).any():
            loss_ax.plot(track.steps, track.loss, color="tab:green", linewidth=0.8)
            _mark(loss_ax, track, report, actions, colors, with_labels=False)
            shown = track.loss[np.isfinite(track.loss)]
            logarithmic = shown.min() > 0 and shown.max() > LOG_LOSS_SPAN * shown.min()
            if logarithmic:
                loss_ax.set_yscale("log")
            loss_ax.set_title("loss (log scale)" if logarithmic else "loss", fontsize="medium")
        else:
            loss_ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=loss_ax.transAxes)
            loss_ax.set_axis_off()
    figure.supxlabel("optimizer step")
    if path is not None:
        figure.savefig(path, dpi=DPI)
    return figure
