"""decide-early against measuring every gate on all its data, on one config with clear
passes, clear failures and one borderline gate: wall time, samples through the model
(forward and backward rows, counted by a wrapper), and whether every verdict agrees.

    python benchmarks/bench_decide_early.py            # 3 interleaved rounds (about 3 minutes on 2 cores)
    python benchmarks/bench_decide_early.py --rounds 1 # one round

The digits CNN of ``tests/digits_project.py`` (scikit-learn's bundled ``load_digits``, no
download) on its 540 held-out images, each also shifted by one pixel in the 8 directions:
4,860 evaluation samples, so decide-early's stages (128, 256, ..., 4,096) have room.
Medians over interleaved rounds, ratios early / full measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

MODEL = '''
import torch

#: rows through forward (a backward pass follows a forward), counted for the benchmark
ROWS = [0]


class Counting(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10))

    def forward(self, x):
        ROWS[0] += len(x)
        return self.inner(x)


def build():
    return Counting()
'''

#: clear passes (clean, fgsm 0.02, pgd 0.01, noise's drop), clear failures (fgsm 0.2, pgd
#: 0.1) and one borderline gate (pgd 0.03, its threshold set to its own figure: it must run
#: to the end)
CHECKS = '''
[[tool.advrobust.checks]]
attack = "clean"
min-accuracy = 0.6

[[tool.advrobust.checks]]
attack = "fgsm"
eps = [0.02, 0.2]
min-accuracy = 0.4

[[tool.advrobust.checks]]
attack = "noise"
eps = 0.1
max-drop = 0.25

[[tool.advrobust.checks]]
attack = "pgd"
eps = [0.01, 0.1]
steps = 10
min-accuracy = 0.6

[[tool.advrobust.checks]]
attack = "pgd"
eps = 0.03
steps = 10
min-accuracy = {borderline}
'''


def shifted(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Digits as 1x8x8 images, as they are and shifted by one pixel in each of the 8
    directions (zeros shifted in)."""
    images = x.reshape(-1, 1, 8, 8)
    out = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            moved = np.zeros_like(images)
            moved[:, :, max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)] = \
                images[:, :, max(-dy, 0):8 + min(-dy, 0), max(-dx, 0):8 + min(-dx, 0)]
            out.append(moved)
    return np.concatenate(out).astype(np.float32), np.tile(y, 9).astype(np.int64)


def trained_state() -> dict:
    """The digits CNN of ``tests/digits_project.py``, trained (fixed seed) on the shifted
    training split, so it classifies shifted digits too."""
    import torch

    from digits_project import build_cnn, digits_split

    x, y, _, _ = digits_split()
    xs, ys = (torch.from_numpy(a) for a in shifted(x, y))
    torch.manual_seed(0)
    model = build_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(xs), ys).backward()
        optimiser.step()
    return {f"inner.{k}": v.clone() for k, v in model.state_dict().items()}


def project(root: Path, borderline: float, state: dict) -> Path:
    import torch

    from digits_project import digits_split

    _, _, x_test, y_test = digits_split()
    x, y = shifted(x_test, y_test)
    np.savez(root / "digits.npz", x=x, y=y)
    (root / "benchmodel.py").write_text(MODEL)
    torch.save(state, root / "cnn.pt")
    (root / "pyproject.toml").write_text(textwrap.dedent('''
        [tool.advrobust]
        name = "cnn"
        model = "benchmodel:build"
        weights = "cnn.pt"
        data = "digits.npz"
        batch-size = 256
        ''') + textwrap.dedent(CHECKS.format(borderline=borderline)))
    return root / "pyproject.toml"


def run(path: Path, early: bool) -> tuple[float, int, dict]:
    """One evaluation: seconds, rows through the model, and each gate's result."""
    from pytest_advrobust.api import open_session

    session = open_session(path, conftest=False)
    session.judge.decide_early = early or False  # the command line's on / off
    sys.path.insert(0, str(path.parent))
    started = time.perf_counter()
    results = session.run_all()
    seconds = time.perf_counter() - started
    rows = sys.modules["benchmodel"].ROWS
    counted, rows[0] = rows[0], 0
    return seconds, counted, {r.label: r for r in results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        state = trained_state()
        probe = project(root, 0.0, state)
        _, _, measured = run(probe, early=False)
        borderline = round(measured["pgd eps=0.03 on cnn"].accuracy, 3)
        path = project(root, borderline, state)  # pgd 0.03's threshold at its own figure
        times: dict[bool, list[float]] = {True: [], False: []}
        rows: dict[bool, int] = {}
        results: dict[bool, dict] = {}
        for _ in range(args.rounds):
            for early in (True, False):  # interleaved
                seconds, counted, got = run(path, early)
                times[early].append(seconds)
                rows[early], results[early] = counted, got
    print(f"{len(results[False])} gates on 4,860 samples; pgd eps=0.03's min-accuracy set to its "
          f"own figure, {borderline:.3f} (borderline)")
    print(f"{'gate':<30} {'full':>22} {'decide-early':>36}")
    agree = True
    for label, full in results[False].items():
        early = results[True][label]
        agree &= early.status == full.status
        where = early.decided_after or f"all {early.n:,}"
        print(f"{label:<30} {full.status:>8} {full.accuracy:.3f} n={full.n:<5} "
              f"{early.status:>8} {early.accuracy:.3f} {where:>24}")
    full_t, early_t = statistics.median(times[False]), statistics.median(times[True])
    print(f"wall time, median of {args.rounds}: full {full_t:.2f} s, decide-early {early_t:.2f} s, "
          f"ratio {early_t / full_t:.2f}")
    print(f"rows through the model: full {rows[False]:,}, decide-early {rows[True]:,}, "
          f"ratio {rows[True] / rows[False]:.2f}")
    print(f"verdicts agree: {'yes' if agree else 'NO'}")
    if not agree:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
