"""The universal figure over several orders of the same data, against the previous fit (a
plain ascent) and ART's UniversalPerturbation, with the cost of each in forward (+ backward)
passes.

    OMP_NUM_THREADS=1 PYTHONPATH=.:tests python benchmarks/bench_universal.py [--orders 6]
        [--models mlp,cnn,rgb] [--methods plain,ART,universal,in-sample]

ART (adversarial-robustness-toolbox) is never a dependency: install it into a separate
benchmark venv to get its column, e.g. ``python -m venv /tmp/bench && /tmp/bench/bin/pip
install -c constraints.txt -e . adversarial-robustness-toolbox`` and run the command with
that venv's python. Without it, its column says "not installed".

Models, each over ``--orders`` random orders of its test data (held fixed by seed):
- the digits MLP at eps 0.2 and CNN at eps 0.3 the tests build (tests/digits_project.py,
  540 test samples);
- a small 3x32x32 CNN trained here in seconds on synthetic 10-class images (each class a
  smooth random colour pattern plus noise; no download), eps 0.1, 600 test samples.

Figures (accuracy under attack; lower is stronger):
- ``plain``: the previous default, 40 sign-ascent steps of eps / 8 on the cross-entropy of
  the first 256 samples (the default fit-samples then), scored on the rest;
- ``ART``: ``UniversalPerturbation`` (the original per-sample algorithm, FGSM inner attacker,
  max_iter 5, delta 0.2) fitted on the same first 256 and scored on the rest;
- ``universal``: what the gate now reports: ``fit_universal`` with the registered defaults
  on the first ``fit-samples`` samples, every sample scored on its fold's delta;
- ``in-sample`` (only when asked for with ``--methods``): one fold's portfolio fitted on
  every sample and scored on the same samples. It flatters the fit (nothing is held out), so
  it is no figure to gate on: it shows how low the fit gets at all.

Where the deltas go: ``to-one`` is the share of scored samples sent to the class ``t`` their
delta sends the most samples to (per fold), ``floor`` the share whose label is that ``t``.
A delta that sends every input to ``t`` leaves exactly the class-``t`` samples right, so with
``to-one`` near 1 the figure cannot go below ``floor``, about the share of one class.

Cost: rows through the model per fit, forward with backward (``f+b``) and forward only
(``f``), as medians over the orders.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pytest_advrobust.attacks import AttackRegistry  # noqa: E402
from pytest_advrobust.attacks.builtin import pytest_advrobust_add_attacks  # noqa: E402
from pytest_advrobust.attacks.universal import (  # noqa: E402
    _fit_fold, _plan, apply_universal, fit_universal, fold_of)
from pytest_advrobust.models.torch_models import TorchClassifier  # noqa: E402


class Counted(torch.nn.Module):
    """Counts the rows it runs: with a backward (the input or the weights need a gradient
    and grad mode is on) or forward only."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.both, self.forward_only = inner, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.both += len(x)
        else:
            self.forward_only += len(x)
        return self.inner(x)


def synthetic_rgb(seed: int = 0, train: int = 3000, test: int = 600):
    """10 classes of 3x32x32 images in [0, 1]: a smooth random colour pattern per class
    (4x4 upsampled), shifted by a random brightness and with pixel noise."""
    rng = np.random.default_rng(seed)
    patterns = torch.nn.functional.interpolate(torch.from_numpy(rng.random((10, 3, 4, 4)).astype(np.float32)),
                                               size=(32, 32), mode="bilinear", align_corners=False)
    labels = rng.integers(0, 10, train + test)
    x = patterns[labels] * 0.6 + 0.2 + torch.from_numpy(
        (rng.normal(0, 0.15, (train + test, 3, 32, 32)) + rng.normal(0, 0.1, (train + test, 1, 1, 1)))
        .astype(np.float32))
    x, y = x.clamp(0, 1), torch.from_numpy(labels)
    return x[:train], y[:train], x[train:], y[train:]


def trained_rgb_cnn() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    xt, yt, xs, ys = synthetic_rgb()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 10))
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(2):
        for start in range(0, len(yt), 100):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[start:start + 100]), yt[start:start + 100]).backward()
            optimiser.step()
    return net.eval(), xs, ys


def plain_fit(model, x, y, eps):
    delta = torch.zeros_like(x[0])
    for _ in range(40):
        moved = x + delta
        grad, _ = model.loss_gradient(moved.clamp(0, 1), y)
        delta = (delta + eps / 8 * (grad * ((moved >= 0) & (moved <= 1))).sum(0).sign()).clamp(-eps, eps)
    return delta


def art_fit(net, shape):
    """ART's UniversalPerturbation as a fit function, or None when ART is not installed."""
    try:
        import logging

        from art.attacks.evasion import UniversalPerturbation
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return None
    logging.getLogger("art").setLevel(logging.ERROR)
    classifier = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(), input_shape=shape,
                                   nb_classes=10, clip_values=(0.0, 1.0))

    def fit(model, x, y, eps):
        np.random.seed(0)  # ART shuffles the fit samples with numpy's global generator
        attack = UniversalPerturbation(classifier, attacker="fgsm", attacker_params={"eps": eps},
                                       delta=0.2, max_iter=5, eps=eps, norm=np.inf, batch_size=256,
                                       verbose=False)
        attack.generate(x.numpy(), y=None)
        return torch.from_numpy(np.asarray(attack.noise[0], dtype=np.float32)).view(x[0].shape)

    return fit


def in_sample_fit(model, x, y, eps, options):
    """``fit_universal``'s portfolio for one fold on *every* sample, to be scored on the same
    samples: no cross-fitting, so it flatters the fit (how low the fit gets when nothing is
    held out; no figure to gate on)."""
    targets, per_step = _plan(len(x), x[0].numel(), 1, options["targets"], options["steps"])
    return _fit_fold(model, x, y, eps, targets=targets, steps=options["steps"],
                     step_size=options.get("step_size"), patience=options["patience"],
                     loss=options["loss"], per_step=per_step, progress=None)


def one_class(predicted: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> tuple[float, float]:
    """For each group of samples sharing a delta (a fold), the class ``t`` it sends the most
    of them to: the share of samples sent to their group's ``t``, and the share whose label
    is their group's ``t`` (samples a delta that sends everything to ``t`` leaves right: the
    accuracy such a delta cannot go below)."""
    sent = kept = 0
    for group in groups.unique():
        mine = groups == group
        t = int(predicted[mine].mode().values)
        sent += int((predicted[mine] == t).sum())
        kept += int((labels[mine] == t).sum())
    return sent / len(labels), kept / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=6, help="random orders of each test set")
    parser.add_argument("--models", default="mlp,cnn,rgb",
                        help="comma-separated subset of mlp (digits MLP), cnn (digits CNN), rgb (3x32x32 CNN)")
    parser.add_argument("--methods", default="plain,ART,universal",
                        help="comma-separated subset of plain, ART, universal, in-sample")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from digits_project import digits_split, trained_cnn, trained_mlp

    registry = AttackRegistry()
    pytest_advrobust_add_attacks(registry)
    defaults = registry["universal"].with_defaults({})
    options = {k.replace("-", "_"): v for k, v in defaults.items() if k != "fit-samples"}
    wanted, methods = set(args.models.split(",")), set(args.methods.split(","))
    if wanted - {"mlp", "cnn", "rgb"} or methods - {"plain", "ART", "universal", "in-sample"}:
        parser.error(f"unknown --models or --methods: {sorted(wanted - {'mlp', 'cnn', 'rgb'})} "
                     f"{sorted(methods - {'plain', 'ART', 'universal', 'in-sample'})}; see --help")
    _, _, xd, yd = digits_split()
    cases = []
    if "mlp" in wanted:
        cases.append(("digits MLP", trained_mlp(), torch.from_numpy(xd), torch.from_numpy(yd), 0.2))
    if "cnn" in wanted:
        cases.append(("digits CNN", trained_cnn(), torch.from_numpy(xd).view(-1, 1, 8, 8), torch.from_numpy(yd), 0.3))
    if "rgb" in wanted:
        rgb_net, xr, yr = trained_rgb_cnn()
        cases.append(("3x32x32 CNN", rgb_net, xr, yr, 0.1))
    print(f"universal defaults: {defaults}; {args.orders} orders per model\n")
    print(f"{'model':12} {'eps':>4} {'clean':>6}  {'method':10} {'median':>6} {'min':>6} {'max':>6} "
          f"{'spread':>6}   {'rows f+b':>9} {'rows f':>8}   {'to-one':>6} {'floor':>6}")
    for name, net, x, y, eps in cases:
        counted = Counted(net).eval()
        model = TorchClassifier(counted, name=name, input_range=(0.0, 1.0))
        clean = float((model.scores(x).argmax(1) == y).float().mean())
        art = art_fit(counted, tuple(x.shape[1:]))
        fits = {"plain": lambda x, y: plain_fit(model, x[:256], y[:256], eps),
                "ART": None if art is None else (lambda x, y: art(model, x[:256], y[:256], eps)),
                "universal": lambda x, y: fit_universal(model, x[:defaults["fit-samples"]],
                                                        y[:defaults["fit-samples"]], eps, **options),
                "in-sample": lambda x, y: in_sample_fit(model, x, y, eps, options)}
        for method, fit in fits.items():
            if method not in methods:
                continue
            if fit is None:
                print(f"{name:12} {eps:4.2f} {clean:6.3f}  {method:10} not installed (pip install "
                      "adversarial-robustness-toolbox in a benchmark venv)")
                continue
            figures, both, forward, to_one, floor = [], [], [], [], []
            for seed in range(args.orders):
                order = torch.from_numpy(np.random.default_rng(100 + seed).permutation(len(y)))
                xo, yo = x[order], y[order]
                counted.both = counted.forward_only = 0
                state = fit(xo, yo)
                both.append(counted.both)
                forward.append(counted.forward_only)
                if method == "universal":  # every sample, on its fold's delta
                    positions = torch.arange(len(yo))
                    attacked, labels = apply_universal(xo, state, positions), yo
                    groups = fold_of(positions, len(state))
                elif method == "in-sample":  # every sample, on the delta fitted with it
                    attacked, labels, groups = xo + state, yo, torch.zeros(len(yo), dtype=torch.long)
                else:
                    attacked, labels = xo[256:] + state, yo[256:]
                    groups = torch.zeros(len(labels), dtype=torch.long)
                predicted = model.scores(attacked.clamp(0, 1)).argmax(1)
                figures.append(float((predicted == labels).float().mean()))
                sent, kept = one_class(predicted, labels, groups)
                to_one.append(sent)
                floor.append(kept)
            print(f"{name:12} {eps:4.2f} {clean:6.3f}  {method:10} {statistics.median(figures):6.3f} "
                  f"{min(figures):6.3f} {max(figures):6.3f} {max(figures) - min(figures):6.3f}   "
                  f"{statistics.median(both):9.0f} {statistics.median(forward):8.0f}   "
                  f"{statistics.median(to_one):6.3f} {statistics.median(floor):6.3f}", flush=True)


if __name__ == "__main__":
    main()
