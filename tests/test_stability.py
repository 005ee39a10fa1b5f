"""StabilityProbe and lrwatch.hessian: the eigenvalue against exact Hessians, the ceilings against the
optimizers' own dynamics, and real Lightning runs against the analytic sharpness of linear regression."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

import lrwatch
from lrwatch._lightning import pl
from lrwatch.callbacks.stability import (
    CEILING_TAG,
    DIAGNOSIS_TAG,
    KIND,
    RATIO_TAG,
    SHARPNESS_TAG,
    StabilityProbe,
)
from lrwatch.hessian import top_hessian_eigenvalue, update_rule
from tests.conftest import DigitsMLP, LateRestore, RecordingLogger, TwoOptimizerGAN, digits_loader, make_trainer


def _exact_hessian(loss_of_flat, flat: torch.Tensor) -> np.ndarray:
    return torch.autograd.functional.hessian(loss_of_flat, flat).numpy()


def _dominant(eigenvalues: np.ndarray) -> float:
    return float(eigenvalues[np.argmax(np.abs(eigenvalues))])


# ---------------------------------------------------------------------------------------------------------
# top_hessian_eigenvalue against exact Hessians


def _tanh_mlp_problem():
    """A 3 -> 8 -> 2 tanh MLP (50 parameters, float64) with an MSE loss on a fixed batch of 16."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]

    def loss_of_flat(flat):
        chunks = torch.split(flat, [math.prod(s) for s in shapes])
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return torch.nn.functional.mse_loss(functional_call(net, params, (x,)), y)

    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert flat.numel() == 50
    return net, x, y, loss_of_flat, flat


def test_tanh_mlp_matches_exact_hessian_eigenvalue():
    net, x, y, loss_of_flat, flat = _tanh_mlp_problem()
    exact = np.linalg.eigvalsh(_exact_hessian(loss_of_flat, flat))
    loss_fn = lambda: torch.nn.functional.mse_loss(net(x), y)  # noqa: E731
    value, vector, n_iters = top_hessian_eigenvalue(loss_fn, list(net.parameters()), iters=500, tol=1e-9)
    assert abs(value - _dominant(exact)) <= 1e-3 * abs(_dominant(exact))
    assert n_iters < 500
    assert math.isclose(sum(float((v * v).sum()) for v in vector), 1.0, rel_tol=1e-9)
    if _dominant(exact) < 0:  # a negative eigenvalue dominates: the shift recovers the largest positive one
        positive, _, _ = top_hessian_eigenvalue(loss_fn, list(net.parameters()), iters=2000, tol=1e-10, shift=value)
        assert abs(positive - exact[-1]) <= 1e-3 * abs(exact[-1])


def test_warm_start_from_the_eigenvector_converges_at_once():
    net, x, y, loss_of_flat, flat = _tanh_mlp_problem()
    eigenvalues, eigenvectors = np.linalg.eigh(_exact_hessian(loss_of_flat, flat))
    top = np.argmax(np.abs(eigenvalues))
    init = list(torch.split(torch.tensor(eigenvectors[:, top]), [p.numel() for p in net.parameters()]))
    init = [v.reshape(p.shape) for v, p in zip(init, net.parameters())]
    loss_fn = lambda: torch.nn.functional.mse_loss(net(x), y)  # noqa: E731
    value, _, n_iters = top_hessian_eigenvalue(loss_fn, list(net.parameters()), iters=50, tol=1e-9, init=init)
    assert n_iters == 2
    assert abs(value - eigenvalues[top]) <= 1e-9 * abs(eigenvalues[top])


def _quadratic(spectrum, seed):
    """½ wᵀAw with A = Q diag(spectrum) Qᵀ, w split into two parameter tensors (shapes (2,) and (rest,))."""
    n = len(spectrum)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    a = torch.tensor(q @ np.diag(spectrum) @ q.T)
    w = [torch.ones(k, dtype=torch.float64, requires_grad=True) for k in (2, n - 2)]
    return a, w, lambda: 0.5 * torch.cat(w) @ a @ torch.cat(w)


@settings(max_examples=30, deadline=None)
@given(
    top=st.floats(-100, 100).filter(lambda t: abs(t) > 1e-2),
    rest=st.lists(st.floats(-0.8, 0.8), min_size=2, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_quadratic_with_known_spectrum(top, rest, seed):
    spectrum = np.array([top] + [top * r for r in rest])  # |λ₂/λ₁| <= 0.8: converges within 200 iterations
    _, w, loss_fn = _quadratic(spectrum, seed)
    value, _, _ = top_hessian_eigenvalue(loss_fn, w, iters=200, tol=1e-10)
    assert abs(value - top) <= 1e-6 * abs(top)


@settings(max_examples=20, deadline=None)
@given(spectrum=st.lists(st.floats(0.1, 10), min_size=3, max_size=6), seed=st.integers(0, 2**16))
def test_preconditioned_quadratic_has_the_eigenvalues_of_p_inverse_a(spectrum, seed):
    a, w, loss_fn = _quadratic(np.array(spectrum), seed)
    p = [torch.linspace(0.5, 2.0, t.numel(), dtype=torch.float64) * (i + 1) for i, t in enumerate(w)]
    expected = max(np.linalg.eigvals(np.diag(1 / torch.cat(p).numpy()) @ a.numpy()).real)
    value, _, _ = top_hessian_eigenvalue(loss_fn, w, iters=2000, tol=1e-12, preconditioner=p)
    assert abs(value - expected) <= 1e-4 * expected


def test_saddle_dominated_reports_the_negative_eigenvalue_and_the_shift_finds_the_largest_positive():
    _, w, loss_fn = _quadratic(np.array([-5.0, 3.0, 1.0, -0.5]), seed=2)
    value, _, _ = top_hessian_eigenvalue(loss_fn, w, iters=500, tol=1e-12)
    assert abs(value + 5.0) <= 1e-8
    positive, _, _ = top_hessian_eigenvalue(loss_fn, w, iters=500, tol=1e-12, shift=value)
    assert abs(positive - 3.0) <= 1e-8


def test_probe_leaves_grads_params_optimizer_and_global_rng_alone():
    net, x, y, _, _ = _tanh_mlp_problem()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    torch.nn.functional.mse_loss(net(x), y).backward()
    optimizer.step()
    grads = [p.grad.clone() for p in net.parameters()]
    params = [p.detach().clone() for p in net.parameters()]
    buffers = [optimizer.state[p]["momentum_buffer"].clone() for p in net.parameters()]
    rng = torch.get_rng_state()
    top_hessian_eigenvalue(lambda: torch.nn.functional.mse_loss(net(x), y), list(net.parameters()))
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), params))
    assert all(torch.equal(optimizer.state[p]["momentum_buffer"], b) for p, b in zip(net.parameters(), buffers))
    assert torch.equal(torch.get_rng_state(), rng)


def test_parameters_the_loss_does_not_use_and_linear_losses_have_zero_curvature():
    w = torch.ones(3, requires_grad=True)
    unused = torch.ones(2, requires_grad=True)
    value, vector, _ = top_hessian_eigenvalue(lambda: 2.0 * (w**2).sum(), [w, unused], iters=50, tol=1e-9)
    assert abs(value - 4.0) <= 1e-6 and float(vector[1].abs().max()) < 1e-6
    value, _, n_iters = top_hessian_eigenvalue(lambda: (3.0 * w).sum(), [w], iters=50)
    assert value == 0.0 and n_iters == 1


# ---------------------------------------------------------------------------------------------------------
# update_rule: the ceiling decides whether the optimizer's own iteration diverges

A_SPECTRUM = np.array([1.0, 0.3, 0.1])
EPS = 1.0  # Adam/RMSprop eps far above sqrt(v): the preconditioner is eps (scale-free, linear regime)

OPTIMIZERS = {
    "sgd": (lambda w, lr: torch.optim.SGD(w, lr=lr), 2.0),
    "heavy_ball": (lambda w, lr: torch.optim.SGD(w, lr=lr, momentum=0.9), 2 * 1.9),
    "dampened": (lambda w, lr: torch.optim.SGD(w, lr=lr, momentum=0.5, dampening=0.5), 2 * 1.5 / 0.5),
    "nesterov": (lambda w, lr: torch.optim.SGD(w, lr=lr, momentum=0.9, nesterov=True), 2 * 1.9 / 2.8),
    "sgd_groups": (
        lambda w, lr: torch.optim.SGD([{"params": [w[0]], "lr": lr}, {"params": [w[1]], "lr": lr / 4}], lr=lr),
        2.0,
    ),
    "adam": (lambda w, lr: torch.optim.Adam(w, lr=lr, eps=EPS), (2 + 2 * 0.9) / 0.1 * EPS),
    "adamw": (lambda w, lr: torch.optim.AdamW(w, lr=lr, eps=EPS, weight_decay=0.0), (2 + 2 * 0.9) / 0.1 * EPS),
    "rmsprop": (lambda w, lr: torch.optim.RMSprop(w, lr=lr, eps=EPS, momentum=0.5), 2 * 1.5 * EPS),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("nominal_ratio", [0.7, 1.3])
def test_probe_ratio_predicts_whether_the_optimizer_diverges(name, nominal_ratio):
    """Run the real torch optimizer on ½wᵀAw from a tiny w; the probe's ratio after 30 steps decides
    whether the next 200 steps shrink or blow up w (the ceiling in the table, independently written here)."""
    factory, ceiling_times_lr = OPTIMIZERS[name]
    lr = 0.01
    a, w, loss_fn = _quadratic(A_SPECTRUM * nominal_ratio * ceiling_times_lr / lr, seed=1)
    with torch.no_grad():
        for t in w:
            t.mul_(1e-100)
    optimizer = factory(w, lr)

    def run(steps):
        for _ in range(steps):
            optimizer.zero_grad()
            loss_fn().backward()
            optimizer.step()
        return float(torch.cat([t.detach() for t in w]).norm())

    before = run(30)
    rule = update_rule(optimizer)
    assert math.isclose(rule.ceiling, ceiling_times_lr / lr, rel_tol=1e-12)
    value, _, _ = top_hessian_eigenvalue(loss_fn, rule.params, iters=300, tol=1e-10, preconditioner=rule.preconditioner)
    ratio = value / rule.ceiling
    after = run(200)
    assert 0.5 < ratio < 0.95 or 1.05 < ratio < 2.0, ratio
    assert (after > 1e3 * before) == (ratio > 1) and (after < 1e-2 * before) == (ratio < 1), (ratio, before, after)


ADAPTIVE = {
    "adam": lambda groups: torch.optim.Adam(groups, betas=(0.8, 0.95), eps=1e-3),
    "adam_amsgrad": lambda groups: torch.optim.Adam(groups, betas=(0.8, 0.95), eps=1e-3, amsgrad=True),
    "adamw": lambda groups: torch.optim.AdamW(groups, eps=1e-3, weight_decay=0.0),
    "rmsprop": lambda groups: torch.optim.RMSprop(groups, alpha=0.9, eps=1e-3),
    "rmsprop_centered": lambda groups: torch.optim.RMSprop(groups, alpha=0.9, eps=1e-3, centered=True),
}


@pytest.mark.parametrize("name", ADAPTIVE)
def test_preconditioner_reproduces_the_optimizers_own_step(name):
    """With the state after a step, the step taken was −η_ref·u/P (u = exp_avg for Adam, the gradient for
    RMSprop without momentum): P is the optimizer's metric, read back from its state."""
    _, w, loss_fn = _quadratic(np.array([3.0, 1.0, 0.1]), seed=4)
    optimizer = ADAPTIVE[name]([{"params": [w[0]], "lr": 0.01}, {"params": [w[1]], "lr": 0.03}])
    for scale in (4.0, 4.0, 4.0, 0.5, 0.5, 0.5):  # shrinking gradients: amsgrad's max differs from v
        before = [t.detach().clone() for t in w]
        optimizer.zero_grad()
        (scale * loss_fn()).backward()
        optimizer.step()
    rule = update_rule(optimizer)
    assert rule.name == ("adam" if name.startswith("adam") else "rmsprop") and rule.lr == 0.01
    for t, b, p in zip(w, before, rule.preconditioner):
        u = optimizer.state[t]["exp_avg"] if name.startswith("adam") else t.grad
        torch.testing.assert_close(t.detach() - b, -0.01 * u / p, rtol=1e-9, atol=0)


def test_group_lrs_enter_as_the_preconditioner_diag_of_lr_ratios():
    a, w, loss_fn = _quadratic(np.array([1.0, 0.5, 0.2]), seed=3)
    rule = update_rule(torch.optim.SGD([{"params": [w[0]], "lr": 0.1}, {"params": [w[1]], "lr": 0.4}], lr=0.1))
    assert rule.lr == 0.1 and rule.ceiling == 2 / 0.1 and rule.group_lrs == (0.1, 0.4)
    expected = max(np.linalg.eigvals(np.diag([0.1, 0.1, 0.4]) @ a.numpy()).real) / 0.1  # λ_max(diag(η)A)/η_ref
    value, _, _ = top_hessian_eigenvalue(loss_fn, rule.params, iters=500, tol=1e-12, preconditioner=rule.preconditioner)
    assert abs(value - expected) <= 1e-8 * expected


def test_unmodelled_optimizer_has_no_ceiling():
    w = [torch.ones(3, requires_grad=True)]
    rule = update_rule(torch.optim.Adagrad(w, lr=0.1))
    assert rule.name == "unmodelled" and rule.ceiling is None and rule.preconditioner is None
    assert "Adagrad" in rule.note


# ---------------------------------------------------------------------------------------------------------
# Lightning runs: full-batch linear regression, whose loss Hessian is exactly 2·XᵀX/n

HESSIAN_SPECTRUM = np.array([4.0, 1.5, 1.0, 0.5, 0.2])  # eigenvalues of 2·XᵀX/n, by construction
LAMBDA_MAX = 4.0
N = 64


def _regression_loader():
    rng = np.random.default_rng(0)
    d = len(HESSIAN_SPECTRUM)
    u, _ = np.linalg.qr(rng.standard_normal((N, d)))
    v, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x = math.sqrt(N) * u @ np.diag(np.sqrt(HESSIAN_SPECTRUM / 2)) @ v.T
    assert np.allclose(np.linalg.eigvalsh(2 * x.T @ x / N), np.sort(HESSIAN_SPECTRUM))
    y = x @ rng.standard_normal(d) + 0.1 * rng.standard_normal(N)
    data = torch.utils.data.TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    return torch.utils.data.DataLoader(data, batch_size=N, shuffle=False)


class LinearRegression(pl.LightningModule):
    """MSE linear regression without bias; ``lr_factor(step)`` scales the lr (LambdaLR, stepped every step)."""

    def __init__(self, lr: float, lr_factor=None, optimizer: str = "sgd", dropout: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(len(HESSIAN_SPECTRUM), 1, bias=False)
        self.dropout = torch.nn.Dropout(dropout)
        self.lr, self.lr_factor, self.optimizer_name = lr, lr_factor, optimizer

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.linear(self.dropout(x)).squeeze(-1), y)
        self.log("train_mse", loss, on_step=True, on_epoch=True)
        return {"loss": loss}

    def configure_optimizers(self):
        if self.optimizer_name == "adam":
            optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        elif self.optimizer_name == "adagrad":
            optimizer = torch.optim.Adagrad(self.parameters(), lr=self.lr)
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        if self.lr_factor is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _fit(model, probe, max_steps, **trainer_kwargs):
    logger = RecordingLogger()
    trainer = make_trainer([probe], logger, max_steps=max_steps, log_every_n_steps=1, **trainer_kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, _regression_loader())
    return trainer, logger, [str(w.message) for w in caught]


@pytest.mark.parametrize("late", [False, True])  # late: callbacks restored after on_fit_start (FSDP, ModelParallel)
def test_a_resumed_fit_goes_on_and_a_new_fit_starts_afresh(tmp_path, late):
    critical_lr = 2 / LAMBDA_MAX
    factor = lambda k: 1.0 if k < 20 else (1.5 if k < 35 else 0.75)  # noqa: E731  (as in the test below)
    probe = StabilityProbe(every_n_steps=5)
    trainer, _, _ = _fit(LinearRegression(0.8 * critical_lr, factor), probe, max_steps=25)  # open at steps 20, 25
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = StabilityProbe(every_n_steps=5)
    make_trainer([resumed], RecordingLogger(), max_steps=50, **({"strategy": LateRestore()} if late else {})).fit(
        LinearRegression(0.8 * critical_lr, factor), _regression_loader(), ckpt_path=tmp_path / "mid.ckpt")
    assert [(d.kind, d.start, d.end) for d in resumed.diagnoses] == [(KIND, 20, 30)]  # one episode, as straight
    # a probe on a new run that stays below its ceiling: nothing of an earlier run is left
    for used in (probe, resumed):
        _fit(LinearRegression(0.5 * critical_lr, None), used, max_steps=20)
        assert used.diagnoses == [] and used.last["step"] == 20


def factor_at(factor, steps):
    return np.array([factor(int(s)) for s in steps])


def test_crossing_the_ceiling_is_diagnosed_from_the_right_step_with_the_analytic_sharpness(tmp_path):
    critical_lr = 2 / LAMBDA_MAX
    # ratio η·λ_max/2: 0.8 for steps < 20, 1.2 for steps 20..34, 0.6 from step 35 (LambdaLR counts steps taken)
    factor = lambda k: 1.0 if k < 20 else (1.5 if k < 35 else 0.75)  # noqa: E731
    probe = StabilityProbe(every_n_steps=5)
    trainer, logger, warned = _fit(LinearRegression(0.8 * critical_lr, factor), probe, max_steps=50)

    steps, sharpness = logger.series(SHARPNESS_TAG)
    np.testing.assert_array_equal(steps, np.arange(5, 51, 5))
    assert np.max(np.abs(sharpness - LAMBDA_MAX)) <= 1e-3 * LAMBDA_MAX
    expected_ratio = np.where(steps < 20, 0.8, np.where(steps < 35, 1.2, 0.6))
    np.testing.assert_allclose(logger.series(RATIO_TAG)[1], expected_ratio, rtol=1e-3)
    lrs = 0.8 * critical_lr * factor_at(factor, steps)
    np.testing.assert_allclose(logger.series(CEILING_TAG)[1], 2 / lrs, rtol=1e-6)
    np.testing.assert_array_equal(logger.series(DIAGNOSIS_TAG)[1], (expected_ratio > 1).astype(float))

    assert [(d.kind, d.start, d.end) for d in probe.diagnoses] == [(KIND, 20, 30)]
    evidence = probe.diagnoses[0].evidence
    assert math.isclose(evidence["ratio"], 1.2, rel_tol=1e-3) and math.isclose(evidence["sharpness"], 4, rel_tol=1e-3)
    assert "lr below" in probe.diagnoses[0].message
    assert sum(KIND in w for w in warned) == 1
    assert isinstance(probe.diagnoses[0], lrwatch.Diagnosis)

    trainer.save_checkpoint(tmp_path / "run.ckpt")
    saved = torch.load(tmp_path / "run.ckpt", weights_only=False)["callbacks"][probe.state_key]
    restored = StabilityProbe(every_n_steps=5)
    restored.load_state_dict(saved)
    assert restored.diagnoses == probe.diagnoses and restored.state_dict() == probe.state_dict()


def test_well_below_the_ceiling_nothing_is_diagnosed():
    probe = StabilityProbe(every_n_steps=4)
    _, logger, warned = _fit(LinearRegression(0.2 * 2 / LAMBDA_MAX), probe, max_steps=12)
    assert probe.diagnoses == []
    np.testing.assert_array_equal(logger.series(DIAGNOSIS_TAG)[1], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(logger.series(RATIO_TAG)[1], 0.2, rtol=1e-3)
    assert not any(KIND in w for w in warned)


def test_a_diverged_run_is_not_measured_and_warned_once():
    """|1 − ηλ| = 199: the weights overflow to inf, then NaN, within 20 steps. A linear model's Hessian does not
    depend on the weights (it is still measured exactly), so the probe differentiates a tanh-squashed loss."""

    def squashed_loss(module, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(torch.tanh(module.linear(x)).squeeze(-1), y)

    probe = StabilityProbe(every_n_steps=20, loss_fn=squashed_loss)
    _, logger, warned = _fit(LinearRegression(50.0), probe, max_steps=60)
    assert SHARPNESS_TAG not in logger.metrics and probe.diagnoses == []
    assert sum("not finite" in w for w in warned) == 1


def test_adam_is_probed_as_the_preconditioned_sharpness():
    probe = StabilityProbe(every_n_steps=10, iters=200, tol=1e-7)
    trainer, logger, _ = _fit(LinearRegression(0.05, optimizer="adam"), probe, max_steps=10)
    optimizer = trainer.optimizers[0]
    state = optimizer.state[trainer.lightning_module.linear.weight]
    t, v = float(state["step"]), state["exp_avg_sq"].double().flatten().numpy()
    p = (1 - 0.9**t) * (np.sqrt(v / (1 - 0.999**t)) + 1e-8)  # Adam's documented update, written out
    x = _regression_loader().dataset.tensors[0].double().numpy()
    hessian = 2 * x.T @ x / N
    expected = max(np.linalg.eigvals(np.diag(1 / p) @ hessian).real)
    assert math.isclose(logger.series(SHARPNESS_TAG)[1][-1], expected, rel_tol=1e-3)
    assert math.isclose(logger.series(CEILING_TAG)[1][-1], 3.8 / (0.1 * 0.05), rel_tol=1e-9)


def test_unmodelled_optimizer_logs_sharpness_only_and_warns_once():
    probe = StabilityProbe(every_n_steps=2)
    _, logger, warned = _fit(LinearRegression(0.1, optimizer="adagrad"), probe, max_steps=6)
    assert np.max(np.abs(logger.series(SHARPNESS_TAG)[1] - LAMBDA_MAX)) <= 1e-3 * LAMBDA_MAX
    assert RATIO_TAG not in logger.metrics and DIAGNOSIS_TAG not in logger.metrics
    assert sum("Adagrad" in w for w in warned) == 1


def test_probe_changes_neither_the_trajectory_nor_the_models_own_logs():
    """Dropout in the model: the probe's forward draws masks, yet the run is bit-identical with and without it."""
    runs = []
    for callbacks in ([], [StabilityProbe(every_n_steps=2)]):
        model, logger = LinearRegression(0.3, dropout=0.3), RecordingLogger()
        make_trainer(callbacks, logger, max_steps=8, log_every_n_steps=1).fit(model, _regression_loader())
        runs.append((model.linear.weight.detach().clone(), logger.metrics))
    (weight_bare, logs_bare), (weight_probed, logs_probed) = runs
    assert torch.equal(weight_bare, weight_probed)
    for tag in ("train_mse_step", "train_mse_epoch"):
        assert logs_bare[tag] == logs_probed[tag]
    assert len(logs_probed[SHARPNESS_TAG]) == 4


def test_group_lrs_get_their_own_ceiling_tags():
    logger = RecordingLogger()
    model = DigitsMLP("sgd_momentum_groups", lr=0.1)  # groups "body" at lr and "pg1" at lr/4, momentum 0.9
    make_trainer([StabilityProbe(every_n_steps=3)], logger, max_steps=3).fit(model, digits_loader(64, 192))
    ceiling = 2 * 1.9 / 0.1
    assert logger.metrics[CEILING_TAG] == [(3, pytest.approx(ceiling))]
    assert logger.metrics[f"{CEILING_TAG}/body"] == [(3, pytest.approx(ceiling))]
    assert logger.metrics[f"{CEILING_TAG}/pg1"] == [(3, pytest.approx(4 * ceiling))]


def test_gradient_accumulation_probes_each_optimizer_step_once():
    probe = StabilityProbe(every_n_steps=2)
    model = LinearRegression(0.1)
    loader = torch.utils.data.DataLoader(_regression_loader().dataset, batch_size=N // 2)
    logger = RecordingLogger()
    make_trainer([probe], logger, max_steps=6, accumulate_grad_batches=2).fit(model, loader)
    assert [s for s, _ in logger.metrics[SHARPNESS_TAG]] == [2, 4, 6]


def test_manual_optimization_needs_loss_fn():
    with pytest.raises(ValueError, match="loss_fn"):
        make_trainer([StabilityProbe(every_n_steps=1)], RecordingLogger(), max_steps=2).fit(
            TwoOptimizerGAN(), digits_loader(64, 128)
        )

    def generator_loss(module, batch):
        x, y = batch
        return -torch.nn.functional.cross_entropy(module.disc(module.gen(x)), y)

    logger = RecordingLogger()
    make_trainer([StabilityProbe(every_n_steps=2, loss_fn=generator_loss)], logger, max_steps=4).fit(
        TwoOptimizerGAN(), digits_loader(64, 128)
    )
    assert len(logger.metrics[SHARPNESS_TAG]) >= 1


# ---------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"every_n_steps": 2.5}, "every_n_steps"),
        ({"every_n_steps": True}, "every_n_steps"),
        ({"iters": 0}, "iters"),
        ({"iters": "20"}, "iters"),
        ({"tol": 0.0}, "tol"),
        ({"tol": -1e-3}, "tol"),
        ({"tol": float("nan")}, "tol"),
        ({"loss_fn": "loss"}, "loss_fn"),
    ],
)
def test_bad_probe_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name) as error:
        StabilityProbe(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(error.value)


def test_bad_eigenvalue_arguments_name_the_argument():
    w = torch.ones(3, requires_grad=True)
    loss_fn = lambda: (w**2).sum()  # noqa: E731
    cases = [
        (dict(params=[]), "params"),
        (dict(params=[torch.ones(3)]), r"params\[0\]"),
        (dict(iters=0), "iters"),
        (dict(tol=0), "tol"),
        (dict(init=[torch.ones(2)]), "init"),
        (dict(init=[torch.zeros(3)]), "init"),
        (dict(preconditioner=[-torch.ones(3)]), "preconditioner"),
        (dict(shift=float("inf")), "shift"),
        (dict(loss_fn=lambda: w**2), "loss_fn"),
    ]
    for override, name in cases:
        kwargs = dict(loss_fn=loss_fn, params=[w]) | override
        with pytest.raises(ValueError, match=name):
            top_hessian_eigenvalue(**kwargs)
    with pytest.raises(ValueError, match="optimizer"):
        update_rule([w])
