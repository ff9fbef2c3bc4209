"""Exact gradients and saturation, measured: FGSM with the float32 cross-entropy gradient
(what peer libraries take) against ours (the loss in float64), and PGD's losses on models
whose logits are multiplied by 1e4 (the same decisions, a masked cross-entropy gradient).

Models: the tests' digits MLP (300 Adam steps) and a small digits CNN (150 steps), on
scikit-learn's bundled digits (30% held out, 540 samples). Also counts the per-sample
gradient evaluations of the default pgd (cross-entropy, then the margin on the survivors)
against cross-entropy alone: the cost of not being fooled.

The masking probe (``probe``): its cost against the gate it cross-checks (forward passes of
one sample counted through the classifier, a backward counted apart; and wall time, with
the probe on and off, interleaved rounds, medians), its false alarms on the honest digits
MLP and CNN (five eps, ten seeds, fgsm and pgd) and what it catches on issue 20's defences
(tests/models/defences.py, plain modules, no bpda).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_masking.py [probe [verdicts]]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pytest_advrobust.attacks.pgd import loss_sequence, pgd_linf
from pytest_advrobust.models.torch_models import TorchClassifier


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(len(y) * 0.7)
    return [torch.from_numpy(a) for a in (x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]])]


def train(model: torch.nn.Module, x, y, steps: int, lr: float) -> torch.nn.Module:
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


class Scaled(torch.nn.Module):
    def __init__(self, module: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.module, self.factor = module, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) * self.factor


def main() -> None:
    xtr, ytr, x, y = digits()
    torch.manual_seed(0)
    mlp = train(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)),
                xtr, ytr, 300, 0.01)
    torch.manual_seed(0)
    cnn = train(torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)), torch.nn.Conv2d(1, 8, 3, padding=1),
                                    torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                    torch.nn.Linear(8 * 16, 10)), xtr, ytr, 150, 0.03)
    for name, net in (("mlp", mlp), ("cnn", cnn)):
        model = TorchClassifier(net, name=name, input_range=(0, 1))
        exact, scores = model.loss_gradient(x, y)
        leaf = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(net(leaf), y, reduction="sum").backward()
        with torch.no_grad():
            row = []
            for eps in (0.05, 0.1, 0.2, 0.3):
                f32 = float((net((x + eps * leaf.grad.sign()).clamp(0, 1)).argmax(1) == y).float().mean())
                ours = float((net((x + eps * exact.sign()).clamp(0, 1)).argmax(1) == y).float().mean())
                row.append(f"eps {eps:g}: {f32:.3f} -> {ours:.3f}")
        print(f"FGSM {name} (clean {float((scores.argmax(1) == y).float().mean()):.3f}), float32 CE -> exact: "
              + "; ".join(row))
    cost({"mlp": mlp, "cnn": cnn}, x, y)
    for name, net in (("mlp", mlp), ("cnn", cnn)):
        for factor in (1.0, 1e4):
            model = TorchClassifier(Scaled(net, factor), name=name, input_range=(0, 1))
            calls = {"n": 0}

            def counted(inputs, labels, loss="ce", model=model):
                calls["n"] += len(inputs)
                return model.loss_gradient(inputs, labels, loss)

            grad, scores = model.loss_gradient(x, y)
            correct = scores.argmax(1) == y
            zero = int((grad.reshape(len(x), -1).ne(0).any(1).logical_not() & correct).sum())
            row = []
            for loss in ("ce", "margin", "dlr", "ce+margin"):
                calls["n"] = 0
                adversarial = pgd_linf(counted, model.scores, x, y, 0.1, (0, 1), np.random.default_rng(0),
                                       grad=grad, scores=scores, losses=loss_sequence(loss))
                accuracy = float((model.scores(adversarial).argmax(1) == y).float().mean())
                row.append(f"{loss} {accuracy:.3f} ({calls['n'] / len(x):.1f} grads/sample)")
            print(f"PGD-10 eps 0.1, {name} x{factor:g} (zero CE gradient on {zero / int(correct.sum()):.1%} "
                  f"of correct): " + "; ".join(row))


def cost(nets: dict, x: torch.Tensor, y: torch.Tensor, repeats: int = 21) -> None:
    """Seconds of ``loss_gradient`` with the exact loss against the same call with float32
    cross-entropy in its place (the old loss), alternated, medians: the cost of exactness."""
    import statistics
    import time

    from pytest_advrobust.models import base

    exact = base.loss_per_sample

    def float32(scores, labels, output_kind, loss="ce"):
        return torch.nn.functional.cross_entropy(scores, labels, reduction="none")

    for name, net in nets.items():
        model = TorchClassifier(net, name=name, input_range=(0, 1))
        times = {"exact": [], "float32": []}
        for _ in range(repeats):
            for label, function in (("exact", exact), ("float32", float32)):
                base.loss_per_sample = function
                started = time.perf_counter()
                model.loss_gradient(x, y)
                times[label].append(time.perf_counter() - started)
        base.loss_per_sample = exact
        ours, old = statistics.median(times["exact"]), statistics.median(times["float32"])
        print(f"loss_gradient on {len(x)} samples, {name}: exact {ours * 1e3:.2f} ms, float32 CE "
              f"{old * 1e3:.2f} ms, ratio {ours / old:.3f} (medians of {repeats})")
    # the loss alone, forward + backward on [samples, 10] scores: what exactness adds
    scores = torch.randn(len(x), 10, requires_grad=True)
    times = {"exact": [], "float32": []}
    for _ in range(10 * repeats):
        for label, function in (("exact", exact), ("float32", float32)):
            started = time.perf_counter()
            torch.autograd.grad(function(scores, y, "logits").sum(), scores)
            times[label].append(time.perf_counter() - started)
    print(f"the loss alone on [{len(x)}, 10] scores, forward + backward: exact "
          f"{statistics.median(times['exact']) * 1e6:.0f} us, float32 CE "
          f"{statistics.median(times['float32']) * 1e6:.0f} us (medians of {10 * repeats})")


class Counting(TorchClassifier):
    """Counts the samples each forward (``scores``) and forward + backward sees."""

    forwards = 0
    backwards = 0

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        Counting.forwards += len(x)
        return super().scores(x)

    def _gradient(self, x, per_sample):  # type: ignore[override]
        Counting.backwards += len(x)
        return super()._gradient(x, per_sample)


def gates(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, checks: list, *, seed: int = 0,
          counting: bool = False) -> list:
    """One pass of the engine over ``x, y`` computing ``checks`` (config tables), as the
    Python API runs one (batch size 256): the judged results."""
    from pytest_advrobust.api import IN_MEMORY
    from pytest_advrobust.config import parse_config
    from pytest_advrobust.engine import Engine, Request
    from pytest_advrobust.gate import Judge
    from pytest_advrobust.models import wrap_module
    from pytest_advrobust.session import RobustnessSession, plugin_manager

    session = RobustnessSession(plugin_manager().hook, None)
    table = {"model": IN_MEMORY, "data": IN_MEMORY, "name": "model", "seed": seed, "checks": checks}
    spec = parse_config(table, path=Path("<bench>"), attacks=session.registry.config_options(),
                        custom_models=True, custom_data=True).models[0]
    model = Counting(net, name="model", input_range=(0, 1)) if counting else wrap_module(net, spec)
    engine = Engine(session.registry, load_model=lambda s: model, load_data=lambda s: (x.numpy(), y.numpy()))
    requests = [Request(check, eps) for check in spec.checks for eps in check.eps]
    measurements = [engine.measure(spec, r, batch_with=requests) for r in requests]
    return Judge(lambda name, index: (spec, spec.checks[index]), session.registry).results(measurements)


def check(attack: str, eps: float, **options) -> dict:
    return {"attack": attack, "eps": eps, "report-only": True, **options}


def probe(cost: bool = True) -> None:
    """The masking probe's cost, false alarms and catches (see the module docstring);
    ``cost=False`` (``probe verdicts``) only the false alarms and catches."""
    import statistics
    import sys
    import time

    sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests" / "models")]
    from defences import DEFENCES

    xtr, ytr, x, y = digits()
    torch.manual_seed(0)
    mlp = train(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)),
                xtr, ytr, 300, 0.01)
    torch.manual_seed(0)
    cnn = train(torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)), torch.nn.Conv2d(1, 8, 3, padding=1),
                                    torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                    torch.nn.Linear(8 * 16, 10)), xtr, ytr, 150, 0.03)
    honest = {"mlp": mlp, "cnn": cnn}
    print(f"masking probe, digits test split (n={len(y)}), default settings (100 samples, "
          "at most 50 queries each)")
    # cost, in forwards of one sample: the probe against the gate(s) of its pass
    for name, net in honest.items() if cost else ():
        model = TorchClassifier(net, name=name, input_range=(0, 1))
        times = {"forward": [], "backward": []}
        for _ in range(21):
            for label, call in (("forward", lambda: model.scores(x)), ("backward", lambda: model.loss_gradient(x, y))):
                started = time.perf_counter()
                call()
                times[label].append(time.perf_counter() - started)
        ratio = statistics.median(times["backward"]) / statistics.median(times["forward"])
        for eps in (0.05, 0.1, 0.2):
            for label, checks in (("fgsm", [check("fgsm", eps)]), ("pgd", [check("pgd", eps)]),
                                  ("fgsm+pgd", [check("fgsm", eps), check("pgd", eps)])):
                counts = {}
                for probed in (False, True):
                    Counting.forwards = Counting.backwards = 0
                    tables = [dict(c, **{"masking-probe": probed}) for c in checks]
                    results = gates(net, x, y, tables, counting=True)
                    counts[probed] = (Counting.forwards, Counting.backwards,
                                      results[0].stats.get("probe_queries", 0))
                (f0, b0, _), (f1, b1, spent) = counts[False], counts[True]
                gate = f0 + ratio * b0
                print(f"  cost {name} eps {eps:g} {label:8}: gate {f0} forwards + {b0} forward+backward "
                      f"(= {gate:.0f} forwards at {ratio:.2f} forwards each); probe {f1 - f0} forwards "
                      f"(stats say {spent}), {(f1 - f0) / gate:.1%} of the gate", flush=True)
        for label, checks in (("fgsm", [check("fgsm", 0.1)]), ("pgd", [check("pgd", 0.1)]),
                              ("fgsm+pgd", [check("fgsm", 0.1), check("pgd", 0.1)])):
            seconds = {False: [], True: []}
            for _ in range(7):
                for probed in (False, True):
                    tables = [dict(c, **{"masking-probe": probed}) for c in checks]
                    started = time.perf_counter()
                    gates(net, x, y, tables)
                    seconds[probed].append(time.perf_counter() - started)
            off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
            print(f"  wall {name} eps 0.1 {label:8}: {off * 1e3:.0f} ms without the probe, {on * 1e3:.0f} ms "
                  f"with it, ratio {on / off:.2f} (medians of 7 interleaved rounds)", flush=True)
    # false alarms on honest models, catches on the defences
    eps_list = (0.02, 0.05, 0.1, 0.2, 0.3)
    for name, net in honest.items():
        tripped, gates_run, worst, excess = 0, 0, 1.0, -1.0
        for seed in range(10):
            for eps in eps_list:
                for r in gates(net, x, y, [check("fgsm", eps), check("pgd", eps)], seed=seed):
                    gates_run += 1
                    tripped += "suspected" in r.diagnostics
                    worst = min(worst, r.diagnostics["black_box_p"])
                    excess = max(excess, r.diagnostics["black_box_excess"])
        print(f"  false alarms {name}: {tripped} of {gates_run} gates (fgsm and pgd, eps "
              f"{', '.join(map(str, eps_list))}, seeds 0-9); smallest p {worst:.3g}, largest excess "
              f"(square alone - gate alone) / probed {excess:+.3f}", flush=True)
    for name, cls in DEFENCES.items():
        defended = cls()
        defended.net.load_state_dict(mlp.state_dict())
        defended.eval()
        for eps in (0.05, 0.1, 0.2):
            caught, total, accuracy = 0, 0, []
            for seed in range(5):
                for r in gates(defended, x, y, [check("fgsm", eps), check("pgd", eps)], seed=seed):
                    total += 1
                    caught += bool(r.diagnostics.get("fails_gate"))
                    accuracy.append(r.accuracy)
            print(f"  caught {name} eps {eps:g}: {caught} of {total} gates (fgsm and pgd, seeds 0-4; "
                  f"their accuracy {min(accuracy):.3f}-{max(accuracy):.3f})", flush=True)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["probe"]:
        probe(cost=sys.argv[2:] != ["verdicts"])
    else:
        main()
