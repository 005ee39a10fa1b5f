"""StepMeter on plain torch loops: exactness against an independent flat-vector computation, no host
sync in the step path, low precision, non-finite values, sharded all-reduce on two real processes,
descent and momentum columns."""

from __future__ import annotations

import os
import socket
import traceback

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

import lrwatch.measure
from lrwatch.measure import StepMeter, momentum_coefficient, replicas


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)


def _flat(model):
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def _train(model, optimizer, steps, meter=None, poison_at=None):
    """Plain loop; returns the independent float64 reference per step, columns (displacement, grad norm,
    lr of group 0, loss, descent −⟨Δw, g⟩)."""
    generator = torch.Generator().manual_seed(1)
    reference = []
    for t in range(steps):
        x = torch.randn(32, 6, generator=generator, dtype=next(model.parameters()).dtype)
        loss = model(x).square().mean()
        if poison_at is not None and t >= poison_at:
            loss = loss * float("nan")
        optimizer.zero_grad()
        loss.backward()
        before = _flat(model)
        grad = torch.cat([p.grad.double().flatten() for p in model.parameters()])
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        if meter is not None:
            meter.assign_loss(loss.detach())
        delta = _flat(model) - before
        reference.append((delta.norm().item(), grad.norm().item(), lr, loss.item(), -delta.dot(grad).item()))
    return np.array(reference)


def _assert_descent_matches(descent, reference, tolerance=1e-5):
    """descent against the reference's −⟨Δw, g⟩, to ``tolerance``·‖Δw‖·‖g‖: the meter takes it as a difference
    of float32 squared norms (polarization), whose rounding error scales with ‖Δw‖·‖g‖, not with the descent,
    which may be far smaller when the update is nearly orthogonal to the gradient."""
    error = np.abs(np.asarray(descent) - reference[:, 4]) / (reference[:, 0] * reference[:, 1])
    assert error.max() < tolerance, (error.max(), descent, reference[:, 4])


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
        lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda m: torch.optim.SGD([{"params": m[0].parameters(), "momentum": 0.9},
                                   {"params": m[2].parameters(), "lr": 0.03, "momentum": 0.5}], lr=0.1),
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
        lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1, foreach=False),
    ],
    ids=["sgd", "nesterov_wd", "momentum_two_groups", "adam", "adamw_loop"],
)
def test_matches_independent_flat_vector_computation(make_optimizer):
    model = _model()
    optimizer = make_optimizer(model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    meter = StepMeter(optimizer, flush_every=5).attach()
    reference = []
    for _ in range(3):  # interleave the scheduler so the lr changes between steps
        reference.append(_train(model, optimizer, 4, meter))
        scheduler.step()
    reference = np.concatenate(reference)
    assert meter._scale is not None  # steps 1-10 took the exact dot products, 11-12 the polarization
    records = meter.finish()
    np.testing.assert_array_equal(records.steps, np.arange(1, 13))
    np.testing.assert_allclose(records.displacement, reference[:, 0], rtol=1e-5)
    np.testing.assert_allclose(records.grad_norm, reference[:, 1], rtol=1e-5)
    np.testing.assert_allclose(records.lr[:, 0], reference[:, 2], rtol=1e-12)
    np.testing.assert_allclose(records.loss, reference[:, 3], rtol=1e-6)
    _assert_descent_matches(records.descent, reference)


def test_parameters_that_join_mid_run_are_measured_from_their_first_step():
    # the head trains from the start, its weight frozen until step 2; the body's group is added at step 5
    # (what Lightning's BaseFinetuning does when it unfreezes a layer)
    model = _model()
    body, head = model[0], model[2]
    head.weight.requires_grad_(False)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    meter = StepMeter(optimizer, flush_every=3).attach()
    generator = torch.Generator().manual_seed(1)
    expected, head_only, bias_only, body_only = [], [], [], []
    for t in range(9):
        if t == 2:
            head.weight.requires_grad_(True)
        if t == 5:
            optimizer.add_param_group({"params": body.parameters(), "lr": 1.0})
        trained = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        optimizer.zero_grad()
        model(torch.randn(32, 6, generator=generator)).square().mean().backward()
        before = [p.detach().double().clone() for p in trained]
        grad = torch.cat([p.grad.double().flatten() for p in trained])
        optimizer.step()
        deltas = [(p, (p.detach().double() - b).flatten()) for p, b in zip(trained, before)]
        delta = torch.cat([d for _, d in deltas])
        expected.append((delta.norm().item(), grad.norm().item(), -delta.dot(grad).item()))
        head_only.append(torch.cat([d for p, d in deltas if any(p is q for q in head.parameters())]).norm().item())
        bias_only.append(torch.cat([d for p, d in deltas if p is head.bias]).norm().item())
        body_only.append(torch.cat([torch.zeros(0, dtype=torch.float64), *(
            d for p, d in deltas if any(p is q for q in body.parameters()))]).norm().item())
    records = meter.finish()
    expected = np.array(expected)
    np.testing.assert_allclose(records.displacement, expected[:, 0], rtol=1e-5)
    np.testing.assert_allclose(records.grad_norm, expected[:, 1], rtol=1e-5)
    np.testing.assert_allclose(records.descent, expected[:, 2], rtol=1e-4)
    np.testing.assert_allclose(records.group_displacement[:, 0], head_only, rtol=1e-5)  # the group it was built with
    # the added group has its columns from its first step, NaN before (chunks of 3: the step-5 add is mid-chunk)
    assert records.lr.shape == (9, 2) and meter.groups_without_columns == 0
    np.testing.assert_array_equal(records.lr[:, 1], [np.nan] * 5 + [1.0] * 4)
    np.testing.assert_array_equal(records.weight_decay[:5, 1], np.nan)
    np.testing.assert_allclose(records.group_displacement[5:, 1], body_only[5:], rtol=1e-5)
    assert np.isnan(records.group_displacement[:5, 1]).all()
    # what measuring only the parameters the meter was built with would give is clearly less
    assert np.all(records.displacement[2:5] > 1.05 * np.array(bias_only[2:5]))
    assert np.all(records.displacement[5:] > 1.05 * np.array(head_only[5:]))


def test_groups_added_beyond_the_spare_columns_are_measured_without_columns():
    model = _model()
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)
    meter = StepMeter(optimizer, flush_every=4).attach()
    _train(model, optimizer, 2)
    extra = [torch.nn.Parameter(torch.zeros(3)) for _ in range(lrwatch.measure.SPARE_GROUPS + 1)]
    for i, p in enumerate(extra):
        optimizer.add_param_group({"params": [p], "lr": 0.01 * (i + 1)})
    optimizer.add_param_group({"params": model[2].parameters(), "lr": 0.5})  # the last: no columns of its own
    reference = _train(model, optimizer, 3)
    records = meter.finish()
    assert records.lr.shape == (5, 1 + lrwatch.measure.SPARE_GROUPS) and meter.groups_without_columns == 2
    np.testing.assert_allclose(records.lr[2:, 1:], [[0.01 * (i + 1) for i in range(lrwatch.measure.SPARE_GROUPS)]] * 3)
    np.testing.assert_allclose(records.displacement[2:], reference[:, 0], rtol=1e-5)  # still counted in m


def test_a_param_group_removed_from_the_optimizer_leaves_nan_not_old_values():
    model = _model()
    optimizer = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.03,
                                                                     "weight_decay": 0.1}], lr=0.1)
    meter = StepMeter(optimizer, flush_every=3).attach()
    _train(model, optimizer, 4)
    optimizer.param_groups.pop()  # not a torch API, but nothing stops it
    _train(model, optimizer, 4)
    records = meter.finish()
    np.testing.assert_array_equal(records.lr[:, 1], [0.03] * 4 + [np.nan] * 4)
    for column in (records.group_displacement[4:, 1], records.weight_decay[4:, 1], records.momentum[4:, 1]):
        assert np.isnan(column).all()


@pytest.mark.parametrize("maximize", [False, True])
def test_plain_sgd_descent_is_lr_times_squared_grad_norm_and_negative_uphill(maximize):
    """Plain SGD moves by ∓lr·g, so the descent is ±lr‖g‖²; ``maximize`` climbs, and the descent is negative."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, maximize=maximize)
    meter = StepMeter(optimizer, flush_every=3).attach()
    reference = _train(model, optimizer, 7)
    descent = meter.finish().descent
    np.testing.assert_allclose(descent, (-1 if maximize else 1) * 0.1 * reference[:, 1] ** 2, rtol=1e-5)
    assert (descent < 0).all() if maximize else (descent > 0).all()


def test_descent_skips_parameters_without_a_gradient():
    """An optimizer parameter that gets no gradient (listed first, so a misaligned subset would be caught)
    contributes to neither descent nor grad norm."""
    model = _model()
    unused = torch.nn.Parameter(torch.ones(4, 4))
    optimizer = torch.optim.SGD([unused, *model.parameters()], lr=0.1, momentum=0.9)
    meter = StepMeter(optimizer, flush_every=4).attach()
    reference = _train(model, optimizer, 6)
    records = meter.finish()
    assert unused.grad is None
    np.testing.assert_allclose(records.grad_norm, reference[:, 1], rtol=1e-5)
    _assert_descent_matches(records.descent, reference)


@pytest.mark.parametrize("sparse_optimizer", ["sgd_momentum", "sparse_adam"])
def test_sparse_gradients_are_measured_like_their_dense_equal(sparse_optimizer):
    """``nn.Embedding(sparse=True)`` gives a sparse COO gradient with repeated rows (a batch looks a row up
    more than once); it crashed the meter's norm. Checked against the gradient made dense and summed by
    hand, through both descent paths (exact dot products, then polarization)."""
    torch.manual_seed(0)
    embedding, head = torch.nn.Embedding(50, 4, sparse=True), torch.nn.Linear(4, 1)
    if sparse_optimizer == "sgd_momentum":
        optimizers = [torch.optim.SGD([*embedding.parameters(), *head.parameters()], lr=0.1, momentum=0.9)]
    else:
        optimizers = [torch.optim.SparseAdam(list(embedding.parameters()), lr=0.05),
                      torch.optim.Adam(head.parameters(), lr=0.05)]
    meter = StepMeter(optimizers[0], flush_every=3).attach()
    measured = [p for g in optimizers[0].param_groups for p in g["params"]]
    generator = torch.Generator().manual_seed(1)
    reference = []
    for _ in range(8):
        rows = torch.randint(0, 10, (32,), generator=generator)  # 32 lookups of 10 rows: repeats
        assert len(rows.unique()) < len(rows)
        loss = (head(embedding(rows)).squeeze(-1) - rows.float() / 10).square().mean()
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        assert embedding.weight.grad.is_sparse
        before = torch.cat([p.detach().double().flatten() for p in measured])
        grad = torch.cat([(p.grad.to_dense() if p.grad.is_sparse else p.grad).double().flatten() for p in measured])
        for optimizer in optimizers:
            optimizer.step()
        delta = torch.cat([p.detach().double().flatten() for p in measured]) - before
        reference.append((delta.norm().item(), grad.norm().item(), 0, 0, -delta.dot(grad).item()))
    reference = np.array(reference)
    records = meter.finish()
    assert meter._scale is not None  # set when the first chunk was read (step 7): steps 7-8 took the polarization path
    np.testing.assert_allclose(records.displacement, reference[:, 0], rtol=1e-5)
    np.testing.assert_allclose(records.grad_norm, reference[:, 1], rtol=1e-5)
    _assert_descent_matches(records.descent, reference)


def test_descent_is_exact_before_the_scale_is_known_and_precise_after():
    """Until a chunk reaches the host the descent comes from per-tensor dot products; then by polarization
    with the chunk's median ‖Δw‖/‖g‖ as the scale. RMSprop moves ~270x lr per unit of gradient early on, so
    no lr-based scale would be balanced; both paths stay within 1e-6·‖Δw‖‖g‖ of the reference."""
    model = _model()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.5)
    meter = StepMeter(optimizer, flush_every=4).attach()
    first = _train(model, optimizer, 4)
    meter.rotate_if_full()
    early = meter.drain()
    assert meter._scale is not None
    later = _train(model, optimizer, 8)
    _assert_descent_matches(early.descent, first, tolerance=1e-6)
    _assert_descent_matches(meter.finish().descent, later, tolerance=1e-6)


def test_polarization_scale_follows_the_measured_ratio():
    """No scale until a chunk reaches the host, then that chunk's median displacement / grad_norm over
    its finite rows; a chunk with no finite row keeps it."""
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    meter = StepMeter(optimizer, flush_every=4).attach()
    assert meter._scale is None
    _train(model, optimizer, 4)
    chunk = meter.finish()
    assert meter._scale == pytest.approx(np.median(chunk.displacement / chunk.grad_norm), rel=1e-12)
    scale = meter._scale
    _train(model, optimizer, 3, poison_at=0)
    assert np.isnan(meter.finish().descent).all() and meter._scale == scale


@pytest.mark.parametrize(
    "make_optimizer, expected",
    [
        (lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, dampening=0.1), [0.9]),
        (lambda m: torch.optim.SGD(m.parameters(), lr=0.1), [0.0]),
        (lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.8, 0.99)), [0.8]),
        (lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-3, momentum=0.5), [0.5]),
        (lambda m: torch.optim.Adagrad(m.parameters(), lr=1e-2), [0.0]),
        (lambda m: torch.optim.SGD([{"params": m[0].parameters(), "momentum": 0.9},
                                    {"params": m[2].parameters(), "momentum": 0.5}], lr=0.1), [0.9, 0.5]),
    ],
    ids=["sgd_dampened", "sgd_plain", "adam", "rmsprop", "adagrad", "two_groups"],
)
def test_momentum_column_is_each_groups_beta_at_the_step(make_optimizer, expected):
    model = _model()
    optimizer = make_optimizer(model)
    meter = StepMeter(optimizer, flush_every=2).attach()
    _train(model, optimizer, 3)
    np.testing.assert_array_equal(meter.finish().momentum, [expected] * 3)


def test_momentum_column_follows_a_schedule_that_moves_beta():
    """OneCycleLR cycles Adam's β₁ between steps: each row holds the β its own step used."""
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.95, 0.999))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=6, base_momentum=0.85,
                                                    max_momentum=0.95)
    meter = StepMeter(optimizer).attach()
    used = []
    for _ in range(5):
        used.append(optimizer.param_groups[0]["betas"][0])
        _train(model, optimizer, 1)
        scheduler.step()
    np.testing.assert_array_equal(meter.finish().momentum[:, 0], used)
    assert len(set(used)) == 5


def test_momentum_coefficient_reads_betas_then_momentum_and_a_tensor_is_unknown():
    assert momentum_coefficient({"betas": (0.8, 0.99), "momentum": 0.5}) == 0.8
    assert momentum_coefficient({"momentum": 0.5}) == 0.5 and momentum_coefficient({"lr": 0.1}) == 0.0
    assert np.isnan(momentum_coefficient({"betas": (torch.tensor(0.8), torch.tensor(0.99))}))


@pytest.mark.parametrize("group", [{"momentum": "0.9"}, {"betas": (None, 0.99)}, {"betas": 0.9}, {"betas": ()},
                                   {"momentum": True}])
def test_a_momentum_coefficient_that_is_not_a_number_is_unknown(group):
    assert np.isnan(momentum_coefficient(group))


def test_momentum_coefficient_needs_a_param_group():
    with pytest.raises(ValueError, match="betas"):
        momentum_coefficient([("betas", (0.9, 0.99))])


def test_an_optimizer_with_an_odd_momentum_entry_is_measured_not_crashed():
    """The β is read inside optimizer.step: a custom optimizer's own kind of entry must not raise there."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    optimizer.param_groups[0]["betas"] = ("custom", 0.99)  # SGD's step ignores it; the meter reads betas first
    meter = StepMeter(optimizer, flush_every=2).attach()
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 6)).square().mean().backward()
        optimizer.step()
    records = meter.finish()
    assert len(records) == 3 and np.isnan(records.momentum).all() and np.isfinite(records.displacement).all()


def test_every_n_steps_and_clock():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    labels = iter(range(100, 200))
    meter = StepMeter(optimizer, flush_every=3, every_n_steps=4, clock=lambda: next(labels)).attach()
    reference = _train(model, optimizer, 13, meter)  # assigns a loss after every step, measured or not
    records = meter.finish()
    assert meter.steps_taken == 13 and meter.steps_measured == 4
    np.testing.assert_allclose(records.loss, reference[::4, 3], rtol=1e-6)  # only measured steps' losses land
    assert records.loss_assigned.all()
    np.testing.assert_array_equal(records.steps, [100, 101, 102, 103])  # the clock is read only on measured steps
    np.testing.assert_allclose(records.displacement, reference[::4, 0], rtol=1e-5)


def test_drain_hands_over_each_step_once_in_order():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    meter = StepMeter(optimizer, flush_every=4).attach()
    seen = []
    for _ in range(5):
        _train(model, optimizer, 3)
        seen.extend(meter.drain().steps.tolist())
    seen.extend(meter.finish().steps.tolist())
    assert seen == list(range(1, 16))
    assert len(meter.finish()) == 0


def test_detach_stops_measuring():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    meter = StepMeter(optimizer).attach()
    _train(model, optimizer, 2)
    meter.detach()
    _train(model, optimizer, 3)
    assert len(meter.finish()) == 2


_PACKAGE_DIR = os.path.dirname(lrwatch.measure.__file__) + os.sep


def _called_from_lrwatch() -> bool:
    return any(frame.filename.startswith(_PACKAGE_DIR) for frame in traceback.extract_stack())


class _SyncCounter(TorchDispatchMode):
    """Counts the aten ops issued from lrwatch's code that copy a tensor value to the host
    (item/float/bool/int/.cpu()). torch's own optimizers read their host-side step counters with
    .item(), which is not a device sync and not ours, hence the attribution by call stack."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if ("_local_scalar_dense" in name or ("_to_copy" in name and str((kwargs or {}).get("device")) == "cpu")) and _called_from_lrwatch():
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("scale", [None, 0.01])  # the descent by exact dot products, then by polarization
def test_step_path_does_no_host_sync(monkeypatch, scale):
    """Between flushes the hooks call nothing that reads a device value on the host. The test's own loop
    stays sync-free too; the dispatch mode sees every aten op, the patches catch the non-aten exits."""
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    meter = StepMeter(optimizer, flush_every=50).attach()
    meter._scale = scale  # as a chunk reaching the host would set it
    x = torch.randn(32, 6)
    exits = []
    for attr in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, attr)
        def counted(self, *a, _original=original, _name=attr, **k):
            if _called_from_lrwatch():
                exits.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, attr, counted)
    with _SyncCounter() as counter:
        for _ in range(40):
            loss = model(x).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            meter.assign_loss(loss.detach())
    monkeypatch.undo()
    assert counter.calls == [] and exits == []
    assert len(meter.finish()) == 40


def test_low_precision_parameters_are_measured_in_float32_exactly():
    model = _model(torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    meter = StepMeter(optimizer).attach()
    reference = _train(model, optimizer, 5)
    records = meter.finish()
    np.testing.assert_allclose(records.displacement, reference[:, 0], rtol=1e-6)
    _assert_descent_matches(records.descent, reference)  # bf16 gradients added into float32 snapshots


def test_float64_and_bfloat16_parameters_in_one_optimizer():
    """_foreach_norm(dtype=float32) refuses to narrow float64 tensors: a float64 head beside a bf16 body
    crashed optimizer.step."""
    model = _model(torch.bfloat16)
    model[2].double()
    model.forward = lambda x: model[2](model[1](model[0](x)).double())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    meter = StepMeter(optimizer, flush_every=3).attach()
    reference = _train(model, optimizer, 8)
    records = meter.finish()
    np.testing.assert_allclose(records.displacement, reference[:, 0], rtol=1e-6)
    np.testing.assert_allclose(records.grad_norm, reference[:, 1], rtol=1e-6)
    _assert_descent_matches(records.descent, reference)


def test_non_finite_values_are_recorded_not_raised():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    meter = StepMeter(optimizer).attach()
    _train(model, optimizer, 6, meter, poison_at=3)
    records = meter.finish()
    assert np.isfinite(records.displacement[:3]).all()
    assert np.isnan(records.displacement[3:]).all() and np.isnan(records.grad_norm[3:]).all()


def test_no_trainable_parameters_records_nothing():
    frozen = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
    optimizer = torch.optim.SGD([frozen], lr=0.1)
    meter = StepMeter(optimizer).attach()
    optimizer.step()
    assert meter.params == [] and meter.steps_taken == 1 and len(meter.finish()) == 0


def test_a_meter_built_while_all_was_frozen_measures_once_parameters_train():
    weight = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    meter = StepMeter(optimizer).attach()
    optimizer.step()
    weight.requires_grad_(True)
    weight.grad = torch.full((3,), 2.0)
    optimizer.step()  # moves by 0.1 * 2 in each of 3 coordinates
    records = meter.finish()
    np.testing.assert_allclose(records.displacement, [0.2 * 3**0.5], rtol=1e-6)
    np.testing.assert_array_equal(records.steps, [2])


def test_a_frozen_and_an_unfrozen_parameter_swapping_is_followed():
    # the same number of trainable parameters before and after: the meter must follow which ones
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    optimizer = torch.optim.SGD([a, b], lr=1.0)
    meter = StepMeter(optimizer).attach()
    for trained in (a, b):
        a.requires_grad_(trained is a)
        b.requires_grad_(trained is b)
        a.grad = b.grad = None
        trained.grad = torch.tensor([3.0, 4.0])
        optimizer.step()
    np.testing.assert_allclose(meter.finish().displacement, [5.0, 5.0])


def test_parameters_on_another_device_are_left_out_not_crashed_on():
    # "meta" stands for a second device: a group added there is counted in params_elsewhere, and the step
    # (which SGD runs on both devices) measures the parameters on the meter's own device exactly
    here = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([here], lr=1.0)
    meter = StepMeter(optimizer).attach()
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3, device="meta"))]})
    here.grad = torch.tensor([3.0, 4.0])
    optimizer.step()
    assert meter.params_elsewhere == 1 and meter.params == [here] and meter.device == torch.device("cpu")
    np.testing.assert_allclose(meter.finish().displacement, [5.0])


def test_a_meter_with_nothing_measured_yet_moves_to_its_parameters_device():
    frozen = torch.nn.Parameter(torch.zeros(2, device="meta"), requires_grad=False)
    meter = StepMeter(torch.optim.SGD([frozen], lr=1.0)).attach()
    assert meter.device == torch.device("cpu")  # nothing trains: no device to follow yet
    frozen.requires_grad_(True)
    frozen.grad = torch.zeros(2, device="meta")
    meter.optimizer.step()  # binds, moves the ring to the parameter's device, measures without a device mismatch
    assert meter.device == torch.device("meta") and meter.params == [frozen] and meter.params_elsewhere == 0
    assert meter._ring.device == torch.device("meta") and meter.steps_measured == 1


def test_optimizer_without_param_groups_records_nothing():
    """Lightning's mock optimizer (no ``configure_optimizers``) has an empty ``param_groups``."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    optimizer.param_groups.clear()
    meter = StepMeter(optimizer).attach()
    optimizer.step()
    records = meter.finish()
    assert len(records) == 0 and records.momentum.shape == (0, 0) and records.descent.shape == (0,)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"flush_every": 0}, "flush_every"), ({"flush_every": True}, "flush_every"), ({"every_n_steps": 0}, "every_n_steps"),
     ({"every_n_steps": 1.5}, "every_n_steps")],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        StepMeter(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), **kwargs)


def test_not_an_optimizer():
    with pytest.raises(ValueError, match="optimizer"):
        StepMeter(object())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded_worker(rank: int, world: int, port: int, results) -> None:
    """Each rank holds its own rows of one weight matrix and applies its slice of one global gradient."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        full_weight = torch.randn(8, 5)
        full_grads = [torch.randn(8, 5) for _ in range(4)]
        rows = slice(rank * 4, rank * 4 + 4)
        shard = torch.nn.Parameter(full_weight[rows].clone())
        optimizer = torch.optim.SGD([shard], lr=0.3, momentum=0.5)
        meter = StepMeter(optimizer, flush_every=3, process_group=True).attach()
        for g in full_grads:
            shard.grad = g[rows].clone()
            optimizer.step()
        records = meter.finish()
        results[rank] = (records.displacement.tolist(), records.descent.tolist())
    finally:
        dist.destroy_process_group()


def test_sharded_norms_are_all_reduced_before_the_square_root():
    world = 2
    results = mp.Manager().dict()
    mp.spawn(_sharded_worker, args=(world, _free_port(), results), nprocs=world, join=True)
    # Independent: the same momentum SGD on the unsharded matrix.
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 5).double())
    grads = [torch.randn(8, 5).double() for _ in range(4)]
    optimizer = torch.optim.SGD([weight], lr=0.3, momentum=0.5)
    expected = []
    for g in grads:
        before = weight.detach().clone()
        weight.grad = g
        optimizer.step()
        delta = weight.detach() - before
        expected.append((float(delta.norm()), float(g.norm()), 0.3, float("nan"), -float((delta * g).sum())))
    expected = np.array(expected)
    for rank in range(world):
        displacement, descent = results[rank]
        np.testing.assert_allclose(displacement, expected[:, 0], rtol=1e-5)
        _assert_descent_matches(descent, expected)


def _fully_shard_worker(rank: int, world: int, port: int, sharded: bool, mesh_shape: tuple | None, results) -> None:
    """FSDP2 (`fully_shard`) on CPU/gloo: parameters are DTensors. With ``mesh_shape`` None each rank
    holds 1/world of each; with (2, 2) (HSDP) they are sharded over "shard" and replicated over
    "replicate", so every element is held by two ranks. Four steps with _train's batches (the same on
    every rank: the update equals the unsharded one), the scale c known after the first two, then a step
    without gradients (nothing moves)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = mesh_shape and init_device_mesh("cpu", mesh_shape, mesh_dim_names=("replicate", "shard"))
        model = _model()
        fully_shard(model, mesh=mesh)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        meter = StepMeter(optimizer, flush_every=2, process_group=sharded or None).attach()
        generator = torch.Generator().manual_seed(1)
        for _ in range(4):
            loss = model(torch.randn(32, 6, generator=generator)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        optimizer.zero_grad()
        optimizer.step()
        records = meter.finish()
        counts = sorted({replicas(p) for p in meter.params})
        results[rank] = (records.displacement.tolist(), records.descent.tolist(), counts)
    finally:
        dist.destroy_process_group()


def _sharded_results(world: int, sharded: bool, mesh_shape: tuple | None) -> tuple[list, np.ndarray]:
    """Per rank (displacement, descent, replica counts) of the measured steps with gradients, after
    checking the step without any is measured as no motion; and the unsharded reference."""
    results = mp.Manager().dict()
    mp.spawn(_fully_shard_worker, args=(world, _free_port(), sharded, mesh_shape, results), nprocs=world, join=True)
    model = _model()
    expected = _train(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), 4)
    ranks = []
    for rank in range(world):
        displacement, descent, counts = results[rank]
        assert len(displacement) == 5 and displacement[4] == 0.0 and descent[4] == 0.0
        ranks.append((displacement[:4], descent[:4], counts))
    return ranks, expected


@pytest.mark.parametrize("sharded", [True, False])
def test_fully_shard_parameters_match_the_unsharded_run_only_with_the_reduction(sharded):
    results, expected = _sharded_results(2, sharded, None)
    for displacement, descent, counts in results:
        assert counts == [1]
        if sharded:
            np.testing.assert_allclose(displacement, expected[:, 0], rtol=1e-5)
            _assert_descent_matches(descent, expected)
        else:  # each rank alone sees only its shard's part of the displacement
            assert np.all(np.asarray(displacement) < expected[:, 0] * (1 - 1e-3))
    if not sharded:  # the shards' own descents are the parts of the sum the reduction takes
        _assert_descent_matches(np.add(results[0][1], results[1][1]), expected)
        assert all(abs(results[0][1][t] - expected[t, 4]) > 1e-3 * abs(expected[t, 4]) for t in range(4))


def test_hybrid_sharding_counts_every_replicated_element_once():
    results, expected = _sharded_results(4, True, (2, 2))
    for displacement, descent, counts in results:
        assert counts == [2]
        np.testing.assert_allclose(displacement, expected[:, 0], rtol=1e-5)
        _assert_descent_matches(descent, expected)


def test_plain_tensors_are_held_once():
    assert replicas(torch.zeros(3)) == 1 and replicas(torch.nn.Parameter(torch.zeros(2, 2))) == 1


def test_per_group_displacement_and_weight_decay():
    model = _model()
    body, head = list(model[0].parameters()), list(model[2].parameters())
    optimizer = torch.optim.AdamW([{"params": body, "weight_decay": 0.1}, {"params": head, "lr": 3e-3}], lr=1e-2)
    meter = StepMeter(optimizer, flush_every=3).attach()
    generator = torch.Generator().manual_seed(2)
    expected = []
    for _ in range(5):
        loss = model(torch.randn(32, 6, generator=generator)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        before = [torch.cat([p.detach().double().flatten() for p in ps]) for ps in (body, head)]
        optimizer.step()
        after = [torch.cat([p.detach().double().flatten() for p in ps]) for ps in (body, head)]
        expected.append([float((a - b).norm()) for a, b in zip(after, before)])
    records = meter.finish()
    np.testing.assert_allclose(records.group_displacement, expected, rtol=1e-5)
    np.testing.assert_allclose(np.hypot(*records.group_displacement.T), records.displacement, rtol=1e-12)
    np.testing.assert_array_equal(records.weight_decay, [[0.1, 0.01]] * 5)  # AdamW's default 1e-2 for the head
    np.testing.assert_array_equal(records.lr, [[1e-2, 3e-3]] * 5)


def test_grad_scaler_skipped_steps_are_not_measured_and_grads_are_unscaled():
    """torch.amp.GradScaler skips optimizer.step() on non-finite gradients: the hooks never fire, so the
    skipped iteration leaves no record; the recorded gradient norm is the unscaled one."""
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    optimizer = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    meter = StepMeter(optimizer).attach()
    for t in range(4):
        optimizer.zero_grad()
        scaler.scale((w * (float("inf") if t == 1 else 1.0)).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    records = meter.finish()
    assert meter.steps_taken == 3 and records.steps.tolist() == [1, 2, 3]
    np.testing.assert_allclose(records.displacement, [0.1 * np.sqrt(3)] * 3, rtol=1e-12)
    np.testing.assert_allclose(records.grad_norm, [np.sqrt(3)] * 3, rtol=1e-12)
