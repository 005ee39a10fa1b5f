"""One short check for a lent GPU (about 3 minutes): no host sync between flushes, and the overhead
ratio on a ~100M-parameter model. Not part of CI.

Run from the repository root on the GPU machine (its image has torch, pytorch-lightning, tensorboard):

    python3 benchmarks/gpu_check.py      (lrwatch importable: PYTHONPATH=. from the repo root)

``--device cpu`` runs the same three parts on the CPU with a small model (no sync-debug mode there):
tests/test_gpu_check.py does, so that the script cannot break unnoticed between lent GPUs.

1. Sync proof: a plain training loop with a StepMeter attached runs under
   ``torch.cuda.set_sync_debug_mode("error")``; any host sync inside the step path (ours or the loop's)
   raises. Steps that rotate the ring are included: the copy is non-blocking and its read is deferred
   one ring. ``finish()`` (which does synchronise) runs after the mode is reset.
2. Exactness on the device: displacement and descent −⟨Δw, g⟩ of a few Adam steps, float32 and bf16
   parameters, against an independent float64 computation from flat copies (the fused CUDA foreach
   kernels are not the CPU ones the test suite checks), before and after the polarization scale is known.
3. Overhead: bare Lightning vs LearningRateMonitor vs LRWatch() vs LRWatch(every_n_steps=10), a
   ~101M-parameter MLP (6 layers of 4096x4096, Adam, bf16-mixed), interleaved repeats, ratios of median
   and mean step times (the step timer synchronises the device at each batch start, for timing only).
"""

from __future__ import annotations

import argparse
import warnings

import torch

from _timing import MLP, OVERHEAD_ARMS, interleaved, ratio_table, size_arguments, synthetic_loader
from lrwatch.measure import StepMeter


def _sync_debug(device: torch.device, mode: str) -> None:
    """CUDA's sync-debug mode ("error": any host sync raises); nothing to set on other devices."""
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode(mode)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sync_proof(device: torch.device, width: int = 1024, steps: int = 120, flush_every: int = 16) -> None:
    model = MLP(width, 4).to(device)
    # capturable: Adam itself never syncs (it is a CUDA-only option)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, capturable=device.type == "cuda")
    meter = StepMeter(optimizer, flush_every=flush_every).attach()
    x = torch.randn(256, width, device=device)
    for _ in range(3):  # warm-up outside the checked region (lazy state init)
        loss = model.training_step((x,), 0)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
    _synchronize(device)
    drained = 0
    _sync_debug(device, "error")
    try:
        for _ in range(steps):
            loss = model.training_step((x,), 0)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            optimizer.step()
            meter.assign_loss(loss.detach())
            drained += len(meter.drain())  # each chunk is handed over once
    finally:
        _sync_debug(device, "default")
    records = meter.finish()
    assert drained + len(records) == steps + 3, (drained, len(records))
    print(f"sync proof: {steps} steps, flush_every={flush_every}, ring rotated {steps // flush_every} times, "
          f"no host sync raised; last displacement {records.displacement[-1]:.3e}")


def exactness_check(device: torch.device, width: int = 512, steps: int = 12) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        model = MLP(width, 3).to(device, dtype)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        meter = StepMeter(optimizer, flush_every=4).attach()
        params = [p for p in model.parameters() if p.requires_grad]
        x = torch.randn(128, width, device=device, dtype=dtype)
        expected = []
        for _ in range(steps):
            loss = model.training_step((x,), 0)
            optimizer.zero_grad()
            loss.backward()
            before = torch.cat([p.detach().double().flatten() for p in params])
            grad = torch.cat([p.grad.detach().double().flatten() for p in params])
            optimizer.step()
            step = torch.cat([p.detach().double().flatten() for p in params]) - before
            expected.append((float(step.norm()), -float(step @ grad), float(step.norm() * grad.norm())))
        records = meter.finish()
        worst_m = max(abs(m - e[0]) / e[0] for m, e in zip(records.displacement, expected))
        worst_d = max(abs(d - e[1]) / e[2] for d, e in zip(records.descent, expected))
        print(f"exactness ({dtype}): displacement rel. error {worst_m:.1e}, descent error / (|dw||g|) {worst_d:.1e}")
        # float32 reductions over ~0.8M elements: ~1e-5 relative (the CPU's are 1.3e-5 on this model)
        assert worst_m <= 1e-4 and worst_d <= 1e-4, (worst_m, worst_d)


def overhead(device: torch.device, repeats: int, steps: int, warmup: int, width: int, depth: int, batch: int) -> None:
    loader = synthetic_loader(width, batch, steps, device="cpu")
    n_params = sum(p.numel() for p in MLP(width, depth).parameters())
    times = interleaved(OVERHEAD_ARMS, lambda: MLP(width, depth), loader, repeats, steps, warmup,
                        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision="bf16-mixed")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}: {n_params / 1e6:.1f}M parameters, batch {batch}, bf16-mixed, "
          f"{repeats} repeats x {steps - warmup - 1} timed steps per arm")
    print(ratio_table(times, "bare"))


def main(argv: list[str] | None = None) -> None:
    parser = size_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                            repeats=3, steps=80, warmup=15, batch=4096, width=4096, depth=6)
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the script)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device")
    warnings.filterwarnings("ignore")
    sync_proof(device, width=min(1024, args.width))
    exactness_check(device, width=min(512, args.width))
    overhead(device, args.repeats, args.steps, args.warmup, args.width, args.depth, args.batch)


if __name__ == "__main__":
    main()
