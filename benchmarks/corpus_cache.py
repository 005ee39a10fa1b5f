"""Build the diagnosis corpus once and keep it in ``benchmarks/_cache/corpus_v<N>.npz`` (gitignored).

The file holds every run's six series concatenated (``offsets`` marks where each run starts), the
checkpoint labels as columns, and a JSON header with the run specs, ground truth and the labelling
constants. The header doubles as a fingerprint: a cache built from other specs or constants is rebuilt
rather than silently reused.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

import corpus_runs
from corpus_runs import Checkpoint, Labelling, RunRecord, RunSpec, train_run
from corpus_specs import corpus_specs

#: Bump when the meaning of a stored field changes.
CORPUS_VERSION = 2
CACHE_DIR = Path(__file__).resolve().parent / "_cache"
SERIES = ("displacement", "lr", "grad_norm", "loss", "descent", "momentum")
_CHECKPOINT_FIELDS = tuple(f.name for f in dataclasses.fields(Checkpoint))


def cache_path(seed_offset: int = 0) -> Path:
    suffix = f"_seeds+{seed_offset}" if seed_offset else ""
    return CACHE_DIR / f"corpus_v{CORPUS_VERSION}{suffix}.npz"


def labelling_constants() -> dict[str, float]:
    """The labelling thresholds the corpus was built with (upper-case constants of corpus_runs)."""
    return {k: v for k, v in vars(corpus_runs).items() if k.isupper() and isinstance(v, (int, float))}


def _fingerprint(specs: list[RunSpec]) -> dict:
    return {
        "version": CORPUS_VERSION,
        "specs": [dataclasses.asdict(s) for s in specs],
        "constants": labelling_constants(),
    }


def build_corpus(specs: list[RunSpec], labelling: Labelling = Labelling(), progress=None) -> list[RunRecord]:
    """Train every spec on one CPU thread; ``progress(i, record, seconds)`` is called after each run."""
    torch.set_num_threads(1)
    records = []
    for i, spec in enumerate(specs):
        started = time.perf_counter()
        records.append(train_run(spec, labelling))
        if progress is not None:
            progress(i, records[-1], time.perf_counter() - started)
    return records


def save_corpus(records: list[RunRecord], path: Path, generation_seconds: float) -> None:
    """Write ``records`` to ``path`` (.npz) together with their fingerprint."""
    header = _fingerprint([r.spec for r in records])
    header["generation_seconds"] = generation_seconds
    header["truth"] = [
        {"start_loss": r.start_loss, "drops": r.drops, "first_nonfinite": r.first_nonfinite,
         "divergence_step": r.divergence_step}
        for r in records
    ]
    lengths = [len(r.lr) for r in records]
    checkpoints = [(i, c) for i, r in enumerate(records) for c in r.checkpoints]
    arrays = {name: np.concatenate([getattr(r, name) for r in records]) for name in SERIES}
    arrays["offsets"] = np.concatenate([[0], np.cumsum(lengths)])
    arrays["checkpoint_run"] = np.array([i for i, _ in checkpoints], dtype=np.int64)
    for name in _CHECKPOINT_FIELDS:
        arrays[f"checkpoint_{name}"] = np.array([getattr(c, name) for _, c in checkpoints])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, header=np.array(json.dumps(header)), **arrays)


def load_corpus(path: Path, specs: list[RunSpec]) -> tuple[list[RunRecord], float] | None:
    """The records stored at ``path`` and their generation time, or None when the file is missing or
    was built from other specs or constants."""
    if not path.exists():
        return None
    with np.load(path) as data:
        header = json.loads(str(data["header"]))
        if {k: header.get(k) for k in ("version", "specs", "constants")} != _fingerprint(specs):
            return None
        offsets = data["offsets"]
        owner = data["checkpoint_run"]
        columns = {name: data[f"checkpoint_{name}"] for name in _CHECKPOINT_FIELDS}
        records = []
        for i, (spec, truth) in enumerate(zip(specs, header["truth"])):
            window = slice(offsets[i], offsets[i + 1])
            rows = np.flatnonzero(owner == i)
            checkpoints = [Checkpoint(**{k: columns[k][j].item() for k in _CHECKPOINT_FIELDS}) for j in rows]
            records.append(RunRecord(spec=spec, checkpoints=checkpoints, **truth,
                                     **{name: data[name][window] for name in SERIES}))
    return records, header["generation_seconds"]


def corpus(rebuild: bool = False, progress=None, seed_offset: int = 0) -> tuple[list[RunRecord], float, bool]:
    """The corpus of ``corpus_specs(seed_offset)``: (records, generation seconds, whether it was built
    now), from the cache unless ``rebuild`` or the cache is stale."""
    specs = corpus_specs(seed_offset)
    path = cache_path(seed_offset)
    cached = None if rebuild else load_corpus(path, specs)
    if cached is not None:
        return cached[0], cached[1], False
    started = time.perf_counter()
    records = build_corpus(specs, progress=progress)
    seconds = time.perf_counter() - started
    save_corpus(records, path, seconds)
    return records, seconds, True
