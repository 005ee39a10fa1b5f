"""TensorBoard event files decoded in bulk: every scalar of one file, with numpy.

``read_event_file`` returns the scalar events of one ``events.out.tfevents.*`` file as arrays (``EventScalars``,
each event with its record's position in the file), the number of records read, and a line describing any
damage. It is the decoder behind ``lrwatch.tensorboard.read_run``; turning those events into per-run lrwatch
series is that module's job.

TensorBoard's own readers, ``EventAccumulator`` (about 19 µs an event) and ``EventFileLoader`` (about 50 µs),
check the record checksums in pure Python. This module frames the TFRecord stream in Python, checks every
checksum with numpy across all records at once, decodes the scalar layout that ``SummaryWriter.add_scalar``
writes with numpy too, and hands any other record to TensorBoard's own ``Event`` proto: about 1 µs a record in
``benchmarks/report_speed.py``. Like TensorBoard, it stops at the first damaged record of a file and keeps what
came before; unlike TensorBoard, it says so.

Imports numpy and, for the rare records of other layouts, TensorBoard's protobufs; never torch or Lightning.
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------------------------------
# TFRecord framing and checksums
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
        # a tail too short for a header was cut inside it; a whole header must pass its checksum
        tail_intact = stop + _HEADER_BYTES > len(raw) or bool(
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


# --------------------------------------------------------------------------------------------------------------
# Scalar decoding: add_scalar's layout with numpy, any other layout through TensorBoard's Event proto
# --------------------------------------------------------------------------------------------------------------

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
class EventScalars:
    """Scalar events of one event file: (n,) record index, tag index, step, value.

    Records of the ``add_scalar`` layout come first, records decoded through the ``Event`` proto after them;
    ``order`` (each record's position in the file) gives the file order.
    """

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


def read_event_file(path: str | os.PathLike) -> tuple[EventScalars, int, str | None]:
    """Every scalar event of one event file: (scalars, number of records read, problem or None).

    A scalar is a ``simple_value`` or a 0-d numeric tensor (TF2-style scalars); other values are skipped.
    ``problem`` describes a truncated or corrupted file in one line; the scalars are those before the damage.
    Raises ValueError when ``path`` is not a path, OSError when the file cannot be read.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or os.PathLike, got {path!r}")
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
    return EventScalars(names, order, tag, step, value), starts.size, problem
