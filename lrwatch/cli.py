"""``lrwatch report LOGDIR``: read every run's TensorBoard events, analyze each, print a table or JSON, plot.

Exit status: 0 when every run was read and analyzed; 1 when the report was printed but some input was damaged
or some run had no usable data (each said on stderr, one line each); 2 when there is nothing to report (bad
arguments, missing or empty LOGDIR, unknown ``--run``, no usable run, plot not written), said in one line on
stderr with nothing on stdout. Output on stdout is written once, after everything was computed, so ``--json``
is never partial.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from lrwatch.diagnosis import Report, analyze
from lrwatch.tensorboard import (RunSeries, Track, check_lr_tag, diagnoses_markdown, find_runs, logged_actions,
                                 read_run)

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_FAILED = 2

FEW_RUNS = 3
"""Progress lines appear on a terminal when there are more runs than this ..."""
MANY_EVENT_BYTES = 64 * 2**20
"""... or more event-file bytes than this (about a million scalar events)."""

LISTED_TAGS = 5
"""Tags named when a run has none that lrwatch reads."""

PROG = "lrwatch"


class CommandError(Exception):
    """Nothing to report; the message is the one line shown after ``lrwatch: error:``."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) and do not exit, so ``main`` returns the code."""

    def error(self, message: str):
        raise CommandError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Watch how the learning-rate schedule drives training.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    report = commands.add_parser(
        "report",
        help="analyze the lrwatch (or LearningRateMonitor) series of every run under LOGDIR",
        description="Read every run's TensorBoard events under LOGDIR, detect the lr schedule and diagnose it.",
        epilog=f"exit status: {EXIT_OK} all runs reported; {EXIT_INCOMPLETE} reported, but some input was damaged "
        f"or a run had no data (see stderr); {EXIT_FAILED} nothing to report (see stderr)",
    )
    report.add_argument("logdir", metavar="LOGDIR", help="TensorBoard log directory (searched recursively)")
    report.add_argument("--json", action="store_true", help="print one JSON object keyed by run")
    report.add_argument("--plot", metavar="FILE.png", help="write a figure, one row per run (needs matplotlib)")
    report.add_argument("--run", metavar="NAME", help="only this run (its directory relative to LOGDIR)")
    report.add_argument("--lr-tag", metavar="TAG", help="for runs without lrwatch tags: read the lr from TAG (and "
                        "TAG/<group>), the LearningRateMonitor tag of a scheduler given a \"name\" in its config; "
                        "runs without it fall back to the default lr-<Optimizer> tags")
    report.add_argument("--progress", action="store_true", help="a line on stderr per run read (default: on a "
                        f"terminal, with more than {FEW_RUNS} runs or {MANY_EVENT_BYTES // 2**20} MiB of events)")
    return parser


@dataclass(frozen=True)
class Analysis:
    """One track's report, or (report None) why ``analyze`` rejected its data."""

    label: str
    run: RunSeries
    track: Track
    report: Report | None
    error: str | None


def _label(run: RunSeries, track: Track) -> str:
    """The key of a track in the output: the run name, with ``:<optimizer>`` when the run has several."""
    return run.name if len(run.tracks) == 1 or track.optimizer is None else f"{run.name}:{track.optimizer}"


def analyze_track(run: RunSeries, track: Track) -> Analysis:
    """``lrwatch.analyze`` on one track; the displacement is None for an lr-only track."""
    try:
        report = analyze(
            track.displacement, loss=track.loss, lr=track.analysis_lr, steps=track.steps, grad_norm=track.grad_norm,
            descent=track.descent, momentum=track.momentum,
        )
    except ValueError as error:
        return Analysis(_label(run, track), run, track, None, str(error))
    return Analysis(_label(run, track), run, track, report, None)


def _run_problems(run: RunSeries, analyses: list[Analysis], lr_tag: str | None) -> list[str]:
    """What kept all or part of this run out of the report, one phrase each."""
    problems = list(run.problems)
    if not run.tracks and not run.problems:
        shown = sorted(run.scalars)[:LISTED_TAGS] + (["…"] if len(run.scalars) > LISTED_TAGS else [])
        listed = f" (its {len(run.scalars)} scalar tags: {', '.join(shown)})" if run.scalars else ""
        looked = f" ({lr_tag!r} or lr-<Optimizer>)" if lr_tag else ""
        problems.append(f"no lrwatch or learning-rate tags{looked}{listed}")
    for a in analyses:
        if a.error:
            problems.append(f"analysis{f' of {a.track.optimizer}' if a.track.optimizer else ''} failed: {a.error}")
    return problems


def _series_text(track: Track) -> str:
    found = ", ".join(f"{name} ({', '.join(tags)})" for name, tags in track.sources.items())
    return f"steps {track.steps[0]}–{track.steps[-1]} ({track.steps.size} logged); series: {found}"


def _text(analyses: list[Analysis], empty_runs: dict[str, list[str]]) -> str:
    """The readable report: per track a header, what was read, then the schedule and diagnoses table."""
    blocks = []
    for a in analyses:
        lines = [f"== {a.label} ==", _series_text(a.track)]
        if a.track.lr_only:
            lines.append("lr-only analysis: no lrwatch displacement in this run; the schedule is read from the lr")
        lines += [f"note: {n}" for n in a.track.notes]
        lines += [f"problem: {p}" for p in a.run.problems]
        lines.append(diagnoses_markdown(a.report))
        actions = logged_actions(a.run)
        if actions:
            lines.append(f"EarlyStepDrop actions: {'; '.join(action.describe() for action in actions)}")
        blocks.append("\n".join(lines))
    for name, problems in empty_runs.items():
        blocks.append(f"== {name} ==\nno data: {'; '.join(problems)}")
    return "\n\n".join(blocks)


def _json(analyses: list[Analysis], empty_runs: dict[str, list[str]]) -> str:
    """One JSON object keyed by run (``run:optimizer`` with several optimizers): the report plus what was read."""
    document: dict[str, dict] = {}
    for a in analyses:
        entry = a.report.to_dict()
        entry.update(
            run=a.run.name,
            optimizer=a.track.optimizer,
            analysis="lr-only" if a.track.lr_only else "displacement",
            series=a.track.sources,
            steps=[int(a.track.steps[0]), int(a.track.steps[-1])],
            notes=list(a.track.notes),
            problems=list(a.run.problems),
            actions=[action.to_dict() for action in logged_actions(a.run)],
        )
        document[a.label] = entry
    for name, problems in empty_runs.items():
        document[name] = {"run": name, "error": f"no data: {'; '.join(problems)}"}
    try:
        return json.dumps(document, indent=2, allow_nan=False)
    except ValueError as error:
        raise CommandError(f"the report is not valid JSON ({error}); this is a bug in lrwatch") from error


def _plot(analyses: list[Analysis], path: str) -> None:
    try:
        from lrwatch.plot import plot_report
    except ImportError as error:
        raise CommandError(f"--plot needs matplotlib ({error}); install it with: pip install 'lrwatch[plot]'")
    try:
        plot_report([(a.label, a.track, a.report, logged_actions(a.run)) for a in analyses], path)
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot write plot {path!r}: {error}") from error


def report(args: argparse.Namespace) -> int:
    """The ``report`` subcommand; returns the exit status, raises CommandError when nothing can be reported."""
    try:
        check_lr_tag(args.lr_tag)
        runs = find_runs(args.logdir)
    except ValueError as error:
        raise CommandError(str(error)) from error
    if args.run is not None:
        if args.run not in runs:
            raise CommandError(f"no run {args.run!r} under {args.logdir!r}; runs: {', '.join(runs)}")
        runs = {args.run: runs[args.run]}
    total_bytes = sum(f.stat().st_size for files in runs.values() for f in files)
    show_progress = args.progress or (sys.stderr.isatty() and (len(runs) > FEW_RUNS or total_bytes > MANY_EVENT_BYTES))

    analyses: list[Analysis] = []
    problems: dict[str, list[str]] = {}
    for done, (name, files) in enumerate(runs.items(), start=1):
        started = time.perf_counter()
        run = read_run(name, files, args.lr_tag)
        found = [analyze_track(run, track) for track in run.tracks]
        analyses += [a for a in found if a.report]
        problems[name] = _run_problems(run, found, args.lr_tag)
        if show_progress:
            print(f"{PROG}: [{done}/{len(runs)}] {name}: {run.n_records:,} records, "
                  f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    if not analyses:
        detail = "; ".join(f"run {name!r}: {' / '.join(p)}" for name, p in problems.items())
        raise CommandError(f"no usable lrwatch or learning-rate data under {args.logdir!r} ({detail})")

    reported = {a.run.name for a in analyses}
    empty_runs = {name: p for name, p in problems.items() if name not in reported}
    if args.plot:
        _plot(analyses, args.plot)
    output = _json(analyses, empty_runs) if args.json else _text(analyses, empty_runs)
    for name, lines in problems.items():
        if lines:
            what = "no data: " if name in empty_runs else ""
            print(f"{PROG}: warning: run {name!r}: {what}{'; '.join(lines)}", file=sys.stderr)
    print(output)
    return EXIT_INCOMPLETE if any(problems.values()) else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lrwatch`` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return report(args)
    except CommandError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except SystemExit as done:  # --help
        return int(done.code or 0)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Python's docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
