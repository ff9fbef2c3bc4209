"""The example project's gates serially and under ``pytest -n 2``, with and without the
per-worker thread share, measured side by side (medians of interleaved repeats).

    python benchmarks/bench_xdist.py              # 3 repeats (about 2 minutes on 2 cores)
    python benchmarks/bench_xdist.py --repeats 5

Every row is a whole ``pytest`` process on a copy of ``example_project/`` (trained once,
first). Rows differ only in their options; none sets ``OMP_NUM_THREADS`` (the variable is
removed from the environment), so the plugin's own defaults are what is measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]

#: label -> extra pytest arguments; the first row is the reference of every ratio
ROWS = {
    "serial, library default threads (reference)": [],
    "serial, --advrobust-threads=1": ["--advrobust-threads=1"],
    "-n 2, each worker its share (default)": ["-n", "2"],
    "-n 2 --dist loadgroup (each model on one worker), its share": ["-n", "2", "--dist", "loadgroup"],
    "-n 2, --advrobust-threads=0 (every worker all cores: the old behaviour)":
        ["-n", "2", "--advrobust-threads=0"],
}


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTEST_ADVROBUST_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(PYTEST + args, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"pytest {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = environment()
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder) / "example_project"
        shutil.copytree(ROOT / "example_project", project,
                        ignore=shutil.ignore_patterns("models", ".advrobust", "__pycache__"))
        subprocess.run([sys.executable, "-m", "digits_demo.train"], cwd=project, env=env,
                       check=True, capture_output=True)
        timings: dict[str, list[float]] = {label: [] for label in ROWS}
        for _ in range(args.repeats):  # interleaved, so load from elsewhere hits every row alike
            for label, extra in ROWS.items():
                timings[label].append(timed(extra, project, env))
    reference = statistics.median(timings[next(iter(ROWS))])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"example project, whole pytest process, {cores} cores, median of {args.repeats}")
    print(f"{'row':<75} {'seconds':>8} {'ratio':>6}")
    for label, values in timings.items():
        median = statistics.median(values)
        print(f"{label:<75} {median:8.2f} {median / reference:6.2f}   "
              f"({', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
