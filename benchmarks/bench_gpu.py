"""The GPU path: an FGSM sweep (3 eps) and PGD-10 on a ResNet-50 at 3x224x224 over 10,240
streamed inputs, through the plugin's engine and through a plain torch loop doing the same
work on the same device, side by side in one process; throughput ratios and peak memory.

    python benchmarks/bench_gpu.py                      # CUDA (skips cleanly without it)
    python benchmarks/bench_gpu.py --device cpu --samples 64 --size 32 --batch-size 16 --rounds 1
                                                        # a correctness run anywhere (tiny)

Goal: ours >= 0.9x the plain loop's throughput. The ResNet-50 is written here in plain torch
(torchvision's architecture: bottlenecks [3, 4, 6, 3], 25.6 M parameters), with random
weights (seed 0): throughput does not depend on what the weights learnt. The inputs are
streamed by a loader (a pool of 4 random batches, cycled, so generating them costs neither
side anything) and labelled with the model's own predictions, so every sample is correctly
classified and the attacks work on all of them. Our side runs each check as a gate
(``RobustnessSession.run_all``, the model loaded and warmed up before the clock starts);
the plain loop reads the same batches, moves them to the device and attacks them with the
same losses (cross-entropy, taken in float64 as ours is). Rounds alternate; medians.

A third line times the host's part alone (no model): our data path per batch (copy into a
tensor, range check, the data fingerprint's hash) against the plain loop's
``torch.from_numpy``. A GPU cannot hide it, so it bounds the ratio a fast device can reach.
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

RESNET = '''
import torch
from torch import nn


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet50(nn.Module):
    """torchvision's resnet50 architecture, in plain torch."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(count):
                blocks.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(2048, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def build() -> nn.Module:
    return ResNet50()
'''

LOADER = '''
import numpy as np

SAMPLES, SIZE, BATCH, POOL = {samples}, {size}, {batch}, 4
_pool = None


def pool():
    """4 random batches in [0, 1] (seed 0), made once per process."""
    global _pool
    if _pool is None:
        rng = np.random.default_rng(0)
        _pool = [rng.random((BATCH, 3, SIZE, SIZE), dtype=np.float32) for _ in range(POOL)]
    return _pool


def batches():
    """SAMPLES inputs, streamed batch by batch, labelled with the model's predictions."""
    labels = np.load("labels.npy")
    for i, start in enumerate(range(0, SAMPLES, BATCH)):
        k = min(BATCH, SAMPLES - start)
        yield pool()[i % POOL][:k], labels[i % POOL][:k]
'''

EPS = (1 / 255, 2 / 255, 4 / 255)
PGD_EPS, PGD_STEPS = 4 / 255, 10

CONFIG = '''
[tool.advrobust]
name = "resnet50"
model = "resnet:build"
weights = "weights.pt"
data = "stream:batches"
batch-size = {batch}
device = "{device}"
{check}
'''
CHECKS = {
    "fgsm": '[[tool.advrobust.checks]]\nattack = "fgsm"\neps = [%s]\nreport-only = true\n'
            % ", ".join(repr(e) for e in EPS),
    "pgd": f'[[tool.advrobust.checks]]\nattack = "pgd"\neps = {PGD_EPS!r}\nsteps = {PGD_STEPS}\n'
           'loss = "ce"\nrandom-start = true\nreport-only = true\n',
}


def project(root: Path, args: argparse.Namespace) -> None:
    """The model module, random weights, the loader and one config per workload; the
    labels are the model's own predictions on the pool."""
    import torch

    (root / "resnet.py").write_text(RESNET)
    (root / "stream.py").write_text(LOADER.format(samples=args.samples, size=args.size, batch=args.batch_size))
    sys.path.insert(0, str(root))
    import resnet
    import stream

    torch.manual_seed(0)
    model = resnet.build().eval()
    torch.save(model.state_dict(), root / "weights.pt")
    model = model.to(args.device)
    if args.host_only:  # no model pass: any labels do
        labels = [np.zeros(len(x), dtype=np.int64) for x in stream.pool()]
    else:
        with torch.inference_mode():
            labels = [model(torch.from_numpy(x).to(args.device)).argmax(1).cpu().numpy()
                      for x in stream.pool()]
    np.save(root / "labels.npy", np.stack(labels))
    for name, check in CHECKS.items():
        (root / f"{name}.toml").write_text(CONFIG.format(batch=args.batch_size, device=args.device, check=check))


def ours(root: Path, workload: str) -> tuple[float, dict, int]:
    """Seconds of the gate pass (model loaded and warmed before), accuracies, peak memory."""
    import torch

    from pytest_advrobust.session import RobustnessSession, plugin_manager

    session = RobustnessSession(plugin_manager().hook, root / f"{workload}.toml")
    spec = session.spec()
    session.engine.classifier(spec)
    _reset_memory()
    _sync()
    started = time.perf_counter()
    results = session.run_all()
    _sync()
    seconds = time.perf_counter() - started
    del session
    return seconds, {f"{r.attack} {r.eps:.4f}": r.accuracy for r in results}, _peak_memory()


def plain(root: Path, workload: str, device: str) -> tuple[float, dict, int]:
    """The same work as a hand-written loop on the same device."""
    import torch
    import torch.nn.functional as F

    import resnet
    import stream

    model = resnet.build()
    model.load_state_dict(torch.load(root / "weights.pt", weights_only=True))
    model = model.to(device).eval().requires_grad_(False)
    _reset_memory()
    _sync()
    started = time.perf_counter()
    correct = {}
    seen = 0
    for xs, ys in stream.batches():
        x = torch.from_numpy(xs).to(device, non_blocking=True)
        y = torch.from_numpy(ys).to(device, non_blocking=True)
        seen += len(ys)
        if workload == "fgsm":
            leaf = x.requires_grad_(True)
            logits = model(leaf)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits.double(), y, reduction="sum"), leaf)
            step = grad.sign()
            with torch.inference_mode():
                for eps in EPS:
                    adv = (x.detach() + eps * step).clamp_(0, 1)
                    key = f"fgsm {eps:.4f}"
                    correct[key] = correct.get(key, 0) + (model(adv).argmax(1) == y).sum()
        else:
            with torch.inference_mode():
                model(x)  # the clean predictions a robust-accuracy loop reports beside it
            size = 2.5 * PGD_EPS / PGD_STEPS
            adv = (x + PGD_EPS * (torch.rand_like(x) * 2 - 1)).clamp(0, 1)
            for _ in range(PGD_STEPS):
                leaf = adv.requires_grad_(True)
                (grad,) = torch.autograd.grad(F.cross_entropy(model(leaf).double(), y, reduction="sum"), leaf)
                adv = torch.min(torch.max(adv.detach() + size * grad.sign(), x - PGD_EPS), x + PGD_EPS).clamp_(0, 1)
            with torch.inference_mode():
                key = f"pgd {PGD_EPS:.4f}"
                correct[key] = correct.get(key, 0) + (model(adv).argmax(1) == y).sum()
    accuracies = {key: int(value) / seen for key, value in correct.items()}
    _sync()
    return time.perf_counter() - started, accuracies, _peak_memory()


def host_part(root: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Seconds per batch of the data path alone: ours (EvalData.batches with the census the
    fingerprint needs) against torch.from_numpy on the same stream."""
    import torch

    import stream
    from pytest_advrobust.data import Census, EvalData
    from pytest_advrobust.session import RobustnessSession, plugin_manager

    spec = RobustnessSession(plugin_manager().hook, root / "fgsm.toml").spec()
    batches = -(-args.samples // args.batch_size)
    started = time.perf_counter()
    census = Census()
    for _ in EvalData(spec).batches(args.batch_size, torch.float32, census=census):
        pass
    census.digest()  # the last batch's hash, which runs beside the next batch's work
    mine = (time.perf_counter() - started) / batches
    started = time.perf_counter()
    for xs, ys in stream.batches():
        torch.from_numpy(xs), torch.from_numpy(ys)
    return mine, (time.perf_counter() - started) / batches


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_memory() -> int:
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    parser.add_argument("--samples", type=int, default=10_240)
    parser.add_argument("--size", type=int, default=224, help="inputs are 3 x size x size")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--host-only", action="store_true",
                        help="time only the host's part of the data path (no model pass; any device)")
    args = parser.parse_args()
    import torch

    if args.host_only:
        args.device = "cpu"
    elif args.device.startswith("cuda") and not torch.cuda.is_available():
        print("skipped: torch sees no CUDA device (run with --device cpu for a small correctness run)")
        return
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        import os

        os.chdir(root)  # the loader reads labels.npy from here
        project(root, args)
        device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
        print(f"ResNet-50, 3x{args.size}x{args.size}, {args.samples:,} streamed inputs, batch "
              f"{args.batch_size}, {device}; {args.rounds} timed rounds after a warm-up, medians")
        for workload in () if args.host_only else CHECKS:
            ours(root, workload), plain(root, workload, args.device)  # warm-up (cudnn, caches)
            timings: dict[str, list[float]] = {"ours": [], "plain": []}
            for _ in range(args.rounds):
                seconds, mine, memory_ours = ours(root, workload)
                timings["ours"].append(seconds)
                seconds, theirs, memory_plain = plain(root, workload, args.device)
                timings["plain"].append(seconds)
            a, b = statistics.median(timings["ours"]), statistics.median(timings["plain"])
            print(f"{workload}: ours {args.samples / a:,.0f} inputs/s, plain {args.samples / b:,.0f} "
                  f"inputs/s, throughput ratio ours/plain {b / a:.2f} (goal >= 0.90)")
            print(f"  accuracies: ours {_shown(mine)}; plain {_shown(theirs)}")
            if memory_ours or memory_plain:
                print(f"  peak device memory: ours {memory_ours / 2**30:.2f} GiB, plain "
                      f"{memory_plain / 2**30:.2f} GiB")
            if workload == "fgsm" and mine != theirs:
                raise SystemExit(f"FGSM figures differ: ours {mine}, plain {theirs}")
        host_part(root, args)  # warm-up (the pool is made on first use)
        parts = [host_part(root, args) for _ in range(args.rounds)]
        mine, theirs = (statistics.median(side) for side in zip(*parts))
        print(f"host part per batch (no model): ours {mine * 1000:.0f} ms, plain {theirs * 1000:.1f} ms")


def _shown(accuracies: dict) -> str:
    return ", ".join(f"{key} {value:.3f}" for key, value in sorted(accuracies.items()))


if __name__ == "__main__":
    main()
