"""What a fixed batch costs: the same small CNN exported with a dynamic batch and with a
fixed batch of 1, 8 and 64, gated by fgsm (2 eps) and pgd (10 steps) on 512 samples at the
default batch-size; medians of 3 runs on one thread. The figures must be identical.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/fixed_batch.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "models")]

CHECKS = ('[[tool.advrobust.checks]]\nattack = "fgsm"\nreport-only = true\neps = [0.05, 0.1]\n'
          '[[tool.advrobust.checks]]\nattack = "pgd"\nreport-only = true\neps = 0.1\nsteps = 10\n')


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from conftest import export_onnx
    from test_heads import SmallCnn, default_batch_session

    net = SmallCnn().eval()
    x = torch.rand(512, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1).numpy()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        export_onnx(net, torch.zeros(1, 1, 6, 6), folder / "dynamic.onnx")
        for size in (1, 8, 64):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(net, (torch.zeros(size, 1, 6, 6),), str(folder / f"fixed{size}.onnx"),
                                  dynamo=False, input_names=["x"], output_names=["y"])
        reference = None
        print("| export | median seconds | vs dynamic | fgsm 0.05, fgsm 0.1, pgd 0.1 |")
        for ref in ("dynamic.onnx", "fixed1.onnx", "fixed8.onnx", "fixed64.onnx"):
            times, figures = [], None
            for _ in range(3):
                session = default_batch_session(folder, ref, x.numpy(), y, CHECKS)
                started = time.perf_counter()
                figures = [r.accuracy for r in session.run_all()]
                times.append(time.perf_counter() - started)
            median = statistics.median(times)
            reference = reference or (median, figures)
            assert figures == reference[1], (ref, figures, reference[1])
            print(f"| {ref} | {median:.2f} | {median / reference[0]:.1f}x | "
                  + ", ".join(f"{a:.4f}" for a in figures) + " |")


if __name__ == "__main__":
    main()
