"""How long `lrwatch report DIR --json` takes on a large log folder: 10 runs x 100k optimizer steps.

Each run holds what ``LRWatch`` logs for one SGD optimizer: ``lrwatch/displacement``, ``lrwatch/grad_norm``,
``lrwatch/descent``, ``lrwatch/momentum``, ``lrwatch/loss`` and ``lrwatch/lr/SGD`` at every step, plus a diagnosis flag at every flush (50 steps). The lr
follows a step schedule (x0.1 at 30k, 60k, 90k); gradient norm and loss carry log-normal noise.

Writing 4 million events through ``SummaryWriter.add_scalar`` takes minutes (about 24 us an event here), so
the files are written with numpy in exactly the byte layout ``add_scalar`` produces (TFRecord frames with
masked CRC-32C checksums around ``Event{wall_time, step, summary{value{tag, simple_value}}}``). A short file
written the same way is read back with TensorBoard's own ``EventFileLoader`` first, so a layout mistake fails
loudly instead of timing the wrong thing.

    python benchmarks/report_speed.py [--runs 10] [--steps 100000] [--keep DIR]

Nothing here imports torch: the report path is numpy and TensorBoard's protobufs only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from lrwatch import tags
from lrwatch.cli import main
from lrwatch.event_files import _masked_crc32c

GOAL_SECONDS = 10.0
FLUSH_EVERY = 50  # LRWatch's default: diagnosis flags are logged once per flush
LR_START, LR_GAMMA, LR_STEP_SIZE = 0.1, 0.1, 30_000
WALL_TIME_START = 1.7e9  # seconds since the epoch of the first event; 1 ms per step after it


def _varint(values: np.ndarray, n_bytes: int) -> np.ndarray:
    """(n, n_bytes) uint8 protobuf varints of non-negative ints that all need exactly n_bytes."""
    out = np.empty((values.size, n_bytes), dtype=np.uint8)
    for i in range(n_bytes):
        out[:, i] = ((values >> (7 * i)) & 0x7F) | (0x80 if i < n_bytes - 1 else 0)
    return out


def _scalar_payloads(tag: str, steps: np.ndarray, values: np.ndarray, wall_times: np.ndarray) -> list:
    """Serialized ``Event`` protos of one scalar tag, grouped by payload length: [(indices, (n, L) uint8)]."""
    tag_bytes = np.frombuffer(tag.encode(), dtype=np.uint8)
    value_message = np.concatenate([[0x0A, tag_bytes.size], tag_bytes, [0x15]]).astype(np.uint8)
    groups = []
    step_bytes = np.where(steps == 0, 0, (np.floor(np.log2(np.maximum(steps, 1))) // 7 + 1).astype(int))
    for n_step_bytes in np.unique(step_bytes):
        rows = np.flatnonzero(step_bytes == n_step_bytes)
        step_field = (
            np.hstack([np.full((rows.size, 1), 0x10, np.uint8), _varint(steps[rows], int(n_step_bytes))])
            if n_step_bytes
            else np.zeros((rows.size, 0), np.uint8)
        )
        value_length = value_message.size + 4
        parts = [
            np.full((rows.size, 1), 0x09, np.uint8),
            wall_times[rows].astype("<f8").view(np.uint8).reshape(-1, 8),
            step_field,
            np.tile(np.array([0x2A, value_length + 2, 0x0A, value_length], np.uint8), (rows.size, 1)),
            np.tile(value_message, (rows.size, 1)),
            values[rows].astype("<f4").view(np.uint8).reshape(-1, 4),
        ]
        groups.append((rows, np.hstack(parts)))
    return groups


def _frame(payloads: np.ndarray) -> np.ndarray:
    """(n, 16 + L) TFRecord frames around (n, L) payloads: length, its checksum, payload, its checksum."""
    n, length = payloads.shape
    length_bytes = np.frombuffer(np.uint64(length).tobytes(), dtype=np.uint8)
    length_crc = _masked_crc32c(length_bytes, np.array([0]), np.array([8])).astype("<u4").view(np.uint8)
    flat = payloads.ravel()
    payload_crc = _masked_crc32c(flat, np.arange(n) * length, np.full(n, length)).astype("<u4").view(np.uint8)
    payload_crc = payload_crc.reshape(n, 4)
    return np.hstack([np.tile(length_bytes, (n, 1)), np.tile(length_crc, (n, 1)), payloads, payload_crc])


def write_scalar_events(path: Path, series: list[tuple[str, np.ndarray, np.ndarray]]) -> int:
    """Write one event file holding every (tag, steps, values) series, records ordered by step then by series
    (as a logger writing each step's metrics in turn), after the file-version record. Returns the record count."""
    from tensorboard.compat.proto.event_pb2 import Event

    frames, keys = [], []
    for order, (tag, steps, values) in enumerate(series):
        steps = np.asarray(steps, dtype=np.int64)
        for rows, payloads in _scalar_payloads(tag, steps, np.asarray(values), WALL_TIME_START + 1e-3 * steps):
            frames.append(_frame(payloads))
            keys.append(np.stack([steps[rows], np.full(rows.size, order)], axis=1))
    version = Event(wall_time=WALL_TIME_START, file_version="brain.Event:2").SerializeToString()
    head = _frame(np.frombuffer(version, dtype=np.uint8)[None, :])
    key = np.concatenate(keys)
    sizes = np.concatenate([np.full(f.shape[0], f.shape[1]) for f in frames])
    rank = np.lexsort((key[:, 1], key[:, 0]))
    offsets = np.empty(sizes.size, dtype=np.int64)
    offsets[rank] = head.size + np.concatenate([[0], np.cumsum(sizes[rank])[:-1]])
    out = np.empty(head.size + int(sizes.sum()), dtype=np.uint8)
    out[: head.size] = head.ravel()
    start = 0
    for f in frames:
        rows = slice(start, start + f.shape[0])
        out[offsets[rows, None] + np.arange(f.shape[1])] = f
        start += f.shape[0]
    path.write_bytes(out.tobytes())
    return sizes.size + 1


def synthetic_run(n_steps: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """What LRWatch logs for one SGD run: step-decay lr, noisy gradient norm, displacement = lr x grad norm."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n_steps + 1)
    lr = LR_START * LR_GAMMA ** ((steps - 1) // LR_STEP_SIZE)
    grad_norm = np.exp(rng.normal(0.0, 0.2, n_steps))
    loss = 2.0 / np.sqrt(steps) * np.exp(rng.normal(0.0, 0.1, n_steps))
    flag_steps = steps[FLUSH_EVERY - 1 :: FLUSH_EVERY]
    return [
        (tags.DISPLACEMENT, steps, lr * grad_norm),
        (tags.GRAD_NORM, steps, grad_norm),
        (tags.DESCENT, steps, lr * grad_norm**2),
        (tags.MOMENTUM, steps, np.zeros(n_steps)),
        (tags.LOSS, steps, loss),
        (tags.lr_tag("SGD"), steps, lr),
        (tags.diagnosis_tag("lr_too_high"), flag_steps, np.zeros(flag_steps.size)),
    ]


def check_layout(directory: Path) -> None:
    """Write a short file the same way and compare every scalar with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    series = synthetic_run(300, seed=0)
    path = directory / "events.out.tfevents.layout-check"
    n_records = write_scalar_events(path, series)
    read = [(v.tag, e.step, float(tensor_util.make_ndarray(v.tensor))) for e in EventFileLoader(str(path)).Load()
            for v in e.summary.value]
    written = sorted(((t, int(s), float(np.float32(v))) for t, st, vs in series for s, v in zip(st, vs)),
                     key=lambda r: (r[1], [t for t, _, _ in series].index(r[0])))
    if len(read) != n_records - 1 or read != written:
        raise RuntimeError("synthetic event layout does not read back through TensorBoard's EventFileLoader")
    path.unlink()


def main_benchmark(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="write the runs here and keep them")
    args = parser.parse_args(argv)
    logdir = args.keep or Path(tempfile.mkdtemp(prefix="lrwatch-report-speed-"))
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        check_layout(logdir)
        t0 = time.perf_counter()
        n_records = 0
        for i in range(args.runs):
            run = logdir / f"run_{i:02d}"
            run.mkdir(exist_ok=True)
            n_records += write_scalar_events(run / f"events.out.tfevents.{i}.bench", synthetic_run(args.steps, seed=i))
        size = sum(f.stat().st_size for f in logdir.rglob("events.out.tfevents.*"))
        print(f"wrote {args.runs} runs x {args.steps} steps: {n_records:,} records, {size / 2**20:.0f} MiB "
              f"in {time.perf_counter() - t0:.1f} s")
        stdout, stderr = io.StringIO(), io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["report", str(logdir), "--json"])
        elapsed = time.perf_counter() - t0
        report = json.loads(stdout.getvalue())
        if code != 0 or len(report) != args.runs:
            raise RuntimeError(f"report failed (exit {code}): {stderr.getvalue().strip()}")
        print(f"lrwatch report --json: {elapsed:.2f} s for {args.runs} runs (goal < {GOAL_SECONDS:.0f} s); "
              f"drops found in run_00: {report['run_00']['schedule']['drops']}")
        return elapsed
    finally:
        if args.keep is None:
            shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    main_benchmark()
