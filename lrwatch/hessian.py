"""Top eigenvalue of a loss Hessian by power iteration on Hessian-vector products, and the stability ceiling
that an optimizer's update rule puts on it.

The probe behind ``lrwatch.StabilityProbe``: the sharpness λ_max that decides whether a step size is stable
(on a quadratic, gradient descent contracts along curvature λ iff η·λ < 2). Torch only, no Lightning.

How: the gradient g = ∇L(w) is taken once with ``create_graph=True``; each Hessian-vector product is then
H·v = ∇_w (g·v), a second backward through that same graph (``retain_graph=True``), so a probe of k iterations
costs one forward, one backward and k double-backwards. Everything uses ``torch.autograd.grad``: the
parameters' ``.grad`` are never read or written and no optimizer is touched, so probing does not change training.

The probe runs on the parameters' device but is not asynchronous: the relative-tolerance test reads the
Rayleigh quotient on the host once per iteration (a device sync each time). It is meant to run every N steps,
outside the step path, never on every step.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Vector = list[Tensor]  # one tensor per parameter, same shapes: a vector in parameter space


def top_hessian_eigenvalue(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    iters: int = 20,
    tol: float = 1e-4,
    init: Sequence[Tensor] | None = None,
    *,
    preconditioner: Sequence[Tensor] | None = None,
    shift: float = 0.0,
    seed: int = 0,
) -> tuple[float, Vector, int]:
    """Largest-magnitude eigenvalue of the Hessian of ``loss_fn()`` w.r.t. ``params``, by power iteration.

    Power iteration converges to the eigenvalue of largest *magnitude*, which is λ_max only when the Hessian is
    dominated by positive curvature. When a negative eigenvalue dominates (near a saddle, or a concave region)
    the result is that negative eigenvalue, sign kept; to get the largest positive eigenvalue then, call again
    with ``shift`` set to it (the iteration runs on H − shift·I, whose dominant eigenvalue is λ_max − shift).
    Convergence is geometric in |λ₂/λ₁|: with a small gap, or ±λ of equal magnitude, ``iters`` bounds the cost
    and the estimate is a lower bound on |λ₁| (a Rayleigh quotient never exceeds it).

    Args:
        loss_fn: closure returning the scalar loss (0-d tensor) at the current parameters; called exactly once.
        params: the tensors to differentiate with respect to (they must require grad, on one device);
            parameters the loss does not use contribute zero rows and columns.
        iters: most Hessian-vector products (≥ 1).
        tol: stop when successive Rayleigh quotients differ by at most ``tol`` times the latest (relative, > 0).
        init: starting vector (same shapes as ``params``), e.g. the vector returned by the previous probe, which
            makes a probe every N steps converge in a few iterations while the curvature drifts slowly.
            Default: a Gaussian vector from a private generator seeded by ``seed`` (the global RNG is untouched).
        preconditioner: optional positive diagonal P (tensors shaped like ``params``). The iteration then runs
            on P^{-1/2} H P^{-1/2}, which has the eigenvalues of P⁻¹H: the curvature an update w ← w − η P⁻¹g
            experiences (Adam, RMSprop, per-group learning rates). Vectors (``init``, the returned one) live in
            these scaled coordinates.
        shift: s in H − s·I (or P^{-1/2}HP^{-1/2} − s·I); the returned eigenvalue has it added back.
        seed: seed of the default starting vector.

    Returns:
        ``(eigval, vec, n_iters)``: the eigenvalue estimate (float, in loss units per parameter unit squared, or
        per lr unit when preconditioned), the unit-norm iterate (list of tensors shaped like ``params``; pass it
        back as ``init``), and the number of Hessian-vector products used (``n_iters == iters`` means the
        tolerance was not reached, or reached only on the last one).
    """
    params = list(params)
    _check_args(params, iters, tol, init, preconditioner, shift)
    with torch.enable_grad():
        loss = loss_fn()
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar (0-d) tensor, got {_describe(loss)}")
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    dtype = functools.reduce(torch.promote_types, (p.dtype for p in params), torch.float32)  # iterate in ≥ fp32
    inv_sqrt_p = None
    if preconditioner is not None:
        flat_p = _flatten(preconditioner, dtype)
        if not bool(torch.all((flat_p > 0) & torch.isfinite(flat_p))):  # one sync, not one per tensor
            raise ValueError(f"preconditioner must be finite and > 0 everywhere, got min {float(flat_p.min())}")
        inv_sqrt_p = flat_p.rsqrt()
    vec = _flatten(init, dtype) if init is not None else _gaussian(params, dtype, seed)
    norm = float(vec.norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(f"init must be a finite, non-zero vector, got norm {norm}")
    vec = vec / norm
    previous = None
    for n_iters in range(1, iters + 1):
        product = _operator(grads, params, vec, inv_sqrt_p, shift, dtype)
        rayleigh, squared_norm = torch.stack([vec @ product, product @ product]).tolist()  # one host sync
        if squared_norm == 0.0:  # vec is in the null space of the shifted operator: its eigenvalue is exactly 0
            return shift, _unflatten(vec, params), n_iters
        vec = product / math.sqrt(squared_norm)
        if previous is not None and abs(rayleigh - previous) <= tol * abs(rayleigh):
            break
        previous = rayleigh
    return rayleigh + shift, _unflatten(vec, params), n_iters


def hessian_vector_product(
    grads: Sequence[Tensor | None], params: Sequence[Tensor], vec: Sequence[Tensor]
) -> Vector:
    """H·vec from gradients taken with ``create_graph=True``; the graph is retained for the next product.

    Gradients that are ``None`` or constant in the parameters (a loss linear in them) have zero Hessian rows.
    """
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    if not live:
        return [torch.zeros_like(p) for p in params]
    products = torch.autograd.grad(
        [grads[i] for i in live],
        params,
        grad_outputs=[vec[i] for i in live],
        retain_graph=True,
        allow_unused=True,
    )
    return [torch.zeros_like(p) if hv is None else hv.detach() for p, hv in zip(params, products)]


def _operator(grads, params, vec: Tensor, inv_sqrt_p: Tensor | None, shift: float, dtype) -> Tensor:
    """(P^{-1/2} H P^{-1/2} − shift·I)·vec on flat vectors (one Python-level op per step, not per parameter)."""
    scaled = vec if inv_sqrt_p is None else vec * inv_sqrt_p
    product = _flatten(hessian_vector_product(grads, params, _unflatten(scaled, params)), dtype)
    if inv_sqrt_p is not None:
        product = product * inv_sqrt_p
    return product - shift * vec if shift else product


def _flatten(tensors: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    return torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])


def _unflatten(flat: Tensor, params: Sequence[Tensor]) -> Vector:
    chunks = flat.split([p.numel() for p in params])
    return [c.view(p.shape).to(p.dtype) for c, p in zip(chunks, params)]


def _gaussian(params: list[Tensor], dtype: torch.dtype, seed: int) -> Tensor:
    device = params[0].device
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(sum(p.numel() for p in params), generator=generator, device=device, dtype=dtype)


def _check_args(params, iters, tol, init, preconditioner, shift) -> None:
    if not params:
        raise ValueError("params must hold at least one tensor, got an empty sequence")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor) or not p.requires_grad:
            raise ValueError(f"params[{i}] must be a tensor that requires grad, got {_describe(p)}")
        if p.device != params[0].device:
            raise ValueError(
                f"params must all be on one device, got params[0] on {params[0].device}, params[{i}] on {p.device}"
            )
    if isinstance(iters, bool) or not isinstance(iters, numbers.Integral) or iters < 1:
        raise ValueError(f"iters must be an int >= 1, got {iters!r}")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol > 0 or not math.isfinite(tol):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    if isinstance(shift, bool) or not isinstance(shift, numbers.Real) or not math.isfinite(shift):
        raise ValueError(f"shift must be a finite number, got {shift!r}")
    for name, vec in (("init", init), ("preconditioner", preconditioner)):
        if vec is None:
            continue
        vec = list(vec)
        if len(vec) != len(params) or any(not isinstance(t, Tensor) or t.shape != p.shape for t, p in zip(vec, params)):
            shapes = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in vec]
            raise ValueError(
                f"{name} must hold one tensor per parameter with its shape "
                f"{[tuple(p.shape) for p in params]}, got {shapes}"
            )


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)} (requires_grad={value.requires_grad})"
    return repr(value)


@dataclass(frozen=True)
class UpdateRule:
    """The stability model of an optimizer's update at its current state: the probe measures λ_max(P⁻¹H).

    Near a minimum, with the adaptive state held fixed, every modelled update is linear in w on a quadratic
    of Hessian H, and it contracts along every direction iff λ_max(P⁻¹H) < ``ceiling``. The characteristic
    polynomial of heavy-ball momentum b ← βb + g, w ← w − h·b along curvature λ (h = effective lr times λ) is
    z² − (1+β−h)z + β: a root leaves the unit circle at z = −1 when h = 2(1+β). PyTorch's Nesterov form gives
    z² − (1+β)(1−h)z + β(1−h), unstable from h = 2(1+β)/(1+2β). Adam's m = (1−β₁)b with the bias corrections
    makes it heavy-ball on P = (1−β₁ᵗ)(diag √v̂ + ε) with effective lr η(1−β₁), hence the ceiling
    (2+2β₁)/((1−β₁)η) of Cohen et al., "Adaptive gradient methods at the edge of stability" (2022).

    | optimizer                     | P (diagonal, per parameter)                | ceiling (1/lr units)     |
    |-------------------------------|--------------------------------------------|--------------------------|
    | SGD                           | η_ref/η_g                                  | 2/η_ref                  |
    | SGD, momentum β, dampening d  | η_ref/η_g                                  | 2(1+β)/((1−d)η_ref)      |
    | SGD, Nesterov β               | η_ref/η_g                                  | 2(1+β)/((1+2β)η_ref)     |
    | Adam, AdamW (β₁, β₂, ε, t)    | (1−β₁ᵗ)(√(v/(1−β₂ᵗ)) + ε)·η_ref/η_g        | (2+2β₁)/((1−β₁)η_ref)    |
    | RMSprop, momentum β ≥ 0       | (√v + ε)·η_ref/η_g (centered: √(v−ḡ²) + ε) | 2(1+β)/η_ref             |

    η_g is the lr of the parameter's group and η_ref the lr of group 0 (the first group with a non-zero lr),
    so different group lrs are exact, not averaged. Weight decay is left out: L2 decay adds its coefficient
    to every curvature, decoupled decay only contracts; both are small next to λ_max at usual settings.
    Other optimizers are ``"unmodelled"``: the probe then measures the plain Hessian and there is no ceiling.

    Attributes:
        name: "sgd" | "heavy_ball" | "nesterov" | "adam" | "rmsprop" | "unmodelled".
        params: the parameters the update moves (trainable, in a group with lr > 0; for Adam and RMSprop
            only those with optimizer state, i.e. that have been stepped).
        preconditioner: P, one positive tensor per parameter, or None for P = I.
        ceiling: the bound on λ_max(P⁻¹H); None when unmodelled, inf when every lr is 0.
        lr: η_ref, the lr the ceiling is expressed in.
        group_lrs: the lr of every param group, in order.
        note: one line saying what the model is (or why there is none).
    """

    name: str
    params: tuple[Tensor, ...]
    preconditioner: tuple[Tensor, ...] | None
    ceiling: float | None
    lr: float
    group_lrs: tuple[float, ...]
    note: str


def update_rule(optimizer: torch.optim.Optimizer) -> UpdateRule:
    """The :class:`UpdateRule` of ``optimizer`` as it stands now (reads its param groups and state, changes nothing)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    group_lrs = tuple(float(g["lr"]) for g in optimizer.param_groups)
    lr_ref = next((lr for lr in group_lrs if lr > 0), 0.0)
    moving = [(g, lr) for g, lr in zip(optimizer.param_groups, group_lrs) if lr > 0]
    if isinstance(optimizer, torch.optim.SGD):
        model = _sgd_model
    elif isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        model = _adam_model
    elif isinstance(optimizer, torch.optim.RMSprop):
        model = _rmsprop_model
    else:
        model = _unmodelled
    name, pairs, ceiling_times_lr, note = model(optimizer, moving, lr_ref)
    params = tuple(p for p, _ in pairs)
    preconditioner = None if all(pc is None for _, pc in pairs) else tuple(
        torch.ones_like(p) if pc is None else pc for p, pc in pairs
    )
    if ceiling_times_lr is None:
        ceiling = None
    else:
        ceiling = ceiling_times_lr / lr_ref if lr_ref > 0 else math.inf
    return UpdateRule(name, params, preconditioner, ceiling, lr_ref, group_lrs, note)


# Each model returns (name, [(param, P or None)], ceiling·η_ref or None, note).


def _sgd_model(optimizer, moving, lr_ref):
    momentum = _uniform(optimizer, ("momentum", "dampening", "nesterov"))
    if momentum is None:
        return _unmodelled(optimizer, moving, lr_ref, "SGD groups differ in momentum, dampening or nesterov")
    beta, dampening, nesterov = (float(momentum[0]), float(momentum[1]), bool(momentum[2]))
    pairs = [(p, _lr_scale(p, lr_ref, lr)) for g, lr in moving for p in g["params"] if p.requires_grad]
    if beta == 0:
        return "sgd", pairs, 2.0, "SGD: λ_max(H) against 2/η"
    if nesterov:
        return "nesterov", pairs, 2 * (1 + beta) / (1 + 2 * beta), f"SGD Nesterov β={beta:g}: 2(1+β)/((1+2β)η)"
    return "heavy_ball", pairs, 2 * (1 + beta) / (1 - dampening), f"SGD momentum β={beta:g}: 2(1+β)/((1−d)η)"


def _adam_model(optimizer, moving, lr_ref):
    betas = _uniform(optimizer, ("betas",))
    if betas is None:
        return _unmodelled(optimizer, moving, lr_ref, "Adam groups differ in β₁")
    beta1 = float(betas[0][0])
    if any(float(g["eps"]) <= 0 for g, _ in moving):
        return _unmodelled(optimizer, moving, lr_ref, "Adam with eps=0 has no bounded preconditioner")
    pairs = []
    for g, lr in moving:
        beta2, eps = float(g["betas"][1]), float(g["eps"])
        for p in g["params"]:
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" not in state:
                continue
            t = float(state["step"])
            v = state["max_exp_avg_sq"] if g.get("amsgrad", False) else state["exp_avg_sq"]
            p_diag = (1 - beta1**t) * ((v / (1 - beta2**t)).sqrt() + eps) * (lr_ref / lr)
            pairs.append((p, p_diag.detach()))
    note = f"Adam β₁={beta1:g}: λ_max(P⁻¹H) against (2+2β₁)/((1−β₁)η)"
    return "adam", pairs, (2 + 2 * beta1) / (1 - beta1), note


def _rmsprop_model(optimizer, moving, lr_ref):
    momentum = _uniform(optimizer, ("momentum",))
    if momentum is None:
        return _unmodelled(optimizer, moving, lr_ref, "RMSprop groups differ in momentum")
    beta = float(momentum[0])
    if any(float(g["eps"]) <= 0 for g, _ in moving):
        return _unmodelled(optimizer, moving, lr_ref, "RMSprop with eps=0 has no bounded preconditioner")
    pairs = []
    for g, lr in moving:
        for p in g["params"]:
            state = optimizer.state.get(p, {})
            if "square_avg" not in state:
                continue
            v = state["square_avg"]
            if g.get("centered", False):
                v = v - state["grad_avg"] ** 2
            pairs.append((p, ((v.clamp_min(0).sqrt() + float(g["eps"])) * (lr_ref / lr)).detach()))
    return "rmsprop", pairs, 2 * (1 + beta), f"RMSprop momentum β={beta:g}: λ_max(P⁻¹H) against 2(1+β)/η"


def _unmodelled(optimizer, moving, lr_ref, why=None):
    note = why or f"no stability model for {type(optimizer).__name__}"
    pairs = [(p, None) for g, _ in moving for p in g["params"] if p.requires_grad]
    return "unmodelled", pairs, None, f"{note}: plain λ_max(H), no ceiling"


def _uniform(optimizer, keys):
    """The values of ``keys`` if every param group has the same ones, else None."""
    values = {tuple(_hashable(g.get(k)) for k in keys) for g in optimizer.param_groups}
    return next(iter(values)) if len(values) == 1 else None


def _hashable(value):
    """Group hyperparameters may be tensors (lr, betas); compare them by value."""
    if isinstance(value, (tuple, list)):
        return tuple(_hashable(x) for x in value)
    return float(value) if isinstance(value, Tensor) else value


def _lr_scale(param: Tensor, lr_ref: float, lr: float) -> Tensor | None:
    return None if lr == lr_ref else torch.full_like(param, lr_ref / lr).detach()
