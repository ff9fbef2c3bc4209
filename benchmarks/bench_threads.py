"""The default thread count against every fixed one, on the machine as found and under a
competing load (medians of interleaved rounds).

    python benchmarks/bench_threads.py                 # 5 rounds, both workloads
    python benchmarks/bench_threads.py --rounds 7 --workload cnn

Each timing is one full evaluation of a project's gates in this process (a fresh session:
model load, data, every gate; what a pytest run spends on the gates, without pytest's
start-up, whose noise would drown the differences). Rows: ``default``, the thread count the
plugin would choose at that moment (it samples the machine for 0.1 s, as a run does at its
start, and that tenth of a second is counted), and ``N threads`` for N = 1 .. the CPUs in
this process's affinity. Threads are set as the plugin sets them (``threads.apply``: torch
and new onnxruntime sessions). Conditions: "as found" (whatever else runs on the machine)
and "competing load" (as many busy-looping processes as there are CPUs, started by this
script). Every round runs every row of every condition once, so load from elsewhere hits
the rows alike. Ratios are each row's median over the best row's median in the same
condition; the claim is that the default stays within 1.10 of the best in both.

Workloads: ``cnn``, a small CNN on 2000 synthetic 3x32x32 images (clean and an FGSM sweep
over 3 eps; ``benchmarks/workload.py``), and ``example``, the example project's 17 gates
(the digits MLP, its ONNX export, a scikit-learn model; pgd, universal, transfer, spsa).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
BUSY = "while True:\n    pass\n"


def example_project(folder: Path) -> Path:
    project = folder / "example_project"
    shutil.copytree(ROOT / "example_project", project,
                    ignore=shutil.ignore_patterns("models", ".advrobust", "__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "digits_demo.train"], cwd=project, env=env, check=True,
                   capture_output=True)
    sys.path.insert(0, str(project))
    return project / "pyproject.toml"


def cnn_project(folder: Path) -> Path:
    from workload import images, sweep_project, write_model

    x, y = images(2000)
    write_model(folder, x, y)
    project = sweep_project(folder / "cnn", x, y, model="benchmodel:build", eps=[0.01, 0.02, 0.03],
                            batch_size=250)
    sys.path.insert(0, str(project))
    return project / "pyproject.toml"


WORKLOADS = {"cnn": cnn_project, "example": example_project}


def evaluation(path: Path, threads_now: int) -> float:
    """Seconds for every gate of ``path``, run with ``threads_now`` threads."""
    from pytest_advrobust import threads
    from pytest_advrobust.api import open_session

    threads.apply(threads_now)
    started = time.perf_counter()
    open_session(path).run_all()
    return time.perf_counter() - started


def default_choice() -> tuple[int, float, str]:
    """What the plugin would choose now with nothing set, the seconds choosing took, why."""
    from pytest_advrobust import threads

    started = time.perf_counter()
    choice = threads.choose(None, {}, workers=None, cores=threads.usable_cores)
    return int(choice.threads), time.perf_counter() - started, choice.why


class Load:
    """``count`` busy-looping processes while the block runs: the competing load."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> "Load":
        self.processes = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(self.count)]
        if self.count:
            time.sleep(1.0)  # let them take the CPUs first
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append")
    args = parser.parse_args()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTEST_ADVROBUST_THREADS"):
        os.environ.pop(name, None)
    import torch  # noqa: F401  (loaded before the first timing)

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rows = ["default"] + [f"{n} thread{'s' if n > 1 else ''}" for n in range(1, cpus + 1)]
    conditions = {"as found": 0, f"competing load ({cpus} busy processes)": cpus}
    for name in args.workload or sorted(WORKLOADS):
        with tempfile.TemporaryDirectory() as folder:
            path = WORKLOADS[name](Path(folder))
            evaluation(path, 1)  # warm-up: imports, first loads
            timings = {(c, r): [] for c in conditions for r in rows}
            chosen: dict[str, collections.Counter] = {c: collections.Counter() for c in conditions}
            loads = {c: [] for c in conditions}
            for _ in range(args.rounds):
                for condition, busy in conditions.items():
                    with Load(busy):
                        loads[condition].append(os.getloadavg()[0])
                        for n, row in enumerate(rows):
                            if n == 0:
                                count, choosing, why = default_choice()
                                chosen[condition][f"{count} ({why})"] += 1
                                timings[(condition, row)].append(choosing + evaluation(path, count))
                            else:
                                timings[(condition, row)].append(evaluation(path, n))
        print(f"\nworkload {name}: every gate in one process, {cpus} CPUs, median of {args.rounds} "
              "interleaved rounds")
        for condition in conditions:
            medians = {row: statistics.median(timings[(condition, row)]) for row in rows}
            best = min(medians.values())
            print(f"  {condition} (1-min load average at its rounds: "
                  f"{', '.join(f'{v:.1f}' for v in loads[condition])})")
            for line, times in chosen[condition].most_common():
                print(f"    default chose {line}: {times} of {args.rounds} rounds")
            for row, median in medians.items():
                values = ", ".join(f"{v:.2f}" for v in timings[(condition, row)])
                print(f"    {row:<10} {median:7.2f} s  x{median / best:5.2f} of best   ({values})")


if __name__ == "__main__":
    main()
