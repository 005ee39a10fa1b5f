"""benchmarks/gpu_check.py runs only where a GPU is lent, rarely: its three parts run here on the CPU with a
small model, so that a change to the measurement or the timing helpers cannot break it unnoticed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402


def test_gpu_check_runs_on_the_cpu(capsys):
    gpu_check.main(["--device", "cpu", "--width", "32", "--depth", "2", "--batch", "16", "--repeats", "1",
                    "--steps", "12", "--warmup", "2"])
    out = capsys.readouterr().out
    assert "no host sync raised" in out and "exactness (torch.bfloat16)" in out
    assert "| LRWatch() |" in out
