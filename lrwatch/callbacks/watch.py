"""`LRWatch`: measure every optimizer step, log it, and diagnose the schedule online. Changes nothing.

Thin glue between Lightning and the engine: `StepMeter` measures (torch, on the device),
`Analyzer` diagnoses (numpy, incrementally at each flush), the trainer's loggers write.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field

import numpy as np
import torch

from lrwatch import tags
from lrwatch._checks import require_bool, require_int
from lrwatch._lightning import Callback, rank_zero_warn
from lrwatch.callbacks._logging import log_metrics, summary_writers
from lrwatch.callbacks._resume import FitState
from lrwatch.diagnosis import DIVERGING, Analyzer, Diagnosis, Report
from lrwatch.interactions import BASELINE_STEPS, WeightDecayFade, adam_bias_factor, momentum_transients
from lrwatch.measure import SPARE_GROUPS, StepMeter, StepRecords, is_dtensor
from lrwatch.schedule_control import decoupled_weight_decay
from lrwatch.tensorboard import custom_scalars_layout, diagnoses_markdown, write_layout


@dataclass
class _Watched:
    """One hooked optimizer: its meter, tags, analyzer and everything it has logged."""

    name: str
    meter: StepMeter
    lr_tags: list[str]
    series_suffix: str | None
    analyzer: Analyzer
    records: list[StepRecords]
    group_names: list[str]
    adam_betas: tuple[float, float] | None  # Adam-family optimizers: (beta1, beta2) of group 0
    weight_decay: WeightDecayFade | None  # decoupled weight decay (AdamW): the fade rule
    steps_at_last_batch_end: int = 0
    summarized: tuple = ()  # the diagnoses as last written to the text summary
    transients: list[tuple[int, float]] = field(default_factory=list)
    tail: StepRecords | None = None  # the last BASELINE_STEPS measured rows, for transients across chunks


def optimizer_names(optimizers: list[torch.optim.Optimizer]) -> list[str]:
    """Class names, with ``-1``, ``-2`` … on repeats (Lightning's LearningRateMonitor convention)."""
    names, counts = [], {}
    for opt in optimizers:
        base = type(opt).__name__
        names.append(base if base not in counts else f"{base}-{counts[base]}")
        counts[base] = counts.get(base, 0) + 1
    return names


def _lr_tags(name: str, optimizer: torch.optim.Optimizer) -> list[str]:
    groups = optimizer.param_groups
    if len(groups) == 1:
        return [tags.lr_tag(name)]
    return [tags.lr_tag(name, i, g.get("name")) for i, g in enumerate(groups)]


def _group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    return [g.get("name") or f"pg{i}" for i, g in enumerate(optimizer.param_groups)]


def _adam_betas(optimizer: torch.optim.Optimizer) -> tuple[float, float] | None:
    betas = optimizer.param_groups[0].get("betas") if optimizer.param_groups else None
    return (float(betas[0]), float(betas[1])) if betas is not None else None


_SHARDING_STRATEGIES = ("FSDPStrategy", "ModelParallelStrategy")


def _is_lightning_strategy(strategy, names: tuple[str, ...]) -> bool:
    """Whether ``strategy`` is one of Lightning's strategy classes ``names``, or a subclass of one (of
    either package: the callbacks serve trainers of ``pytorch_lightning`` and ``lightning.pytorch``)."""
    return any(cls.__name__ in names and cls.__module__.split(".")[0] in ("pytorch_lightning", "lightning")
               for cls in type(strategy).__mro__)


def _is_sharded(trainer, optimizers) -> bool:
    """Whether the norms must be all-reduced over all ranks before the square root: under FSDP
    (``FSDPStrategy``), FSDP2 (``ModelParallelStrategy``) or a subclass, and under any strategy whose
    optimizers hold DTensor parameters (a custom strategy that shards with ``fully_shard`` or tensor
    parallelism). DTensors say over which mesh dimensions they are replicated as well (hybrid
    sharding, tensor parallelism), and `StepMeter` counts those replicas once; see `_fsdp1_hybrid` for
    the case it cannot see."""
    if trainer.world_size <= 1:
        return False
    dtensors = any(is_dtensor(p) for opt in optimizers for g in opt.param_groups for p in g["params"])
    return dtensors or _is_lightning_strategy(trainer.strategy, _SHARDING_STRATEGIES)


def _fsdp1_hybrid(trainer) -> bool:
    """Whether the strategy is FSDP (v1) with a hybrid sharding strategy: its flat parameters carry no
    placement, so a replica held on every node would be counted once per node."""
    sharding = getattr(trainer.strategy, "sharding_strategy", None)
    return (_is_lightning_strategy(trainer.strategy, ("FSDPStrategy",))
            and "HYBRID" in str(getattr(sharding, "name", sharding)))


def _batch_loss(outputs) -> torch.Tensor | None:
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return loss.detach() if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


TEXT_LATEST = 20
"""Diagnoses (and drops) shown in the ``lrwatch/diagnoses`` text, rewritten whenever they change: the most recent
ones, after a count of all, so that a long run whose diagnoses switch on and off many times does not write a
table that grows with every rewrite (the event file would grow quadratically)."""


def _news(diagnosis: Diagnosis, report: Report, gap: int) -> bool:
    """Whether a diagnosis that just started is worth a warning: ``diverging`` always; another kind at its
    first episode, or when it has been off for at least ``gap`` steps since its last episode, or a drop of the
    schedule (a step schedule's, as read into ``report.schedule.drops``) came in between. A continuous decay
    (exponential, cosine) has no drops: there only the gap counts."""
    if diagnosis.kind == DIVERGING:
        return True
    ends = [d.end for d in report.diagnoses if d.kind == diagnosis.kind and d.end is not None and d.end < diagnosis.start]
    if not ends:
        return True
    last = max(ends)
    return diagnosis.start - last - 1 >= gap or any(last < drop <= diagnosis.start for drop in report.schedule.drops)


def _active_flags(diagnoses: list[Diagnosis], steps: np.ndarray) -> dict[str, np.ndarray]:
    """1.0 where a diagnosis of each kind is active at each step, else 0.0; shape of steps per kind."""
    flags: dict[str, np.ndarray] = {}
    for d in diagnoses:
        active = flags.setdefault(d.kind, np.zeros(len(steps)))
        if d.end is not None and len(steps) and d.end < steps[0]:
            continue  # over before this chunk (a long run keeps many)
        active[(steps >= d.start) & (steps <= (np.inf if d.end is None else d.end))] = 1.0
    return dict(sorted(flags.items()))


class LRWatch(FitState, Callback):
    """Measure lr, displacement and gradient norm at every optimizer step; log and diagnose online.

    Logged tags (optimizer steps on the x-axis, ``trainer.global_step`` after the step):
    ``lrwatch/displacement``, ``lrwatch/grad_norm``, ``lrwatch/loss``, ``lrwatch/lr/<optimizer>[/<group>]``,
    ``lrwatch/diagnosis/<kind>`` and the text ``lrwatch/diagnoses``. With several optimizers the
    series tags carry a ``/<optimizer>`` suffix.

    Args:
        flush_every: measured steps kept on the device between host copies. Data reach the loggers
            and the diagnosis at most one flush after the step, plus a step on a GPU (the price of
            never syncing).
        every_n_steps: measure every k-th optimizer step only (the snapshot is skipped for the rest).
        diagnose: run the incremental `Analyzer` and log diagnoses.
        warn: warn on rank zero when a diagnosis starts (with ``diagnose``; also without ``log``): at the
            first episode of each kind, and at a later one only when the kind has been off for at least
            ``warn_gap`` steps or a drop of a step schedule (``report.schedule.drops``) came since its last
            episode (a diagnosis that switches off and on again says nothing new; every episode is still
            logged and in ``report``). ``diverging`` warns at every episode.
        warn_gap: steps (optimizer steps, as on the x-axis) a kind must have been off before a new
            episode of it warns again.
        log: write to the trainer's loggers (``False``: measure and diagnose only, as `EarlyStepDrop`
            does when it has no LRWatch to share).
        thresholds: keyword thresholds passed to `lrwatch.diagnosis.Analyzer`.
        keep_records: measured steps kept on the host for `records` (oldest chunks dropped first;
            about 50 bytes a step). The logger has them all; the analysis needs none of them.
        group_series: log the per-group series (each group's lr, Adam's step per lr, AdamW's effective
            decay) of at most this many param groups, the first ones (at least 1: the first group's lr is
            the one ``lrwatch report`` reads); None: of all. Each is one scalar a
            step, and TensorBoard's writer takes tens of µs a scalar on the training thread: with AdamW and
            one group per parameter (102 groups, `benchmarks/group_overhead.py`) a small model's mean step
            was 2.63x the bare one's with all of them logged, 1.38x at the default. Every group is still
            measured (in m, the gradient norm and the descent, and in `records`) and checked by
            ``weight_decay_faded``; LRWatch warns once when it leaves groups out.

    After (or during) fit, ``reports`` maps optimizer name to its `Report` and ``report`` is the
    first optimizer's; ``records(name)`` gives every measured step as host arrays.
    """

    def __init__(
        self,
        flush_every: int = 50,
        every_n_steps: int = 1,
        diagnose: bool = True,
        warn: bool = True,
        warn_gap: int = 1000,
        log: bool = True,
        thresholds: dict | None = None,
        keep_records: int = 1_000_000,
        group_series: int | None = 8,
    ) -> None:
        for name, value in (("flush_every", flush_every), ("every_n_steps", every_n_steps), ("keep_records", keep_records),
                            ("warn_gap", warn_gap)):
            require_int(name, value)
        if group_series is not None:
            require_int("group_series", group_series)
        if thresholds is not None and not isinstance(thresholds, dict):
            raise ValueError(f"thresholds must be a dict of Analyzer keyword arguments, got {thresholds!r}")
        self.flush_every = flush_every
        self.every_n_steps = every_n_steps
        self.diagnose = require_bool("diagnose", diagnose)
        self.warn = require_bool("warn", warn)
        self.warn_gap = warn_gap
        # not `self.log`: Lightning sets every callback's `log` to the LightningModule's `log` method at setup
        self.writes_logs = require_bool("log", log)
        self.thresholds = dict(thresholds or {})
        self.keep_records = keep_records
        self.group_series = group_series
        Analyzer(**self.thresholds)  # unknown or invalid thresholds fail here, not mid-training
        self._watched: list[_Watched] = []
        self._loss_sum: torch.Tensor | None = None
        self._loss_batches = 0
        self._announced: set[tuple[str, str, int]] = set()  # (optimizer, kind, start) already warned about
        self._meter_warned: set[tuple[str, str]] = set()  # (optimizer, what) warned about this fit: groups, devices
        self._trainer = None
        self._restored: dict = {}  # per optimizer, what a checkpoint held (`state_dict`), for the fit resuming from it

    # -- results ---------------------------------------------------------------------------------
    @property
    def reports(self) -> dict[str, Report]:
        return {w.name: w.analyzer.report() for w in self._watched}

    @property
    def report(self) -> Report | None:
        """The first optimizer's report (None before fit has started)."""
        return self._watched[0].analyzer.report() if self._watched else None

    def names(self) -> list[str]:
        """Names of the watched optimizers, in ``trainer.optimizers`` order."""
        return [w.name for w in self._watched]

    def transients(self, name: str | None = None) -> list[tuple[int, float]]:
        """(step, m after an lr drop / (γ · m before)) for every drop so far of optimizer ``name``."""
        return list(self._find(name).transients)

    def steps_taken(self, name: str | None = None) -> int:
        """Optimizer steps of ``name`` (default: the first) its meter has counted, measured or not; a resumed fit
        goes on from the checkpoint's count. A step the optimizer skipped (AMP's scaler on inf) is not one."""
        return self._find(name).meter.steps_taken

    def last_step(self) -> int | None:
        """The last step that has reached the analysis (data arrive up to a flush late)."""
        steps = [int(w.records[-1].steps[-1]) for w in self._watched if w.records]
        return min(steps) if steps else None

    def records(self, name: str | None = None) -> StepRecords:
        """Every measured step logged so far for optimizer ``name`` (default: the first)."""
        watched = self._find(name)
        return StepRecords.concatenate(watched.records, watched.meter.n_groups)

    def _find(self, name: str | None) -> _Watched:
        if not self._watched:
            raise ValueError("LRWatch watches no optimizer yet: records and transients exist once a fit has started")
        for w in self._watched:
            if name is None or w.name == name:
                return w
        raise ValueError(f"name must be one of {[w.name for w in self._watched]}, got {name!r}")

    # -- Lightning hooks -------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        resumed = self._fit_starts()
        self._detach()
        self._watched = []
        self._trainer = trainer
        self._meter_warned = set()
        optimizers = list(trainer.optimizers)
        if not optimizers:
            rank_zero_warn("LRWatch: the trainer has no optimizer; nothing will be measured.")
            return
        several, sharded = len(optimizers) > 1, _is_sharded(trainer, optimizers)
        if _fsdp1_hybrid(trainer):
            rank_zero_warn("LRWatch: FSDPStrategy with hybrid sharding replicates each shard across nodes, which its "
                           "flat parameters do not show: displacement, gradient norm and descent count every replica "
                           "(too large by the square root of the number of replicas, the descent by that number). "
                           "Hybrid sharding with FSDP2 (ModelParallelStrategy, fully_shard on a 2-D mesh) is measured "
                           "exactly.")
        for name, opt in zip(optimizer_names(optimizers), optimizers):
            meter = StepMeter(
                opt,
                flush_every=self.flush_every,
                every_n_steps=self.every_n_steps,
                clock=lambda: trainer.global_step + 1,  # read in the post-step hook, before Lightning counts it
                process_group=True if sharded else None,
            )
            if not meter.params:
                rank_zero_warn(f"LRWatch: optimizer {name} has no trainable parameters (yet); nothing is measured "
                               "until some train.")
            logged = self._logged_groups(name, len(opt.param_groups))
            self._watched.append(
                _Watched(name, meter.attach(), _lr_tags(name, opt)[:logged], name if several else None,
                         Analyzer(**self.thresholds), [], _group_names(opt)[:logged], _adam_betas(opt),
                         WeightDecayFade() if decoupled_weight_decay(opt) else None)
            )
        if resumed:
            self._apply_restored()
        else:  # a new fit analyses afresh, so its diagnoses are news again (a resumed one keeps what it warned)
            self._restored, self._announced = {}, set()
        if self.writes_logs:
            self._write_layout(trainer)

    def _logged_groups(self, name: str, n_groups: int) -> int:
        """How many of an optimizer's ``n_groups`` param groups get per-group series (``group_series``),
        warning once per fit and optimizer when that leaves some out."""
        logged = n_groups if self.group_series is None else min(n_groups, self.group_series)
        if self.writes_logs and logged < n_groups and (name, "group_series") not in self._meter_warned:
            self._meter_warned.add((name, "group_series"))
            rank_zero_warn(f"LRWatch: optimizer {name} has {n_groups} param groups; their per-group series (lr, "
                           f"Adam's step per lr, AdamW's effective decay) are logged for the first {logged} only "
                           f"(group_series={self.group_series}: up to three scalars a group and step, tens of µs "
                           "each in TensorBoard). All are measured and in records(); group_series=None logs them all.")
        return logged

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = _batch_loss(outputs)
        if loss is not None:
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_batches += 1
        stepped = False
        for w in self._watched:
            if w.meter.steps_taken != w.steps_at_last_batch_end:
                stepped = True
                w.steps_at_last_batch_end = w.meter.steps_taken
                if self._loss_sum is not None:
                    # Lightning already divides by accumulate_grad_batches under automatic optimization,
                    # so the sum over the micro-batches of a step is their mean loss.
                    scale = 1.0 if pl_module.automatic_optimization else 1.0 / self._loss_batches
                    w.meter.assign_loss(self._loss_sum * scale)
            w.meter.rotate_if_full()
        if stepped:
            self._loss_sum, self._loss_batches = None, 0
        self._publish(trainer, final=False)

    def on_train_end(self, trainer, pl_module) -> None:
        self._publish(trainer, final=True)
        self._detach()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Flush what was measured before an exception or an interrupt ended the fit: its last steps (up to a
        ring's worth, often the most telling, such as a divergence's) would otherwise never be logged."""
        super().on_exception(trainer, pl_module, exception)
        try:
            self._publish(trainer, final=True)
        except Exception as error:  # e.g. a failed device: the exception that ended the fit is the one to see
            rank_zero_warn(f"LRWatch: could not flush the last measured steps after {type(exception).__name__}: "
                           f"{error!r}")

    def teardown(self, trainer, pl_module, stage) -> None:
        super().teardown(trainer, pl_module, stage)
        self._detach()

    def _detach(self) -> None:
        for w in self._watched:
            w.meter.detach()

    # -- logging ---------------------------------------------------------------------------------
    def _publish(self, trainer, final: bool) -> None:
        for w in self._watched:
            chunk = w.meter.finish() if final else w.meter.drain()
            self._warn_about_meter(w)  # also when nothing is measured any more (all measured parameters frozen)
            if not len(chunk):
                continue
            self._follow_added_groups(trainer, w, chunk.lr.shape[1])
            w.records.append(chunk)
            while sum(map(len, w.records)) - len(w.records[0]) >= self.keep_records:
                w.records.pop(0)
            # A chunk with steps that got no loss (e.g. training_step returned None) is analysed without
            # it: an unassigned NaN is not data, and the analyzer would read it as divergence.
            loss = chunk.loss if chunk.loss_assigned.all() else None
            if self.diagnose:
                w.analyzer.update(chunk.displacement, loss=loss, lr=chunk.lr[:, 0], steps=chunk.steps,
                                  grad_norm=chunk.grad_norm, descent=chunk.descent, momentum=chunk.momentum[:, 0])
            new_transients = self._track_interactions(w, chunk)
            if trainer.is_global_zero:
                report = w.analyzer.report() if self.diagnose else None
                if self.writes_logs:
                    self._log_chunk(trainer, w, chunk, loss is not None, report, new_transients)
                if report is not None:
                    self._announce(trainer, w, report, int(chunk.steps[-1]))

    def _follow_added_groups(self, trainer, w: _Watched, n_groups: int) -> None:
        """Per-group series for param groups added mid-fit (e.g. by ``BaseFinetuning``), as far as
        ``group_series`` allows, from the chunk (with ``n_groups`` per-group columns) that first has them."""
        logged = self._logged_groups(w.name, n_groups)
        if logged <= len(w.lr_tags):
            return
        groups = w.meter.optimizer.param_groups
        w.lr_tags += [tags.lr_tag(w.name, i, groups[i].get("name")) for i in range(len(w.lr_tags), logged)]
        w.group_names += _group_names(w.meter.optimizer)[len(w.group_names) : logged]
        if self.writes_logs:
            self._write_layout(trainer)

    def _warn_about_meter(self, w: _Watched) -> None:
        """Warn once per fit and optimizer about param groups without columns and parameters left unmeasured."""
        if w.meter.groups_without_columns and (w.name, "groups") not in self._meter_warned:
            self._meter_warned.add((w.name, "groups"))
            rank_zero_warn(f"LRWatch: {w.meter.groups_without_columns} param group(s) were added to optimizer {w.name} "
                           f"after fit started beyond the {SPARE_GROUPS} the meter keeps columns for: their parameters "
                           "count in the displacement, gradient norm and descent, but their lr is not recorded.")
        if w.meter.params_elsewhere and (w.name, "devices") not in self._meter_warned:
            self._meter_warned.add((w.name, "devices"))
            rank_zero_warn(f"LRWatch: {w.meter.params_elsewhere} trainable parameter(s) of optimizer {w.name} are on "
                           f"another device than the rest ({w.meter.device}); they are not measured.")

    def _track_interactions(self, w: _Watched, chunk: StepRecords) -> list[tuple[int, float]]:
        """Momentum transients at lr drops (across chunk boundaries) and the weight-decay fade rule."""
        joined = StepRecords.concatenate([w.tail, chunk] if w.tail is not None else [chunk], w.meter.n_groups)
        found = [t for t in momentum_transients(joined.steps, joined.displacement, joined.lr[:, 0])
                 if t[0] >= chunk.steps[0]]
        w.transients.extend(found)
        w.tail = StepRecords(*(getattr(joined, f)[-BASELINE_STEPS:] for f in StepRecords.__dataclass_fields__))
        if w.weight_decay is not None:
            w.weight_decay.update(chunk.steps, chunk.lr, chunk.weight_decay)
        return found

    def _log_chunk(self, trainer, w: _Watched, chunk: StepRecords, has_loss: bool, report: Report | None,
                   transients: list[tuple[int, float]]) -> None:
        """One log_metrics call per step, steps increasing. Diagnosis flags are per step too: the
        analysis is causal, so once a chunk is analysed its steps' flags are final."""
        suffix = w.series_suffix
        series = {
            tags.series_tag(tags.DISPLACEMENT, suffix): chunk.displacement,
            tags.series_tag(tags.GRAD_NORM, suffix): chunk.grad_norm,
            tags.series_tag(tags.DESCENT, suffix): chunk.descent,
            tags.series_tag(tags.MOMENTUM, suffix): chunk.momentum[:, 0],
            **dict(zip(w.lr_tags, chunk.lr.T)),
        }
        if has_loss:
            series[tags.series_tag(tags.LOSS, suffix)] = chunk.loss
        if w.adam_betas is not None:
            for g, name in enumerate(w.group_names):
                series[tags.series_tag(f"{tags.ADAM_STEP_PER_LR}/{name}", suffix)] = chunk.group_displacement[:, g] / chunk.lr[:, g]
            if w.series_suffix is None:  # t = the optimizer's own step count = global step with one optimizer
                series[tags.ADAM_BIAS_FACTOR] = adam_bias_factor(chunk.steps, *w.adam_betas)
        if w.weight_decay is not None:
            for g, name in enumerate(w.group_names):
                series[tags.series_tag(f"{tags.EFFECTIVE_DECAY}/{name}", suffix)] = chunk.lr[:, g] * chunk.weight_decay[:, g]
        diagnoses = (report.diagnoses if report is not None else []) + (w.weight_decay.diagnoses if w.weight_decay else [])
        for kind, active in _active_flags(diagnoses, chunk.steps).items():
            series[tags.series_tag(tags.diagnosis_tag(kind), suffix)] = active
        names = list(series)
        sparse = {step: {tags.series_tag(tags.MOMENTUM_TRANSIENT, suffix): ratio} for step, ratio in transients}
        # a param group added mid-chunk has NaN in the steps before it existed: nothing to log there
        absent = {n for n, g in enumerate(chunk.lr.T[: len(w.lr_tags)]) if np.isnan(g).any()}
        gaps = {tag for g in absent for tag in (w.lr_tags[g], *(
            tags.series_tag(f"{base}/{w.group_names[g]}", suffix) for base in (tags.ADAM_STEP_PER_LR, tags.EFFECTIVE_DECAY)))}
        for step, values in zip(chunk.steps.tolist(), np.column_stack(list(series.values())).tolist()):
            metrics = dict(zip(names, values))
            if gaps:
                metrics = {k: v for k, v in metrics.items() if not (k in gaps and math.isnan(v))}
            log_metrics(trainer, {**metrics, **sparse.get(step, {})}, step)

    def _announce(self, trainer, w: _Watched, report: Report, last_step: int) -> None:
        """Warn once per new diagnosis worth it (`_news`); rewrite the text summary (when logging) when the
        diagnoses changed."""
        for d in report.diagnoses:
            if (w.name, d.kind, d.start) not in self._announced:
                self._announced.add((w.name, d.kind, d.start))
                if self.warn and _news(d, report, self.warn_gap):
                    rank_zero_warn(f"LRWatch[{w.name}] {d.kind} from step {d.start}: {d.message}")
        summary = tuple((d.kind, d.start, d.end) for d in report.diagnoses)
        if summary != w.summarized and self.writes_logs:
            w.summarized = summary
            self._write_text(trainer, w, report, last_step)

    def _write_text(self, trainer, w: _Watched, report: Report, step: int) -> None:
        for experiment in summary_writers(trainer):
            experiment.add_text(tags.series_tag(tags.DIAGNOSES_TEXT, w.series_suffix),
                                diagnoses_markdown(report, latest=TEXT_LATEST), step)

    def _write_layout(self, trainer) -> None:
        if not trainer.is_global_zero:
            return
        lr_tags = [t for w in self._watched for t in w.lr_tags]
        suffixes = [w.series_suffix for w in self._watched if w.series_suffix]
        for experiment in summary_writers(trainer):
            write_layout(experiment, custom_scalars_layout(lr_tags, suffixes or None))

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Per optimizer the analyzer's and the weight-decay rule's state, the lr tags in use and the steps
        taken, after flushing the meters (a device sync, at checkpoint time only), so that a resumed run
        diagnoses exactly as an uninterrupted one (with ``every_n_steps`` measuring the same steps), and logs
        each group's lr under the same tag (a group added mid-fit is there from the start of the resumed
        fit). The logged series themselves are in the logger."""
        if self._trainer is not None:
            self._publish(self._trainer, final=True)
        return {
            "watched": {w.name: pickle.dumps({"analyzer": w.analyzer, "weight_decay": w.weight_decay,
                                              "lr_tags": w.lr_tags, "group_names": w.group_names,
                                              "steps_taken": w.meter.steps_taken})
                        for w in self._watched},
            "announced": sorted(self._announced),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        # checkpoints written before the lr tags and weight-decay rules were kept hold the analyzers alone
        self._restored = {name: pickle.loads(blob) for name, blob in state_dict.get("watched", {}).items()} or {
            name: {"analyzer": pickle.loads(blob)} for name, blob in state_dict.get("analyzers", {}).items()}
        self._announced = {tuple(a) for a in state_dict.get("announced", [])}
        if self._in_fit:  # restored after on_fit_start (FSDP, ModelParallel, DeepSpeed): the watched exist now
            self._apply_restored()
            if self.writes_logs and self._trainer is not None:
                self._write_layout(self._trainer)
        self._state_loaded()

    def _apply_restored(self) -> None:
        """Give the optimizers a checkpoint had its analyzers, weight-decay rules and lr tags (the groups
        it did not know keep the tags given at fit start)."""
        for w in self._watched:
            saved = self._restored.get(w.name)
            if saved is None:
                continue
            w.analyzer = saved["analyzer"]
            if saved.get("weight_decay") is not None and w.weight_decay is not None:
                w.weight_decay = saved["weight_decay"]
            for attribute in ("lr_tags", "group_names"):
                if attribute in saved:
                    known = saved[attribute][: len(getattr(w, attribute))]
                    setattr(w, attribute, known + getattr(w, attribute)[len(known):])
            if "steps_taken" in saved:  # every_n_steps=k measures the same steps as the uninterrupted run
                w.meter.steps_taken = w.steps_at_last_batch_end = saved["steps_taken"]
        self._restored = {}
