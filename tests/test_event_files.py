"""``lrwatch.event_files``: the bulk event-file decoder, against TensorBoard's own loader and checksum.

Every comparison is with TensorBoard's ``EventFileLoader`` (framing, checksums, protobuf decoding in pure Python)
or its pure-Python ``masked_crc32c``, on files written by ``SummaryWriter`` or by a real Lightning run.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter

from lrwatch import event_files, tags
from lrwatch._lightning import Callback, pl
from lrwatch.event_files import _masked_crc32c, _walk_records, read_event_file
from tests.conftest import DigitsMLP, digits_loader, make_trainer


def _decoded(scalars) -> list[tuple[str, int, float]]:
    rows = sorted(zip(scalars.order.tolist(), scalars.tag.tolist(), scalars.step.tolist(), scalars.value.tolist()))
    return [(scalars.tag_names[t], s, v) for _, t, s, v in rows]


def _tensorboard_scalars(path) -> list[tuple[str, int, float]]:
    """Every 0-d numeric value of an event file, in order, through TensorBoard's own loader."""
    found = []
    for event in EventFileLoader(str(path)).Load():
        for value in event.summary.value:
            if value.HasField("tensor"):
                array = tensor_util.make_ndarray(value.tensor)
                if array.ndim == 0 and array.dtype.kind in "biuf":
                    found.append((value.tag, event.step, float(array)))
    return found


class LogLoss(Callback):
    """Logs the training loss through Lightning's own ``self.log``, as a LightningModule would."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pl_module.log("train_loss", outputs["loss"])


def test_reader_equals_tensorboards_event_file_loader_on_lightning_files(tmp_path):
    """A Lightning run's file: hparams, ``self.log`` losses, ``LearningRateMonitor`` lr/momentum/weight decay."""
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="run", version="")
    monitor = pl.callbacks.LearningRateMonitor(logging_interval="step", log_momentum=True, log_weight_decay=True)
    model = DigitsMLP("sgd_momentum_groups", lr=0.1, scheduler="step")
    make_trainer([monitor, LogLoss()], logger, max_steps=8, log_every_n_steps=1).fit(model, digits_loader())
    (path,) = tmp_path.rglob("events.out.tfevents.*")
    scalars, n_records, problem = read_event_file(path)
    assert problem is None
    decoded = _decoded(scalars)
    assert decoded == _tensorboard_scalars(path)
    assert {"train_loss", "lr-SGD/body", "lr-SGD/pg2-momentum"} <= {tag for tag, _, _ in decoded}


_TAG_NAMES = ["lrwatch/displacement", "loss", "lr-SGD/pg1", "ü/ünïcode", "t" * 130]  # 130: two-byte length


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(_TAG_NAMES),
            st.one_of(st.integers(0, 300), st.integers(0, 2**40), st.integers(-(2**40), -1)),
            st.floats(width=32, allow_nan=True, allow_infinity=True),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_reader_equals_event_file_loader_on_any_scalars(tmp_path_factory, events):
    """Simple and tensor (new_style) scalars, any step including 0 and negatives, NaN/Inf, long tags."""
    logdir = tmp_path_factory.mktemp("prop")
    with SummaryWriter(str(logdir)) as writer:
        for tag, step, value, new_style in events:
            writer.add_scalar(tag, value, step, new_style=new_style)
    (path,) = logdir.glob("events.out.tfevents.*")
    scalars, n_records, problem = read_event_file(path)
    assert problem is None and n_records == len(events) + 1  # + the file-version record
    mine, reference = _decoded(scalars), _tensorboard_scalars(path)
    assert [(t, s) for t, s, _ in mine] == [(t, s) for t, s, _ in reference]
    np.testing.assert_array_equal([v for *_, v in mine], [v for *_, v in reference])


@given(
    lengths=st.lists(
        st.tuples(st.lists(st.integers(0, 40), min_size=1, max_size=5), st.integers(1, 300)), min_size=1, max_size=6
    ),
    tail=st.integers(0, 30),
)
def test_walk_in_bulk_finds_the_record_by_record_offsets(lengths, tail):
    """Repeating length patterns (bulk walk) broken by other patterns, then a partial record or junk tail."""
    record_lengths = [n for pattern, repeats in lengths for n in pattern * repeats]
    raw = b"".join(n.to_bytes(8, "little") + bytes(8 + n) for n in record_lengths) + bytes(range(tail))
    offsets, walked_lengths, stop = _walk_records(raw)
    expected, position = [], 0
    while position + 12 <= len(raw):
        end = position + 16 + int.from_bytes(raw[position : position + 8], "little")
        if end > len(raw):
            break
        expected.append(position)
        position = end
    np.testing.assert_array_equal(offsets, expected)
    np.testing.assert_array_equal(walked_lengths, [int.from_bytes(raw[o : o + 8], "little") for o in expected])
    assert stop == position


def test_checksums_equal_tensorboards_for_every_batching():
    """300 records of one length (passes of their own), 60 of scattered lengths (sharing passes), one long one,
    empty ones: each equals TensorBoard's pure-Python masked CRC-32C."""
    rng = np.random.default_rng(0)
    lengths = np.concatenate([np.full(300, 40), rng.integers(1, 200, 60), [5000], [0, 0]])
    rng.shuffle(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    raw = rng.bytes(int(lengths.sum()))
    mine = _masked_crc32c(np.frombuffer(raw, dtype=np.uint8), offsets, lengths)
    expected = [masked_crc32c(raw[o : o + n]) for o, n in zip(offsets.tolist(), lengths.tolist())]
    np.testing.assert_array_equal(mine, expected)


def test_reader_skips_histograms_images_and_text_but_keeps_every_scalar(tmp_path):
    rng = np.random.default_rng(0)
    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(1, 41):
            writer.add_scalar(tags.DISPLACEMENT, 1.0 / step, step)
            writer.add_histogram("weights", rng.normal(size=100 + step), step)
            if step % 10 == 0:
                writer.add_image("sample", rng.random((3, 32, 32)), step)
                writer.add_text(tags.DIAGNOSES_TEXT, "| a |\n|---|\n| b |" * step, step)
            writer.add_scalar(tags.lr_tag("SGD"), 0.1, step)
    (path,) = tmp_path.glob("events.out.tfevents.*")
    scalars, n_records, problem = read_event_file(path)
    assert problem is None and n_records == 1 + 40 * 3 + 4 * 2
    assert _decoded(scalars) == _tensorboard_scalars(path)


def test_tag_hash_collisions_fall_back_to_exact_comparison(tmp_path, monkeypatch):
    monkeypatch.setattr(event_files, "_HASH_MULTIPLIER", np.uint64(0))  # hash = last 8 bytes only
    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(1, 5):
            writer.add_scalar("x_loss/grad_norm", 1.0, step)
            writer.add_scalar("y_loss/grad_norm", 2.0, step)
    (path,) = tmp_path.glob("events.out.tfevents.*")
    assert _decoded(read_event_file(path)[0]) == _tensorboard_scalars(path)


def test_reader_rejects_a_path_that_is_not_a_path_and_raises_oserror_for_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"^path must be a str or os.PathLike, got 3$"):
        read_event_file(3)
    with pytest.raises(FileNotFoundError):
        read_event_file(tmp_path / "events.out.tfevents.missing")


@pytest.mark.parametrize("kept", [1, 11, 12, 20])
def test_a_file_cut_inside_a_record_is_truncated_not_corrupted(tmp_path, kept):
    # kept bytes of the last record remain: 1 and 11 end inside its 12-byte header (length + its checksum),
    # 12 and 20 inside its payload; either way the file was cut, and every record before it is read
    writer = SummaryWriter(str(tmp_path))
    for step in range(5):
        writer.add_scalar("x", float(step), step)
    writer.close()
    [path] = tmp_path.glob("events.out.tfevents.*")
    raw = path.read_bytes()
    offsets, _, _ = _walk_records(raw)
    path.write_bytes(raw[: int(offsets[-1]) + kept])
    scalars, n_records, problem = read_event_file(path)
    assert problem.startswith(f"truncated at byte {int(offsets[-1])} of ") and n_records == len(offsets) - 1
    assert _decoded(scalars) == [("x", step, float(step)) for step in range(4)]
    # a whole header whose checksum fails is corruption
    damaged = bytearray(raw)
    damaged[int(offsets[-1]) + 9] ^= 0xFF
    path.write_bytes(bytes(damaged))
    assert read_event_file(path)[2].startswith(f"corrupted record {len(offsets) - 1} at byte {int(offsets[-1])} ")
