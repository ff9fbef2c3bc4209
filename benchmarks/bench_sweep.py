"""Cost of pytest-advrobust against a plain torch loop doing the minimal work, measured
side by side in one run (medians over repeats, ratios ours / baseline).

    python benchmarks/bench_sweep.py            # full run (about 2-3 minutes on 2 cores)
    python benchmarks/bench_sweep.py --quick    # a short run

Everything is built locally under a temporary folder (synthetic 3x32x32 images with class
structure, a small CNN trained for a few steps with a fixed seed): nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workload  # noqa: E402

EPS = [0.005, 0.01, 0.02, 0.03, 0.05]
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def timed(command: list[str], cwd: Path, env: dict | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {cwd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def side_by_side(ours: Callable[[], float], baseline: Callable[[], float], repeats: int,
                 warm_up: bool = False) -> tuple[float, float]:
    """Medians of interleaved repeats (so load from elsewhere hits both alike)."""
    if warm_up:  # in-process timings: the first call pays lazy imports and allocator growth
        ours(), baseline()
    a, b = [], []
    for _ in range(repeats):
        a.append(ours())
        b.append(baseline())
    return statistics.median(a), statistics.median(b)


def peak_rss(command: list[str], cwd: Path, env: dict) -> float:
    """Peak RSS in MiB of ``command``, run in a fresh wrapper process (RUSAGE_CHILDREN)."""
    wrapper = ("import resource, subprocess, sys; "
               "done = subprocess.run(sys.argv[1:], capture_output=True); "
               "assert done.returncode == 0, done.stdout[-2000:]; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, *command], cwd=cwd, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"peak RSS run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return int(out.stdout.strip().splitlines()[-1]) / 1024  # Linux: KiB


def per_step(root: Path, x, y, steps: int, batch_size: int, repeats: int) -> list[tuple]:
    """Universal fit (and PGD when present): seconds per step, ours against a plain loop."""
    import torch

    from pytest_advrobust.attacks.universal import fit_universal
    from pytest_advrobust.models.torch_models import TorchClassifier

    sys.path.insert(0, str(root / "torch"))
    from benchmodel import build

    module = build()
    module.load_state_dict(torch.load(root / "weights.pt", weights_only=True))
    model = TorchClassifier(module, name="cnn", input_range=(0.0, 1.0), source="bench")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    eps = 0.01

    def ours() -> float:
        started = time.perf_counter()
        with model.session():
            # the untargeted ascent alone, never stopped early: each step of each of the 2
            # folds runs over its half of the samples, so a step is one pass over all of
            # them, as the plain loop's (the portfolio of targets multiplies the steps)
            fit_universal(model, xt, yt, eps, steps=steps, targets=0, patience=0)
        return (time.perf_counter() - started) / (steps + 1)

    def plain() -> float:
        started = time.perf_counter()
        module.eval().requires_grad_(False)
        delta = torch.zeros_like(xt[0])
        for _ in range(steps + 1):
            total = torch.zeros_like(delta)
            for s in range(0, len(yt), batch_size):
                leaf = (xt[s:s + batch_size] + delta).clamp(0, 1).requires_grad_(True)
                loss = torch.nn.functional.cross_entropy(module(leaf), yt[s:s + batch_size],
                                                         reduction="sum")
                (grad,) = torch.autograd.grad(loss, leaf)
                total += grad.sum(0)
            delta = (delta + eps / 4 * total.sign()).clamp(-eps, eps)
        return (time.perf_counter() - started) / (steps + 1)

    rows = [("universal fit, s/step", *side_by_side(ours, plain, repeats, warm_up=True), 1.25)]
    rows.append(pgd_per_step(model, module, xt, yt, steps, batch_size, repeats))
    return rows


def in_process(project: Path, batch_size: int, repeats: int,
               name: str = "(in-process) engine pass, torch sweep, s", target: float | None = 1.9) -> tuple:
    """The engine's own overhead: one pass of the torch sweep, imports and pytest excluded."""
    import baselines

    from pytest_advrobust.session import RobustnessSession, plugin_manager

    def ours() -> float:
        started = time.perf_counter()
        RobustnessSession(plugin_manager().hook, project / "pyproject.toml").run_all()
        return time.perf_counter() - started

    def plain() -> float:
        started = time.perf_counter()
        baselines.main("torch", project, EPS, batch_size)
        return time.perf_counter() - started

    return (name, *side_by_side(ours, plain, repeats, True), target)


def pgd_per_step(model, module, x, y, steps: int, batch_size: int, repeats: int) -> tuple:
    """PGD, seconds per step: ``attacks/pgd.py`` (no random start, a tiny eps so early
    stopping saves nothing) against a plain loop of sign steps with projection."""
    import numpy as np
    import torch

    from pytest_advrobust.attacks.pgd import pgd

    eps, step = 0.001, 0.00025

    def ours() -> float:
        started = time.perf_counter()
        with model.session():
            for s in range(0, len(y), batch_size):
                xb, yb = x[s:s + batch_size], y[s:s + batch_size]
                grad, scores = model.loss_gradient(xb, yb)
                pgd(model, xb, yb, eps, np.random.default_rng(0), grad, scores, steps=steps,
                    step_size=step, random_start=False, loss="ce")  # per step: one loss, like the loop
        return (time.perf_counter() - started) / (steps + 1)

    def plain() -> float:
        started = time.perf_counter()
        module.eval().requires_grad_(False)
        for s in range(0, len(y), batch_size):
            xb, yb = x[s:s + batch_size], y[s:s + batch_size]
            current = xb.clone()
            for _ in range(steps + 1):
                leaf = current.requires_grad_(True)
                out = module(leaf)
                (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out, yb, reduction="sum"), leaf)
                wrong = out.argmax(1) != yb  # what a robust-accuracy loop needs per step
                current = torch.min(torch.max(current.detach() + step * grad.sign(), xb - eps), xb + eps).clamp(0, 1)
            del wrong
        return (time.perf_counter() - started) / (steps + 1)

    return ("pgd, s/step", *side_by_side(ours, plain, repeats, warm_up=True), 1.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS for both sides (0: library defaults). 1 keeps "
                             "timings stable on a shared machine, where spinning OpenMP threads "
                             "slow down several-fold when other jobs hold the cores")
    parser.add_argument("--bytecode-cache", action="store_true",
                        help="unset PYTHONDONTWRITEBYTECODE for both sides: with it set, pytest "
                             "re-compiles (assertion-rewrites) every plugin module it imports on "
                             "every run, which most CI set-ups do not pay")
    args = parser.parse_args()
    if args.bytecode_cache:
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    samples = args.samples or (1024 if args.quick else 3072)
    repeats = args.repeats or (3 if args.quick else 5)
    bs = args.batch_size

    import numpy as np  # noqa: F401
    import torch

    # this checkout first on sys.path, whatever an editable install elsewhere points at
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory(prefix="advrobust-bench-") as folder:
        root = Path(folder)
        x, y = workload.images(samples)
        workload.write_model(root, x, y)
        # like for like: the plain loop's work (corners) plus the interior points, which
        # cost one more forward per eps at these small eps: (3 + 2 x 5) / (3 + 5) = 1.63
        # forwards' worth for a forward + backward of about 3, so the target is 1.9
        torch_project = workload.sweep_project(root / "torch", x, y, model="benchmodel:build",
                                               eps=EPS, batch_size=bs, probe=False)
        onnx_project = workload.sweep_project(root / "onnx", x, y, model="../model.onnx",
                                              eps=EPS, batch_size=bs, probe=False)
        # the default config also runs the masking probe: a fixed cost per eps (about 100
        # samples x 50 queries), whatever the data size; measured for context
        probed = workload.sweep_project(root / "probed", x, y, model="benchmodel:build",
                                        eps=EPS, batch_size=bs)
        base = [sys.executable, str(HERE / "baselines.py")]
        for kind, project in (("torch", torch_project), ("onnx", onnx_project)):
            ours, plain = side_by_side(
                lambda: timed(PYTEST, project, env),
                lambda: timed(base + [kind, str(project), json.dumps(EPS), str(bs)], project, env),
                repeats)
            rows.append((f"clean + fgsm x{len(EPS)} eps, {kind}, {samples} imgs, s", ours, plain, 1.9))
            # hypothesis (installed with us) has its own pytest plugin, which imports all of
            # hypothesis in every run's terminal summary: 0.5-0.9 s that is not ours to save
            ours, plain = side_by_side(
                lambda: timed(PYTEST + ["-p", "no:hypothesispytest"], project, env),
                lambda: timed(base + [kind, str(project), json.dumps(EPS), str(bs)], project, env),
                repeats)
            rows.append(("  the same, -p no:hypothesispytest", ours, plain, 1.9))
        ours, plain = side_by_side(
            lambda: timed(PYTEST, probed, env),
            lambda: timed(base + ["torch", str(probed), json.dumps(EPS), str(bs)], probed, env),
            repeats)
        rows.append(("  torch, default config (masking probe on), s", ours, plain, None))

        rows.append(in_process(torch_project, bs, 3))
        rows.append(in_process(probed, bs, 3, "(in-process) the same, masking probe on, s", None))
        rows += per_step(root, x[:512], y[:512], 2 if args.quick else 4, bs, repeats)

        stream = workload.stream_project(root / "stream", batch_size=bs)
        small = 300 if args.quick else 600
        rss = [peak_rss(PYTEST, stream, {**env, "BENCH_SAMPLES": str(n)}) for n in (10 * small, small)]
        rows.append((f"peak RSS MiB, {10 * small} vs {small} streamed", rss[0], rss[1], 1.2))

        empty = workload.empty_project(root / "empty")
        ours, plain = side_by_side(lambda: timed(PYTEST, empty, env),
                                   lambda: timed(PYTEST + ["-p", "no:advrobust"], empty, env),
                                   repeats + 4)
        rows.append(("start-up, no gates configured, s", ours, plain, 1.15))
        floor = statistics.median(timed([sys.executable, "-c", "import torch"], empty, env)
                                  for _ in range(3))
        rows.append(("(context) python -c 'import torch', s", floor, None, None))

    print(f"\npytest-advrobust benchmark: torch {torch.__version__}, {os.cpu_count()} cpus, "
          f"torch threads {torch.get_num_threads()}, median of {repeats} (start-up {repeats + 4}), "
          f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}")
    print(f"{'measurement':<46} {'ours':>9} {'baseline':>9} {'ratio':>6} {'target':>7}  ok")
    for name, ours, plain, target in rows:
        if target is None and plain is None:
            print(f"{name:<46} {ours:>9.4g}")
            continue
        if target is None:  # context: a ratio without a target
            print(f"{name:<46} {ours:>9.4g} {plain:>9.4g} {ours / plain:>6.3f} {'-':>7}  -")
            continue
        if ours is None:
            print(f"{name:<46} {'-':>9} {'-':>9} {'-':>6} {'<' + format(target, 'g'):>7}  -")
            continue
        ratio = ours / plain
        print(f"{name:<46} {ours:>9.4g} {plain:>9.4g} {ratio:>6.3f} {'<' + format(target, 'g'):>7}  "
              f"{'yes' if ratio <= target else 'NO'}")


if __name__ == "__main__":
    main()
