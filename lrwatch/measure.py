"""Exact per-step measurement at the optimizer's own step, on the device, without host syncs.

`StepMeter` hooks one ``torch.optim.Optimizer`` with ``register_step_pre_hook`` /
``register_step_post_hook``. Hooking the optimizer rather than batch hooks means the real update is
measured exactly once whatever drives it: gradient accumulation, AMP steps skipped by the grad
scaler (the hooks do not fire), manual optimization, several optimizers.

Per measured step it records, into a device ring buffer:

- ``displacement`` m_t = ||w_t − w_{t−1}||₂ over every trainable parameter of the optimizer,
  computed from a snapshot taken just before the step (parameters the step did not update
  contribute exactly zero, so this equals the norm over the updated ones);
- ``grad_norm``: ||g||₂ over the gradients present when the step ran (after unscaling and
  clipping, i.e. the gradient the update used); a sparse gradient (``nn.Embedding(sparse=True)``)
  is coalesced first, which on CUDA costs one sync per sparse gradient (see `_coalesced`);
- ``lr`` of every param group (the lr the update used), and its ``weight_decay`` (host side);
- ``group_displacement``: m_t restricted to each param group's parameters;
- ``loss``: whatever the adapter assigns with `assign_loss` right after the step (NaN, and
  ``loss_assigned`` False, when none was);
- ``descent`` −⟨w_t − w_{t−1}, g⟩ over the parameters that have a gradient, in loss units: the
  first-order decrease of the minibatch loss the update promises (lr·||g||² for plain SGD; negative
  when the update goes uphill). It costs no memory and no sync: by polarization,
  ⟨s, g⟩ = (||s + c·g||² − ||s||² − c²||g||²) / 2c with s = w_{t−1} − w_t, adding c·g into the
  snapshot in place (it is free once its norms are taken) and taking the squared norms once more;
- ``momentum`` β of every param group (host side, see `momentum_coefficient`).

The polarization scale c changes only the precision of ``descent``, not its value: the rounding
error is about ε·||s||·||g||·(k + 1/k) with k = c·||g|| / ||s|| and ε the precision of the norms
(float32 for float32 parameters), so c ≈ ||s|| / ||g|| is best. It is a host-side float, so choosing
it needs no sync: each time a chunk reaches the host, the median of displacement / grad_norm over that
chunk's rows where both are finite and positive (unchanged when there are none). Until the first such
chunk, no scale is known (for Adam, ||s|| / ||g|| can be 1e6 times the lr, which would leave a 10 %
error), so the descent is taken exactly, as per-tensor dot products: two small kernels per tensor
for those first steps instead of two fused passes.

The ring is copied to pinned host memory with a non-blocking copy when it is full: by
`rotate_if_full` once the adapter has assigned the last step's loss, else at the next measured
step's pre-hook. `drain` hands over the chunks whose copy
has completed, checked with ``Event.query()``, so it never waits; a copy not yet read when the ring
fills again is waited for then (it was issued a whole ring earlier, so it has long finished).
`finish` collects everything (it does synchronise, and is meant for the end of training).

Memory: one snapshot of the trainable parameters (float32 for low-precision parameters, so that the
difference is exact), plus ``flush_every × (4 + 2·group_capacity)`` floats on the device. Transients: adding a
low-precision (bf16/fp16) gradient into its float32 snapshot may cast that gradient to a float32 temporary
first (on CPU it does; CUDA kernels cast elementwise, not checked here), and a sparse gradient is coalesced
(a copy of its indices and values) and, before the polarization scale is known, its dot product gathers the
snapshot's matching entries (its values' size); dense float32/float64 parameters allocate nothing.

The parameters are those of the optimizer's param groups when the meter is built, and again whenever
the groups change (a group added, e.g. by Lightning's ``BaseFinetuning`` unfreezing a layer, or a
parameter's ``requires_grad`` switched): checked at each measured step's pre-hook from the groups'
sizes and which parameters train (a Python pass over the parameters, like the snapshot's), the snapshot
is then re-allocated once, and the small index tensors are built by fill kernels (no host-to-device
copy). The ring has per-group columns for ``SPARE_GROUPS`` more groups than the optimizer had when the
meter was built: a group added later gets its lr, displacement, weight decay and β from its first
measured step (NaN in the rows before it existed, and in chunks from before it was added, which are
narrower: `StepRecords.concatenate` pads them). Groups beyond that count in ``displacement``,
``grad_norm`` and ``descent`` but have no columns (``groups_without_columns`` says how many).
Parameters on another device than the meter's (that of its first trainable parameter) are left out and
counted in ``params_elsewhere``.

Under sharded data parallelism (FSDP) each rank holds a shard: pass ``process_group`` (or ``True``
for the default group) and the squared norms and the descent (a sum over shards too) are
all-reduced (sum) in one collective, before the square roots. A DTensor parameter (FSDP2,
``ModelParallelStrategy``) that is also replicated over some of its mesh's dimensions — hybrid
sharding (HSDP), or a tensor-parallel layer's replicated bias — is held by R ranks at once (R the
product of those dimensions' sizes), so each rank's share of its squares and descent is weighted
1/R before the sum: every element counts once. Under replicated data parallelism (DDP) every rank
measures the same update and no reduction is needed.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from lrwatch._checks import require_int

DISPLACEMENT, GRAD_NORM, LOSS, DESCENT = 0, 1, 2, 3
_FIRST_LR_COLUMN = 4
SPARE_GROUPS = 8
"""Param groups that may be added to the optimizer mid-fit (Lightning's ``BaseFinetuning`` adds one per
unfrozen module) and still get their own columns (lr, displacement, weight decay, β); later ones are
measured without."""


@dataclass(frozen=True)
class StepRecords:
    """Host copies of measured steps, one row per step, in step order.

    Attributes:
        steps: int64 (n,), the step label of each row (the clock's value after the step).
        displacement: float64 (n,), m_t in parameter units.
        grad_norm: float64 (n,), gradient L2 norm.
        loss: float64 (n,), assigned loss, NaN where none was assigned.
        descent: float64 (n,), −⟨w_t − w_{t−1}, g_t⟩ in loss units (the first-order decrease of the
            minibatch loss the update promises; negative when it goes uphill).
        lr: float64 (n, n_groups), lr of every param group (every per-group column is NaN in the rows
            from before its group was added to the optimizer).
        group_displacement: float64 (n, n_groups), displacement of each group's parameters.
        weight_decay: float64 (n, n_groups), each group's ``weight_decay`` (0 where it has none).
        momentum: float64 (n, n_groups), each group's β (`momentum_coefficient`; dimensionless, NaN
            where it is not a plain number).
        loss_assigned: bool (n,), whether a loss was assigned (a NaN loss that was assigned is data).
    """

    steps: np.ndarray
    displacement: np.ndarray
    grad_norm: np.ndarray
    loss: np.ndarray
    descent: np.ndarray
    lr: np.ndarray
    group_displacement: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    loss_assigned: np.ndarray

    @staticmethod
    def concatenate(chunks: list["StepRecords"], n_groups: int) -> "StepRecords":
        """Join chunks in order; an empty list gives empty arrays of the right shapes (``n_groups`` columns).
        Chunks from before a param group was added have fewer per-group columns: they are padded with NaN."""
        if not chunks:
            empty = np.empty(0)
            per_group = np.empty((0, n_groups))
            return StepRecords(np.empty(0, np.int64), empty, empty, empty, empty, per_group, per_group, per_group,
                               per_group, np.empty(0, bool))
        width = max(c.lr.shape[1] for c in chunks)

        def joined(name: str) -> np.ndarray:
            parts = [getattr(c, name) for c in chunks]
            if parts[0].ndim == 2:
                parts = [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=np.nan) for a in parts]
            return np.concatenate(parts)

        return StepRecords(*(joined(f.name) for f in fields(StepRecords)))

    def __len__(self) -> int:
        return len(self.steps)


def momentum_coefficient(group: dict) -> float:
    """β of a param group's momentum average: ``betas[0]`` when the group has ``betas`` (Adam, AdamW,
    NAdam, RAdam, Adamax, ...), else ``momentum`` (SGD, RMSprop), else 0.0 (no momentum: Adagrad, ...).

    This is the β by which the excess-loss estimate descent / (4(1 − β)) is amplified. Anything that is
    not a plain real number (a tensor: reading it would sync with the device; a custom optimizer's own
    type) gives NaN, "unknown": this runs inside ``optimizer.step`` and must not raise there. The
    analysis then leaves the noise floor undecided for that group rather than guess a β.
    """
    if not isinstance(group, dict):
        raise ValueError(f"group must be a dict (an optimizer param group), got {group!r}")
    if "betas" in group:
        betas = group["betas"]
        beta = betas[0] if isinstance(betas, (tuple, list)) and betas else None
    elif "momentum" in group:
        beta = group["momentum"]
    else:
        return 0.0
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        return float("nan")
    return float(beta)


def _add_scaled_in_place(targets: list[torch.Tensor], others: list[torch.Tensor], scale: float) -> None:
    """``targets[i] += scale · others[i]`` in place. ``_foreach_add_`` accepts mixed dtypes (a bf16
    gradient into its float32 snapshot) and sparse others, but torch's fused kernels need one dtype per pair of
    lists and dense tensors, and fall back to a per-tensor loop otherwise: dense pairs of one dtype go in one
    call, the rest in another."""
    for fused in (True, False):
        pairs = [(t, o) for t, o in zip(targets, others) if (t.dtype == o.dtype and not o.is_sparse) == fused]
        if pairs:
            torch._foreach_add_([t for t, _ in pairs], [o for _, o in pairs], alpha=scale)


def _coalesced(grad: torch.Tensor) -> torch.Tensor:
    """A sparse (COO) gradient, as ``nn.Embedding(sparse=True)`` gives, with its repeated indices summed
    (its squared norm is then that of its values); a dense one as it is. Coalescing sorts the indices: on
    CUDA it waits for the device, as SparseAdam's own step does, so each sparse gradient costs one sync."""
    return grad.coalesce() if grad.is_sparse else grad


def _dot(dense: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """⟨dense, other⟩ for a dense tensor and a dense or coalesced sparse one of the same shape, in
    ``dense``'s dtype (0-d)."""
    if other.is_sparse:
        return (dense[tuple(other.indices())] * other.values().to(dense.dtype)).sum()
    return torch.dot(dense.reshape(-1), other.reshape(-1).to(dense.dtype))


def _layout(optimizer: torch.optim.Optimizer) -> tuple:
    """What decides which parameters are measured: each param group's size, and which parameters train."""
    groups = optimizer.param_groups
    return tuple(len(g["params"]) for g in groups), tuple(id(p) for g in groups for p in g["params"] if p.requires_grad)


def _runs(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` as a 1-D tensor on ``device``, built from fill kernels over its runs of equal values instead
    of a copy from host memory (which on CUDA would wait for the work queued on the stream)."""
    runs: list[list] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    parts = [torch.full((count,), value, dtype=dtype, device=device) for value, count in runs]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=device)


def _trainable_params(optimizer: torch.optim.Optimizer) -> tuple[list[torch.Tensor], list[int]]:
    """Trainable parameters of the optimizer, each once, in param-group order, and each one's group."""
    seen: set[int] = set()
    params, groups = [], []
    for index, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
                groups.append(index)
    return params, groups


def _local(t: torch.Tensor) -> torch.Tensor:
    """The locally held shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def is_dtensor(t: torch.Tensor) -> bool:
    """Whether ``t`` is a DTensor (FSDP2, tensor parallelism): it has placements on a device mesh."""
    return getattr(t, "placements", None) is not None and getattr(t, "device_mesh", None) is not None


def replicas(t: torch.Tensor) -> int:
    """How many ranks hold each element of ``t``'s local shard: for a DTensor, the product of the sizes
    of the mesh dimensions it is replicated over (1 when it is sharded over all of them, as under plain
    FSDP2); 1 for any other tensor."""
    if not is_dtensor(t):
        return 1
    count = 1
    for dim, placement in enumerate(t.placements):
        if placement.is_replicate():
            count *= t.device_mesh.size(dim)
    return count


class StepMeter:
    """Measures every (or every k-th) step of one optimizer; see the module docstring.

    Args:
        optimizer: the torch optimizer to hook (not a LightningOptimizer wrapper).
        flush_every: ring capacity in measured steps; the host copy is started when it is full.
        every_n_steps: measure only steps whose 0-based index is a multiple of this; the snapshot is
            taken only before measured steps, so the others cost nothing.
        clock: returns the label of the step that just completed (e.g. ``trainer.global_step + 1``);
            by default the meter's own 1-based count of this optimizer's steps.
        process_group: ``None`` for replicated parameters; a process group, or ``True`` for the
            default one, when each rank holds a shard and norms must be all-reduced.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        flush_every: int = 50,
        every_n_steps: int = 1,
        clock: Callable[[], int] | None = None,
        process_group: object | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        require_int("flush_every", flush_every)
        require_int("every_n_steps", every_n_steps)
        self.optimizer = optimizer
        self.flush_every = flush_every
        self.every_n_steps = every_n_steps
        self.group_capacity = len(optimizer.param_groups) + SPARE_GROUPS
        self.n_groups = 0  # param groups with columns so far: set by the binding
        self._clock = clock
        self._group = None if process_group is None or process_group is False else (
            dist.group.WORLD if process_group is True else process_group
        )

        self._first_group_column = _FIRST_LR_COLUMN + self.group_capacity
        self._ring_steps = np.zeros(flush_every, np.int64)
        self._ring_loss_assigned = np.zeros(flush_every, bool)
        # NaN until a group exists: a group's columns are written at every measured step from its first on
        self._ring_weight_decay = np.full((flush_every, self.group_capacity), np.nan)
        self._ring_momentum = np.full((flush_every, self.group_capacity), np.nan)
        self._scale: float | None = None  # polarization scale c, see the module docstring
        self._pending: tuple | None = None  # rows and the host columns of the copy in flight
        self._completed: list[StepRecords] = []
        self._fill = 0  # rows of the ring written since the last rotation
        self.steps_taken = 0  # every step of this optimizer, measured or not
        self.steps_measured = 0
        self._measured_at = -1  # steps_taken right after the latest measured step
        self._armed = False
        self._handles: list = []
        self.device: torch.device | None = None  # where the ring lives: chosen by the first binding
        self._bind_params()

    def _allocate(self, device: torch.device) -> None:
        """The device ring and its pinned host copy, on ``device``."""
        self.device = device
        # float64 accumulation wherever the backend has it (MPS does not).
        self._acc_dtype = torch.float32 if device.type == "mps" else torch.float64
        n_columns = self._first_group_column + self.group_capacity
        self._ring = torch.full((self.flush_every, n_columns), float("nan"), dtype=self._acc_dtype, device=device)
        pinned = device.type == "cuda"
        self._host = torch.empty((self.flush_every, n_columns), dtype=self._acc_dtype, pin_memory=pinned)
        self._copy_done = torch.cuda.Event() if pinned else None

    def _bind_params(self) -> None:
        """(Re)build what depends on which parameters are measured: the parameter list (those on the meter's
        device; ``params_elsewhere`` counts the others), its snapshot, the groups with columns (``n_groups``,
        which only grows), each parameter's group bin (groups beyond ``group_capacity`` share one extra bin)
        and replica shares. The ring goes on the device of the first
        trainable parameter (the CPU while there is none), and a meter that has measured nothing yet follows it
        there (one built while every parameter was frozen)."""
        self._layout = _layout(self.optimizer)
        trainable, param_groups = _trainable_params(self.optimizer)
        devices = [_local(p).device for p in trainable]
        if self.device is None or (trainable and self.device not in devices and self.steps_measured == 0):
            self._allocate(devices[0] if trainable else torch.device("cpu"))
        here = [i for i, d in enumerate(devices) if d == self.device]
        self.params_elsewhere = len(trainable) - len(here)
        self.params = [trainable[i] for i in here]
        self._snapshots = []  # the old snapshot is freed before the new one is allocated (a re-bind at an unfreeze)
        self._snapshots = [
            torch.empty_like(p, dtype=p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32)
            for p in map(_local, self.params)
        ]
        self.n_groups = max(self.n_groups, min(len(self.optimizer.param_groups), self.group_capacity))
        # built by fill kernels, not uploaded from the host (a blocking copy on CUDA): this may run in the step path
        self._param_group = _runs([min(param_groups[i], self.group_capacity) for i in here], torch.long, self.device)
        counts = [replicas(p) for p in self.params] if self._group is not None else []
        # each rank's share of a replicated shard's sums (None: every element is held once)
        self._share = None if all(c == 1 for c in counts) else _runs([1.0 / c for c in counts], self._acc_dtype,
                                                                       self.device)

    @property
    def groups_without_columns(self) -> int:
        """Param groups added beyond ``group_capacity``: measured (in m, the gradient norm and the descent),
        without columns of their own."""
        return max(len(self.optimizer.param_groups) - self.group_capacity, 0)

    # -- hooks -----------------------------------------------------------------------------------
    def attach(self) -> "StepMeter":
        """Register the step hooks; idempotent."""
        if not self._handles:
            self._handles = [
                self.optimizer.register_step_pre_hook(self._before_step),
                self.optimizer.register_step_post_hook(self._after_step),
            ]
        return self

    def detach(self) -> None:
        """Remove the step hooks (the collected data stays readable)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _before_step(self, optimizer, args, kwargs) -> None:
        due = self.steps_taken % self.every_n_steps == 0
        if due and _layout(self.optimizer) != self._layout:
            self._bind_params()
        self._armed = bool(self.params) and due
        if not self._armed:
            return
        if self._fill == self.flush_every:
            self._rotate()
        torch._foreach_copy_(self._snapshots, [_local(p.detach()) for p in self.params])

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.steps_taken += 1
        if not self._armed:
            return
        self._armed = False
        torch._foreach_sub_(self._snapshots, [_local(p.detach()) for p in self.params])  # now w_{t-1} - w_t, in place
        snapshot_squares = self._squares(self._snapshots)
        with_grad = [i for i, p in enumerate(self.params) if p.grad is not None]
        grads = [_coalesced(_local(self.params[i].grad.detach())) for i in with_grad]
        grad_squares = self._squares(grads)
        descents = self._descents(with_grad, grads, snapshot_squares, grad_squares)  # overwrites the snapshots
        if self._share is not None:  # replicated shards: each rank's share, so that the sum counts them once
            snapshot_squares = snapshot_squares * self._share
            grad_share = self._entries(self._share, with_grad)
            grad_squares, descents = grad_squares * grad_share, descents * grad_share
        group_squares = torch.zeros(self.group_capacity + 1, dtype=self._acc_dtype, device=self._ring.device)
        group_squares.index_add_(0, self._param_group, snapshot_squares)  # the last bin: groups beyond capacity
        n = self.n_groups
        sums = torch.cat([group_squares.sum().view(1), grad_squares.sum().view(1), descents.sum().view(1),
                          group_squares[:n]])
        if self._group is not None:  # every entry is a sum over shards: one collective for all
            dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=self._group)
        row = self._ring[self._fill]
        row[DISPLACEMENT : GRAD_NORM + 1].copy_(sums[:2].sqrt())
        row[DESCENT].copy_(sums[2])
        row[self._first_group_column : self._first_group_column + n].copy_(sums[3:].sqrt())
        row[LOSS].fill_(float("nan"))
        groups = self.optimizer.param_groups
        for j, group in enumerate(groups[:n]):
            row[_FIRST_LR_COLUMN + j].fill_(group["lr"])  # a float or a 0-d tensor: no host sync either way
            self._ring_weight_decay[self._fill, j] = group.get("weight_decay", 0.0)
            self._ring_momentum[self._fill, j] = momentum_coefficient(group)
        if len(groups) < n:  # groups removed from the optimizer: NaN, not the values a ring cycle ago
            for first in (_FIRST_LR_COLUMN, self._first_group_column):
                row[first + len(groups) : first + n].fill_(float("nan"))
            self._ring_weight_decay[self._fill, len(groups) : n] = np.nan
            self._ring_momentum[self._fill, len(groups) : n] = np.nan
        self.steps_measured += 1
        self._ring_steps[self._fill] = self._clock() if self._clock is not None else self.steps_taken
        self._ring_loss_assigned[self._fill] = False
        self._measured_at = self.steps_taken
        self._fill += 1

    def _descents(self, with_grad: list[int], grads: list[torch.Tensor], snapshot_squares: torch.Tensor,
                  grad_squares: torch.Tensor) -> torch.Tensor:
        """⟨s_i, g_i⟩ = −⟨w_t − w_{t−1}, g⟩ restricted to each parameter of ``with_grad`` (indices into
        ``self.params``, ``grads`` their local gradients), shape (len(with_grad),) in the accumulation
        dtype, by polarization from squared norms: ⟨s_i, g_i⟩ = (‖s_i + c·g_i‖² − ‖s_i‖² − c²‖g_i‖²) / 2c.
        Adds c·g into the snapshots in place: they are free once their norms are taken (the next
        measured pre-hook copies them afresh). Before a scale c is known, exact dot products instead."""
        if not grads:
            return torch.zeros(0, dtype=self._acc_dtype, device=self._ring.device)
        snapshots = [self._snapshots[i] for i in with_grad]
        if self._scale is None:
            return torch.stack([_dot(s, g) for s, g in zip(snapshots, grads)]).to(self._acc_dtype)
        c = self._scale
        own_squares = self._entries(snapshot_squares, with_grad)
        _add_scaled_in_place(snapshots, grads, c)
        return (self._squares(snapshots) - own_squares - c * c * grad_squares) / (2 * c)

    def _entries(self, per_param: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """The entries ``indices`` of a per-parameter tensor (shape (len(self.params),)): the tensor itself
        when they are all of them; else stacked from int-indexed views, so no index tensor is uploaded
        (an empty view when there are none: a step where no parameter has a gradient)."""
        if len(indices) == len(self.params):
            return per_param
        return torch.stack([per_param[i] for i in indices]) if indices else per_param[:0]

    def _squares(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """‖x‖² of each tensor, shape (len(tensors),): norms in (at least) float32, squared in the
        accumulation dtype. Asking ``_foreach_norm`` for float64 directly costs ~15x on CPU."""
        if not tensors:
            return torch.zeros(0, dtype=self._acc_dtype, device=self._ring.device)
        tensors = [t.values() if t.is_sparse else t for t in tensors]  # coalesced: each element once
        low = [t.dtype not in (torch.float32, torch.float64) for t in tensors]
        if not any(low):
            norms = torch._foreach_norm(tensors, 2)
        else:  # low-precision norms in float32; _foreach_norm refuses to narrow float64 ones, so apart
            low_norms = iter(torch._foreach_norm([t for t, is_low in zip(tensors, low) if is_low], 2,
                                                 dtype=torch.float32))
            wide = [t for t, is_low in zip(tensors, low) if not is_low]
            wide_norms = iter(torch._foreach_norm(wide, 2) if wide else [])
            norms = [next(low_norms) if is_low else next(wide_norms) for is_low in low]
        return torch.stack(norms).to(self._acc_dtype).square()  # stack promotes mixed float32/float64 norms

    # -- loss ------------------------------------------------------------------------------------
    def assign_loss(self, loss: torch.Tensor | float) -> None:
        """Record the training loss of the step just taken (device copy, no sync).

        The adapter calls this after the step, with the mean loss of the micro-batches that fed it.
        Does nothing when the step just taken was not measured (``every_n_steps`` > 1).
        """
        if self._fill == 0 or self._measured_at != self.steps_taken:
            return
        value = loss.detach() if isinstance(loss, torch.Tensor) else loss
        self._ring[self._fill - 1, LOSS].fill_(value)
        self._ring_loss_assigned[self._fill - 1] = True

    # -- host side -------------------------------------------------------------------------------
    def rotate_if_full(self) -> None:
        """Start the host copy now if the ring is full. The adapter calls this right after assigning
        the last step's loss, so a full ring reaches the host a step earlier than the next pre-hook
        would send it (on CPU, at once). Never waits."""
        if self._fill == self.flush_every:
            self._rotate()

    def _rotate(self) -> None:
        """Start the host copy of the full ring and collect the previous copy (long finished)."""
        self._collect_pending()
        self._host.copy_(self._ring, non_blocking=True)
        if self._copy_done is not None:
            self._copy_done.record()
        self._pending = (self._fill, *self._host_columns())
        self._fill = 0

    def _collect_pending(self) -> None:
        if self._pending is None:
            return
        if self._copy_done is not None:
            self._copy_done.synchronize()
        rows, *host_columns = self._pending
        self._complete(self._host[:rows].double().numpy().copy(), *host_columns)
        self._pending = None

    def _host_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the host-side columns of the filled rows: steps, loss_assigned, weight_decay, momentum."""
        rows = slice(0, self._fill)
        return (self._ring_steps[rows].copy(), self._ring_loss_assigned[rows].copy(),
                self._ring_weight_decay[rows].copy(), self._ring_momentum[rows].copy())

    def _complete(self, values: np.ndarray, steps: np.ndarray, loss_assigned: np.ndarray, weight_decay: np.ndarray,
                  momentum: np.ndarray) -> None:
        """File a chunk that reached the host, and re-aim the polarization scale at its median ‖s‖/‖g‖."""
        chunk = StepRecords(
            steps=steps,
            displacement=values[:, DISPLACEMENT],
            grad_norm=values[:, GRAD_NORM],
            loss=values[:, LOSS],
            descent=values[:, DESCENT],
            lr=values[:, _FIRST_LR_COLUMN : _FIRST_LR_COLUMN + self.n_groups],
            group_displacement=values[:, self._first_group_column : self._first_group_column + self.n_groups],
            weight_decay=weight_decay[:, : self.n_groups],
            momentum=momentum[:, : self.n_groups],
            loss_assigned=loss_assigned,
        )
        self._completed.append(chunk)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = chunk.displacement / chunk.grad_norm
        usable = ratios[np.isfinite(ratios) & (ratios > 0)]
        if usable.size:
            self._scale = float(np.median(usable))

    def drain(self) -> StepRecords:
        """The steps whose host copy has completed, handed over once each. Never waits: a copy
        still in flight (``Event.query()`` is False) is left for a later call."""
        if self._pending is not None and (self._copy_done is None or self._copy_done.query()):
            self._collect_pending()
        chunks, self._completed = self._completed, []
        return StepRecords.concatenate(chunks, self.n_groups)

    def finish(self) -> StepRecords:
        """Everything not yet drained, including the partly filled ring. Synchronises: call it
        at the end of training, not in the step loop."""
        self._collect_pending()
        if self._fill:
            self._complete(self._ring[: self._fill].cpu().double().numpy(), *self._host_columns())
            self._fill = 0
        return self.drain()
