"""The default thread count against every fixed one, on the machine as found and under a
competing load (medians of interleaved rounds; whole ``pytest`` processes).

    python benchmarks/bench_threads.py                 # 3 rounds, both workloads
    python benchmarks/bench_threads.py --rounds 5 --workload cnn

Rows: the plugin's default (nothing set), and ``--advrobust-threads=N`` for N = 1 .. the
CPUs in this process's affinity. Conditions: "as found" (whatever else runs on the machine)
and "competing load" (as many busy-looping processes as there are CPUs, started by this
script for those rows). Every round runs every row of every condition once, so load from
elsewhere hits them alike. The ratio is each row's median over the best row's median in
the same condition: the claim is that the default stays within 1.10 of the best in both.
None of the rows sets ``OMP_NUM_THREADS`` (the variable is removed), so the plugin's own
default is what the first row measures; the thread count it chose is read from the
``advrobust: threads`` line of pytest's header.

Workloads: ``example``, the example project's gates (the digits MLP, its ONNX export, a
scikit-learn model; 9 gates incl. pgd, universal, transfer, spsa), and ``cnn``, a small CNN
on 2000 synthetic 3x32x32 images with a clean check and an FGSM sweep over 3 eps.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist"]
BUSY = "while True:\n    pass\n"


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTEST_ADVROBUST_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def example_project(folder: Path, env: dict[str, str]) -> tuple[Path, list[str]]:
    project = folder / "example_project"
    shutil.copytree(ROOT / "example_project", project,
                    ignore=shutil.ignore_patterns("models", ".advrobust", "__pycache__"))
    subprocess.run([sys.executable, "-m", "digits_demo.train"], cwd=project, env=env, check=True,
                   capture_output=True)
    return project, ["-m", "advrobust"]


def cnn_project(folder: Path, env: dict[str, str]) -> tuple[Path, list[str]]:
    from workload import images, sweep_project, write_model

    x, y = images(2000)
    write_model(folder, x, y)
    project = sweep_project(folder / "cnn", x, y, model="benchmodel:build", eps=[0.01, 0.02, 0.03],
                            batch_size=250)
    return project, []


WORKLOADS = {"example": example_project, "cnn": cnn_project}


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(PYTEST + args, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: a gate failed, which the timing does not mind
        raise SystemExit(f"pytest {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    header = re.search(r"^advrobust: threads: (\d+|the libraries' default) .*$", done.stdout, re.M)
    return seconds, header.group(0) if header else "(no header line)"


class Load:
    """``count`` busy-looping processes while the block runs: the competing load."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> "Load":
        self.processes = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(self.count)]
        time.sleep(1.0)  # let them take the CPUs before the row's process starts
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append")
    args = parser.parse_args()
    env = environment()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rows = {"default (nothing set)": []}
    rows.update({f"--advrobust-threads={n}": [f"--advrobust-threads={n}"] for n in range(1, cpus + 1)})
    conditions = {"as found": 0, f"competing load ({cpus} busy processes)": cpus}
    for name in args.workload or sorted(WORKLOADS):
        with tempfile.TemporaryDirectory() as folder:
            project, extra = WORKLOADS[name](Path(folder), env)
            timings = {(c, r): [] for c in conditions for r in rows}
            chosen = {c: set() for c in conditions}
            loads = {c: [] for c in conditions}
            for _ in range(args.rounds):
                for condition, busy in conditions.items():
                    with Load(busy):
                        loads[condition].append(os.getloadavg()[0])
                        for row, options in rows.items():
                            seconds, header = timed(extra + options, project, env)
                            timings[(condition, row)].append(seconds)
                            if not options:
                                chosen[condition].add(header)
        print(f"\nworkload {name}: whole pytest process, {cpus} CPUs, median of {args.rounds} "
              "interleaved rounds")
        for condition in conditions:
            medians = {row: statistics.median(timings[(condition, row)]) for row in rows}
            best = min(medians.values())
            print(f"  {condition} (1-min load average at its rounds: "
                  f"{', '.join(f'{v:.1f}' for v in loads[condition])})")
            for line in sorted(chosen[condition]):
                print(f"    default chose: {line}")
            for row, median in medians.items():
                values = ", ".join(f"{v:.1f}" for v in timings[(condition, row)])
                print(f"    {row:<28} {median:7.2f} s  x{median / best:5.2f} of best   ({values})")


if __name__ == "__main__":
    main()
