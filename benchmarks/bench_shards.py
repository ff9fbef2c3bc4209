"""Wall time of one evaluation run whole against the same evaluation in N shards
(``--advrobust-shard=K/N``), and a check that the merge gives the unsharded JSON exactly.

    python benchmarks/bench_shards.py                 # 3000 images, 3 shards
    python benchmarks/bench_shards.py --samples 600 --quick

Reported, medians over repeats (interleaved, so load from elsewhere hits all alike):
- ``whole``: one pytest run over all the samples;
- ``slowest shard alone``: each shard run by itself, the slowest of them: what a CI matrix
  with one runner per shard waits for (plus the merge);
- ``N shards at once here``: all shards started together on this machine (they share its
  cores: on a 2-core machine this is no faster than ``whole``);
- ``merge``: ``python -m pytest_advrobust merge``.

Everything is built locally under a temporary folder (synthetic 3x32x32 images, a small
CNN): nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workload  # noqa: E402

PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "advrobust"]

CHECKS = '''
[[tool.advrobust.checks]]
attack = "clean"
min-accuracy = 0.0

[[tool.advrobust.checks]]
attack = "fgsm"
eps = [0.01, 0.03]
min-accuracy = 0.0

[[tool.advrobust.checks]]
attack = "noise"
eps = 0.03
min-accuracy = 0.0

[[tool.advrobust.checks]]
attack = "pgd"
eps = 0.01
steps = 10
min-accuracy = 0.0
'''


def project(root: Path, samples: int, batch_size: int) -> Path:
    import numpy as np

    x, y = workload.images(samples)
    workload.write_model(root, x, y)
    np.savez(root / "data.npz", x=x, y=y)
    (root / "pyproject.toml").write_text(textwrap.dedent(f'''
        [tool.advrobust]
        model = "benchmodel:build"
        weights = "weights.pt"
        data = "data.npz"
        name = "cnn"
        batch-size = {batch_size}
        device = "cpu"
        ''') + textwrap.dedent(CHECKS))
    return root


def run_all(commands: list[list[str]], cwd: Path, env: dict) -> float:
    """Start ``commands`` together, wait for all; the wall time."""
    started = time.perf_counter()
    running = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for c in commands]
    for command, process in zip(commands, running):
        out, _ = process.communicate()
        if process.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(command)} failed:\n{out.decode()[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    n = args.shards
    with tempfile.TemporaryDirectory() as folder:
        root = project(Path(folder), args.samples, args.batch_size)
        shard = [PYTEST + [f"--advrobust-shard={k}/{n}", f"--advrobust-json=shard-{k}.json"]
                 for k in range(1, n + 1)]
        merge = [sys.executable, "-m", "pytest_advrobust", "merge",
                 *[f"shard-{k}.json" for k in range(1, n + 1)], "--json=merged.json"]
        times: dict[str, list[float]] = {"whole": [], "slowest shard alone": [],
                                         f"{n} shards at once here": [], "merge": []}
        for _ in range(repeats):
            times["whole"].append(run_all([PYTEST + ["--advrobust-json=whole.json"]], root, env))
            times["slowest shard alone"].append(max(run_all([c], root, env) for c in shard))
            times[f"{n} shards at once here"].append(run_all(shard, root, env))
            times["merge"].append(run_all([merge], root, env))
        exact = (root / "merged.json").read_bytes() == (root / "whole.json").read_bytes()
    print(f"{args.samples} images 3x32x32, batch-size {args.batch_size}, {n} shards, "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS=1, medians of {repeats}")
    for name, values in times.items():
        print(f"  {name:<24} {statistics.median(values):7.2f} s")
    print(f"  merged JSON == unsharded JSON: {exact}")
    if not exact:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
