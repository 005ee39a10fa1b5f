"""Time ``lrwatch.analyze`` on one million steps (a benchmark, not a test).

The series is a realistic StepLR run: lr 0.1 dropped 10x every 300k steps, displacement
m_t = lr_t * g_t with a gradient norm shrinking 3x over the run under lognormal minibatch noise
(CV 0.4), and a loss decaying to a noisy floor. Prints the best of ``--repeat`` wall-clock times for
each combination of inputs, and the time per chunk when the same run is fed in flushes of 50 steps.

    python benchmarks/analyze_speed.py [--steps 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lrwatch.diagnosis import Analyzer, analyze


def step_run(steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Displacement, loss, lr, grad-norm and descent series of a synthetic SGD StepLR run of ``steps`` steps
    (descent = lr x grad_norm², SGD's)."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    lr = 0.1 * 0.1 ** (t // 300_000)
    sigma = np.sqrt(np.log(1 + 0.4**2))
    grad_norm = 3.0 ** (-t / steps) * rng.lognormal(-sigma**2 / 2, sigma, steps)
    loss = 0.5 + 2.0 * np.exp(-t / 50_000) * (lr / 0.1) ** 0.3 + 0.1 * rng.standard_normal(steps) ** 2
    return {"displacement": lr * grad_norm, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "descent": lr * grad_norm**2}


def best_time(call, repeat: int) -> float:
    """Least wall-clock seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    run = step_run(args.steps)
    m = run["displacement"]
    variants = {
        "displacement": {},
        "displacement+loss": {"loss": run["loss"]},
        "displacement+loss+lr": {"loss": run["loss"], "lr": run["lr"]},
        "+grad_norm": {"loss": run["loss"], "lr": run["lr"], "grad_norm": run["grad_norm"]},
        "all (as LRWatch)": {"loss": run["loss"], "lr": run["lr"], "grad_norm": run["grad_norm"],
                             "descent": run["descent"], "momentum": np.zeros(args.steps)},
    }
    print(f"analyze on {args.steps} steps (best of {args.repeat}):")
    for name, extra in variants.items():
        seconds = best_time(lambda: analyze(m, **extra), args.repeat)
        report = analyze(m, **extra)
        print(f"  {name:22s} {seconds:6.3f} s  schedule={report.schedule.kind} drops={report.schedule.drops} "
              f"diagnoses={[(d.kind, d.start) for d in report.diagnoses][:4]}")
    chunk = 50
    n = min(args.steps, 200_000)

    def streamed():
        analyzer = Analyzer()
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            analyzer.update(m[part], loss=run["loss"][part], lr=run["lr"][part], grad_norm=run["grad_norm"][part],
                            descent=run["descent"][part], momentum=np.zeros(len(run["lr"][part])))
        analyzer.report()

    seconds = best_time(streamed, 1)
    print(f"streamed in chunks of {chunk}: {seconds / (n // chunk) * 1e6:.0f} us per update ({n} steps)")


if __name__ == "__main__":
    main()
