"""lrwatch series in TensorBoard: read them back from event files, lay them out, summarise diagnoses as text.

Reading (``read_runs``) turns every run under a log directory into ``RunSeries``: one ``Track`` per optimizer
holding the inputs of one ``lrwatch.analyze`` call on one step axis. The step axis is the optimizer step
(``trainer.global_step`` after the step, see ``lrwatch.tags``). Runs logged only with Lightning's
``LearningRateMonitor`` get an lr-only track.

Event files are decoded here rather than through TensorBoard's ``EventAccumulator`` (about 19 µs an event) or
``EventFileLoader`` (about 50 µs): both check the record checksums in pure Python. This module frames the
TFRecord stream in Python, checks every checksum with numpy across all records at once, decodes the scalar
layout that ``SummaryWriter.add_scalar`` writes with numpy too, and hands any other record to TensorBoard's own
``Event`` proto: about 1 µs a record in ``benchmarks/report_speed.py``. Like TensorBoard, it stops at the first
damaged record of a file and keeps what came before; unlike TensorBoard, it says so (``RunSeries.problems``).

No Lightning or torch import: this module serves the offline report as well as the callback.
"""

from __future__ import annotations

import os
import re
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrwatch import tags
from lrwatch.diagnosis import Diagnosis, Report

EVENT_FILE_MARKER = "tfevents"
"""A file belongs to a run when its name contains this, as TensorBoard decides (``events.out.tfevents.*``)."""

LOSS_FALLBACK_TAGS = ("train_loss", "loss", "train/loss", "train_loss_step")
"""Loss tags read, in this order of preference, when a run has no ``lrwatch/loss``."""

LR_MONITOR_PREFIX = "lr-"
"""Lightning's ``LearningRateMonitor`` names its tags ``lr-<Optimizer>[-<i>][/<group>]`` or by scheduler name."""

LR_MONITOR_OTHER_SUFFIXES = ("-momentum", "-weight_decay")
"""``LearningRateMonitor`` tags that carry something other than the lr."""

LIGHTNING_STEP_OFFSET = 1
"""Added to the step of Lightning's own tags (``LearningRateMonitor``, ``self.log`` losses) to put them on the
lrwatch axis. Lightning logs them at ``_batches_that_stepped`` *before* the optimizer step they belong to: the lr
logged at step k is the lr of the update that ends at global step k + 1."""


# --------------------------------------------------------------------------------------------------------------
# Event files: TFRecord framing, checksums, scalar decoding
# --------------------------------------------------------------------------------------------------------------

_LENGTH_BYTES = 8  # uint64 little-endian payload length
_CHECKSUM_BYTES = 4  # masked CRC-32C, after the length and after the payload
_HEADER_BYTES = _LENGTH_BYTES + _CHECKSUM_BYTES
_FRAME_BYTES = _HEADER_BYTES + _CHECKSUM_BYTES
_CRC32C_POLYNOMIAL = 0x82F63B78  # Castagnoli, bit-reversed
_CRC_MASK_DELTA = 0xA282EAD8  # TFRecord's checksum masking constant


def _crc32c_table() -> np.ndarray:
    """(256,) uint32: CRC-32C of each byte value, for the byte-at-a-time table algorithm."""
    crc = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        crc = np.where(crc & 1, (crc >> 1) ^ np.uint32(_CRC32C_POLYNOMIAL), crc >> 1).astype(np.uint32)
    return crc


_CRC_TABLE = _crc32c_table()


def _gather_uint32(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n,) uint32 read little-endian at each offset of the byte buffer ``buf``."""
    return buf[offsets[:, None] + np.arange(4)].view("<u4").ravel()


_LOW_BYTE = 0 if sys.byteorder == "little" else 3  # where a uint32's low byte sits in memory
_CRC_CHUNK = 8192
"""Most records checksummed per pass: few enough that the working arrays stay in the CPU cache (twice as fast
as passes over a whole file here)."""
_CRC_GROUP_ALONE = 256
"""Records of one length that get passes of their own; fewer share passes with records of similar lengths."""
_CRC_SPREAD = 2
"""Records sharing passes are at most this many times longer than the shortest of them, which bounds the passes
spent before a record's first byte."""


def _masked_crc32c(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(n,) uint32 masked CRC-32C (the TFRecord checksum) of the ``lengths[i]`` bytes at ``offsets[i]``.

    Many records at once, one byte of each per numpy pass, in batches of records sorted by length.
    """
    out = np.empty(offsets.size, dtype=np.uint32)
    order = np.argsort(lengths, kind="stable")
    for batch in _crc_batches(lengths[order]):
        rows = order[batch]
        out[rows] = _crc_batch(buf, offsets[rows], lengths[rows])
    return out


def _crc_batches(sorted_lengths: np.ndarray) -> list[slice]:
    """Slices of ``sorted_lengths`` checksummed together: at most _CRC_CHUNK records, either all of one length,
    or small groups of lengths within a factor _CRC_SPREAD of each other."""
    batches: list[slice] = []
    shared: list[int] | None = None  # [start, stop, shortest length] of the batch small groups are joining
    lengths, starts, counts = np.unique(sorted_lengths, return_index=True, return_counts=True)
    for length, start, count in zip(lengths.tolist(), starts.tolist(), counts.tolist()):
        alone = count >= _CRC_GROUP_ALONE
        if not alone and shared and length <= _CRC_SPREAD * shared[2] and start + count - shared[0] <= _CRC_CHUNK:
            shared[1] = start + count
            continue
        if shared:
            batches.append(slice(shared[0], shared[1]))
        shared = None if alone else [start, start + count, length]
        if alone:
            batches += [slice(s, min(s + _CRC_CHUNK, start + count)) for s in range(start, start + count, _CRC_CHUNK)]
    if shared:
        batches.append(slice(shared[0], shared[1]))
    return batches


def _crc_batch(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Masked CRC-32C of up to _CRC_CHUNK records: pass j feeds byte j of every record, the records aligned at
    their ends, so a shorter record's register starts only when its first byte comes."""
    n, longest = offsets.size, int(lengths.max()) if lengths.size else 0
    late = longest - lengths  # passes before each record's first byte
    crc = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    low_byte = crc.view(np.uint8)[_LOW_BYTE::4]
    position, byte, index, looked_up = (np.empty(n, dtype=t) for t in (np.int64, np.uint8, np.uint8, np.uint32))
    first_byte = offsets - late
    for j in range(longest):
        np.add(first_byte, j, out=position)
        np.take(buf, position, out=byte, mode="clip")
        np.bitwise_xor(low_byte, byte, out=index)
        np.take(_CRC_TABLE, index, out=looked_up)
        if late[0] > j:  # records still waiting keep their initial register (late is sorted descending)
            started = late <= j
            crc[started] = (crc[started] >> 8) ^ looked_up[started]
        else:
            np.right_shift(crc, 8, out=crc)
            np.bitwise_xor(crc, looked_up, out=crc)
    crc ^= np.uint32(0xFFFFFFFF)
    return ((crc >> 15) | (crc << 17)) + np.uint32(_CRC_MASK_DELTA)


def _walk_records(raw: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """(record offsets, payload lengths) of the records whose frame fits in ``raw``, and the offset where the
    walk stopped (the size when the file ends cleanly). The walk trusts the length fields; the caller checks them.

    Record by record this is a Python loop. A logger writes one record per tag per step, so
    the record lengths repeat with the period of its tags; once they do, the walk predicts whole stretches and
    checks them with numpy (``_walk_pattern``), and goes back to single records where the pattern breaks.
    """
    read_length = struct.Struct("<Q").unpack_from
    buf = np.frombuffer(raw, dtype=np.uint8)
    offsets: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    recent: list[int] = []  # lengths of the latest records
    pattern: np.ndarray | None = None  # lengths that have been repeating, starting with the next one expected
    guess = _FIRST_GUESS
    position, size = 0, len(raw)
    while position + _HEADER_BYTES <= size:
        length = read_length(raw, position)[0]
        if position + _FRAME_BYTES + length > size:
            break
        if pattern is not None and length == pattern[0]:
            starts, walked = _walk_pattern(buf, position, pattern, guess)
            offsets.append(starts)
            lengths.append(walked)
            position = int(starts[-1] + _FRAME_BYTES + walked[-1])
            pattern = np.concatenate([pattern[walked.size % pattern.size :], pattern[: walked.size % pattern.size]])
            recent = walked[-2 * _MAX_PERIOD :].tolist()
            guess = min(_MAX_GUESS, max(_FIRST_GUESS, 2 * walked.size))
            continue
        offsets.append(np.array([position]))
        lengths.append(np.array([length]))
        position += _FRAME_BYTES + length
        recent = (recent + [length])[-2 * _MAX_PERIOD :]
        period = next(
            (p for p in range(1, _MAX_PERIOD + 1) if len(recent) >= 2 * p and recent[-p:] == recent[-2 * p : -p]),
            None,
        )
        if period is not None:
            pattern = np.array(recent[-period:], dtype=np.int64)
    if not offsets:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), position
    return np.concatenate(offsets).astype(np.int64), np.concatenate(lengths).astype(np.int64), position


_MAX_PERIOD = 16
"""Longest repeating pattern of record lengths the walk looks for (the number of tags logged per step)."""
_FIRST_GUESS, _MAX_GUESS = 32, 4096
"""Records predicted at once: twice as many as the last prediction kept, within these bounds."""


def _walk_pattern(buf: np.ndarray, position: int, pattern: np.ndarray, n_records: int) -> tuple[np.ndarray, np.ndarray]:
    """Walk up to ``n_records`` at once assuming their lengths repeat ``pattern``, whose first length is that of
    the record at ``position`` and whose frame fits. Keeps the predictions, from the first on, whose length field
    in the file says exactly that length, so each kept offset is the one a record-by-record walk reaches.
    Returns (offsets, lengths), at least the first record."""
    predicted = np.tile(pattern, n_records // pattern.size + 1)[:n_records]
    ends = position + np.cumsum(predicted + _FRAME_BYTES)
    n_fit = int(np.searchsorted(ends, buf.size, side="right"))
    predicted = predicted[:n_fit]
    starts = ends[:n_fit] - predicted - _FRAME_BYTES
    actual = buf[starts[:, None] + np.arange(_LENGTH_BYTES)].view("<u8").ravel()
    mismatch = np.flatnonzero(actual != predicted)
    agree = int(mismatch[0]) if mismatch.size else n_fit
    return starts[:agree], predicted[:agree]


def _frame_records(raw: bytes, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(payload offsets, payload lengths, problem) of the intact records at the start of an event file.

    Both checksums of every record are checked; reading stops at the first bad one, as TensorBoard does.
    ``problem`` says where and why the file stopped being readable, None when all of it was.
    """
    offsets, lengths, stop = _walk_records(raw)
    header = np.full(offsets.size, _LENGTH_BYTES)
    header_bad = _masked_crc32c(buf, offsets, header) != _gather_uint32(buf, offsets + _LENGTH_BYTES)
    n_good = int(np.argmax(header_bad)) if header_bad.any() else offsets.size
    payloads, lengths = offsets[:n_good] + _HEADER_BYTES, lengths[:n_good]
    payload_bad = _masked_crc32c(buf, payloads, lengths) != _gather_uint32(buf, payloads + lengths)
    n_good = int(np.argmax(payload_bad)) if payload_bad.any() else n_good
    if n_good < offsets.size:
        problem = f"corrupted record {n_good} at byte {offsets[n_good]} (checksum mismatch)"
    elif stop < len(raw):
        tail_intact = stop + _HEADER_BYTES <= len(raw) and bool(
            _masked_crc32c(buf, np.array([stop]), np.array([_LENGTH_BYTES]))[0]
            == _gather_uint32(buf, np.array([stop + _LENGTH_BYTES]))[0]
        )
        what = "truncated" if tail_intact else "corrupted (bad record header)"
        problem = f"{what} at byte {stop} of {len(raw)}"
    else:
        problem = None
    if problem is not None:
        problem += f"; read the {n_good} records before it"
    return payloads[:n_good], lengths[:n_good], problem


# Protobuf wire keys ((field number << 3) | wire type) of the scalar layout SummaryWriter.add_scalar writes:
# Event{wall_time=1 fixed64, step=2 varint, summary=5 {value=1 {tag=1 bytes, simple_value=2 fixed32}}}.
_WALL_TIME_KEY = 0x09
_STEP_KEY = 0x10
_SUMMARY_KEY = 0x2A
_VALUE_KEY = 0x0A
_TAG_KEY = 0x0A
_SIMPLE_VALUE_KEY = 0x15
_WALL_TIME_BYTES = 8
_FLOAT_BYTES = 4
_MAX_VARINT_BYTES = 10
_VARINT_CONTINUE = 0x80  # high bit: more varint bytes follow; a length below it takes one byte


@dataclass(frozen=True)
class _Scalars:
    """Scalar events of one event file in file order: (n,) record index, tag index, step, value."""

    tag_names: list[str]
    order: np.ndarray  # int64, position of the record in the stream
    tag: np.ndarray  # int64 index into tag_names
    step: np.ndarray  # int64
    value: np.ndarray  # float64


def _decode_simple_scalars(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
    """Decode every record that has exactly the ``add_scalar`` layout, all at once.

    Returns (matched (n,) bool, step, value, tag_start, tag_length) where the last four are for matched records.
    A record without a step field has step 0 (proto3 leaves defaults out).
    """
    last = buf.size - 1

    def byte_at(index: np.ndarray) -> np.ndarray:
        return buf[np.minimum(index, last)]

    has_step = byte_at(starts + 1 + _WALL_TIME_BYTES) == _STEP_KEY
    step = np.zeros(starts.size, dtype=np.uint64)
    varint_bytes = np.zeros(starts.size, dtype=np.int64)
    reading = has_step.copy()
    for i in range(_MAX_VARINT_BYTES):
        byte = byte_at(starts + 2 + _WALL_TIME_BYTES + i)
        step[reading] |= (byte[reading] & 0x7F).astype(np.uint64) << np.uint64(7 * i)
        varint_bytes[reading] += 1
        reading &= byte >= _VARINT_CONTINUE
    matched = ~reading & (byte_at(starts) == _WALL_TIME_KEY)
    summary = starts + 1 + _WALL_TIME_BYTES + np.where(has_step, 1 + varint_bytes, 0)
    end = starts + lengths
    summary_length = end - (summary + 2)
    value_length = end - (summary + 4)
    tag_length = byte_at(summary + 5)
    simple_value = summary + 6 + tag_length
    matched &= (byte_at(summary) == _SUMMARY_KEY) & (summary_length < _VARINT_CONTINUE)
    matched &= byte_at(summary + 1) == summary_length
    matched &= (byte_at(summary + 2) == _VALUE_KEY) & (value_length < _VARINT_CONTINUE)
    matched &= byte_at(summary + 3) == value_length
    matched &= (byte_at(summary + 4) == _TAG_KEY) & (tag_length > 0) & (tag_length < _VARINT_CONTINUE)
    matched &= (simple_value + 1 + _FLOAT_BYTES == end) & (byte_at(simple_value) == _SIMPLE_VALUE_KEY)
    value_at = simple_value[matched] + 1
    value = buf[value_at[:, None] + np.arange(_FLOAT_BYTES)].view("<f4").ravel().astype(np.float64)
    return matched, step[matched].view(np.int64), value, summary[matched] + 6, tag_length[matched]


def _tag_indices(buf: np.ndarray, tag_start: np.ndarray, tag_length: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Distinct tag names and, per record, the index of its tag: byte strings compared with numpy, per length."""
    names: list[str] = []
    index = np.zeros(tag_start.size, dtype=np.int64)
    for length in np.unique(tag_length):
        rows = np.flatnonzero(tag_length == length)
        distinct, inverse = _distinct_rows(buf[tag_start[rows, None] + np.arange(length)])
        index[rows] = inverse + len(names)
        names.extend(d.decode("utf-8", "replace") for d in distinct)
    return names, index


_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio) for a polynomial hash


def _distinct_rows(rows: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    """Distinct rows of a (m, length) uint8 array and, per row, the index of its distinct row.

    Each row is hashed to one uint64 and the hashes sorted, several times faster than sorting byte strings;
    the grouping is then checked byte for byte, and a hash collision falls back to sorting the strings.
    """
    m, length = rows.shape
    padded = np.zeros((m, (length + 7) // 8 * 8), dtype=np.uint8)
    padded[:, :length] = rows
    hashed = np.zeros(m, dtype=np.uint64)
    for word in padded.view("<u8").T:
        hashed = hashed * _HASH_MULTIPLIER + word
    _, first, inverse = np.unique(hashed, return_index=True, return_inverse=True)
    if (rows == rows[first][inverse]).all():
        return [rows[i].tobytes() for i in first], inverse.ravel()
    strings, inverse = np.unique(rows.view(f"S{length}").ravel(), return_inverse=True)
    return [bytes(s) for s in strings], inverse.ravel()


def _scalar_of(value) -> float | None:
    """The number in a ``Summary.Value``: its simple_value, or a 0-d numeric tensor (TF2-style scalars)."""
    if value.HasField("simple_value"):
        return float(value.simple_value)
    if value.HasField("tensor"):
        from tensorboard.util import tensor_util

        try:
            array = tensor_util.make_ndarray(value.tensor)
        except (TypeError, ValueError):
            return None
        if array.ndim == 0 and array.dtype.kind in "biuf":
            return float(array)
    return None


def _decode_other_records(raw: bytes, starts: np.ndarray, lengths: np.ndarray, orders: np.ndarray):
    """Scalars from records of any other layout, through TensorBoard's Event proto (slow, but rare)."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event

    found: list[tuple[int, str, int, float]] = []
    for start, length, order in zip(starts.tolist(), lengths.tolist(), orders.tolist()):
        try:
            event = Event.FromString(raw[start : start + length])
        except DecodeError:
            continue
        for value in event.summary.value:
            number = _scalar_of(value)
            if number is not None:
                found.append((order, value.tag, event.step, number))
    return found


def _read_event_file(path: str | os.PathLike) -> tuple[_Scalars, int, str | None]:
    """Every scalar event of one event file: (scalars in file order, number of records, problem or None).

    ``problem`` describes a truncated or corrupted file; the scalars are those before the damage.
    """
    raw = Path(path).read_bytes()
    buf = np.frombuffer(raw, dtype=np.uint8)
    starts, lengths, problem = _frame_records(raw, buf)
    matched, step, value, tag_start, tag_length = _decode_simple_scalars(buf, starts, lengths)
    names, tag = _tag_indices(buf, tag_start, tag_length)
    order = np.flatnonzero(matched)
    others = _decode_other_records(raw, starts[~matched], lengths[~matched], np.flatnonzero(~matched))
    if others:
        other_order, other_tags, other_steps, other_values = zip(*others)
        position = {name: i for i, name in enumerate(names)}
        other_tag = [position.setdefault(t, len(position)) for t in other_tags]
        names = list(position)
        order = np.concatenate([order, other_order]).astype(np.int64)
        tag = np.concatenate([tag, other_tag]).astype(np.int64)
        step = np.concatenate([step, np.array(other_steps, dtype=np.int64)])
        value = np.concatenate([value, other_values])
    return _Scalars(names, order, tag, step, value), starts.size, problem


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


def _series_by_tag(files: list[_Scalars]) -> dict[str, Series]:
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
    loss, grad_norm: None when not logged.
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


def _held(series: Series, axis: np.ndarray) -> np.ndarray:
    """Values of a piecewise-constant series on ``axis``: the latest logged value at or before each step
    (the first value before the first logged step)."""
    index = np.searchsorted(series.steps, axis, side="right") - 1
    return series.values[np.maximum(index, 0)]


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


def _lr_monitor_tags(scalars: dict[str, Series]) -> dict[str, list[str]]:
    """``LearningRateMonitor`` lr tags grouped by optimizer (the part before any ``/<group>``)."""
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
    grad_norm = None
    grad_norm_tag = tags.series_tag(tags.GRAD_NORM, optimizer)
    if grad_norm_tag in scalars:
        grad_norm = _fitted("grad_norm", scalars[grad_norm_tag], grad_norm_tag, axis, notes)
        sources["grad_norm"] = [grad_norm_tag]
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
        lr={t: _held(s, axis) for t, s in lr_series.items()},
        loss=loss,
        grad_norm=grad_norm,
        flags=flags,
        sources=sources,
        notes=tuple(notes),
    )


def _tracks(scalars: dict[str, Series]) -> tuple[Track, ...]:
    """One track per optimizer: lrwatch displacement first, else lrwatch lr, else ``LearningRateMonitor`` lr."""
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
    lr_groups, offset = (lrwatch_lr, 0) if lrwatch_lr else (_lr_monitor_tags(scalars), LIGHTNING_STEP_OFFSET)
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


def read_run(name: str, files: Sequence[str | os.PathLike]) -> RunSeries:
    """Read one run's event files (in the order given, oldest first) into a ``RunSeries``."""
    decoded, problems, n_records = [], [], 0
    for path in files:
        try:
            scalars, records, problem = _read_event_file(path)
        except OSError as error:
            problems.append(f"{Path(path).name}: cannot read ({error.strerror or error})")
            continue
        decoded.append(scalars)
        n_records += records
        if problem:
            problems.append(f"{Path(path).name}: {problem}")
    scalars = _series_by_tag(decoded)
    actions = {t: s for t, s in scalars.items() if t.startswith(tags.ACTION + "/")}
    return RunSeries(name, _tracks(scalars), actions, scalars, tuple(problems), n_records)


def read_runs(
    logdir: str | os.PathLike,
    run: str | None = None,
    progress: Callable[[int, int, RunSeries], None] | None = None,
) -> dict[str, RunSeries]:
    """Every run under ``logdir`` (or only ``run``), by name, in name order.

    progress: called after each run is read with (runs done, runs in all, the run).
    Raises ValueError for a missing or empty logdir and for a ``run`` that is not there.
    """
    runs = find_runs(logdir)
    if run is not None:
        if run not in runs:
            raise ValueError(f"run {run!r} is not under logdir {str(logdir)!r}; runs: {', '.join(runs)}")
        runs = {run: runs[run]}
    result: dict[str, RunSeries] = {}
    for done, (name, files) in enumerate(runs.items(), start=1):
        result[name] = read_run(name, files)
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


def _format_schedule(report: Report) -> str:
    """One line: schedule kind, where it was read from, and each drop as step (×factor)."""
    schedule = report.schedule
    line = f"{schedule.kind} (read from {schedule.source})"
    if schedule.rate is not None:
        line += f", ×{schedule.rate:.6g} per step"
    if schedule.drops:
        line += "; drops at " + ", ".join(f"step {s} (×{f:.3g})" for s, f in zip(schedule.drops, schedule.factors))
    else:
        line += "; no drops"
    return line


def diagnoses_markdown(report: Report) -> str:
    """Markdown for the ``lrwatch/diagnoses`` text tag: the schedule line, then a table of diagnoses
    (kind, steps, message) or a line saying there are none."""
    if not isinstance(report, Report):
        raise ValueError(f"report must be an lrwatch Report, got {type(report).__name__}")
    lines = [f"**Schedule:** {_format_schedule(report)}", ""]
    if not report.diagnoses:
        lines.append(f"No diagnoses over {report.n_steps} steps.")
        return "\n".join(lines)
    lines += ["| diagnosis | steps | message |", "|---|---|---|"]
    for d in report.diagnoses:
        message = d.message.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {d.kind} | {_format_steps(d)} | {message} |")
    return "\n".join(lines)
