"""The ensemble check: never weaker than its members, credits each member, sees through a
saturated head, and says when a model without gradients got only the black-box member."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from digits_project import digits_split, trained_mlp, write_digits_project
from pytest_advrobust.attacks.apgd import apgd
from pytest_advrobust.attacks.strongest import MEMBERS, describe_strongest, strongest
from pytest_advrobust.models.torch_models import TorchClassifier

FAST = {"steps": 20, "targets": 3, "square_queries": 300, "queries": 300}


class Scaled(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x):
        return self.inner(x) * self.factor


@pytest.fixture(scope="module")
def digits():
    _, _, x, y = digits_split()
    return torch.from_numpy(x[:300]), torch.from_numpy(y[:300])


def correct(model, x, y) -> torch.Tensor:
    return model.scores(x).argmax(1) == y


def run(model, x, y, eps=0.1, **options):
    stats = {}
    adversarial = strongest(model, x, y, eps, np.random.default_rng(0), model.scores(x), stats,
                            **{**FAST, **options})
    return adversarial, stats


def test_strongest_is_never_weaker_than_its_members(digits) -> None:
    x, y = digits
    model = TorchClassifier(trained_mlp(), name="m", input_range=(0.0, 1.0))
    eps = 0.1
    adversarial, stats = run(model, x, y, eps)
    robust = correct(model, adversarial, y)
    assert float((adversarial - x).abs().max()) <= eps + 1e-6
    grad, scores = model.loss_gradient(x, y)
    assert not (robust & ~correct(model, (x + eps * grad.sign()).clamp(0, 1), y)).any()
    alone = apgd(model, x, y, eps, np.random.default_rng(0), grad, scores, {}, steps=20)
    assert int(robust.sum()) <= int(correct(model, alone, y).sum())
    # every sample fooled is credited to exactly one member
    credited = sum(stats[f"fooled_by_{m}"] for m in MEMBERS)
    assert credited == int(correct(model, x, y).sum()) - int(robust.sum())
    assert stats["fooled_by_fgsm"] > 0 and stats["fooled_by_apgd-ce"] > 0
    assert stats["no_gradient_batches"] == 0
    assert describe_strongest(stats).startswith(f"fooled first by: fgsm {stats['fooled_by_fgsm']}, ")


def test_strongest_sees_through_logits_scaled_to_saturate(digits) -> None:
    x, y = digits
    plain = TorchClassifier(trained_mlp(), name="m", input_range=(0.0, 1.0))
    saturated = TorchClassifier(Scaled(trained_mlp(), 1e4), name="s", input_range=(0.0, 1.0))
    figures = {}
    for name, model in (("plain", plain), ("saturated", saturated)):
        adversarial, _ = run(model, x, y)
        figures[name] = float(correct(model, adversarial, y).float().mean())
    assert figures["plain"] < 0.4
    assert figures["saturated"] <= figures["plain"] + 0.03, figures


def test_a_model_without_gradient_gets_square_and_the_message_says_so(digits) -> None:
    x, y = digits
    model = TorchClassifier(trained_mlp(), name="m", input_range=(0.0, 1.0))
    model.gradient_error = "no gradient here (test)."
    adversarial, stats = run(model, x, y)
    assert stats["no_gradient_batches"] == 1 and stats["gradients"] == 0
    assert stats["fooled_by_square"] > 0 and stats["queries"] > 0
    assert float(correct(model, adversarial, y).float().mean()) < 0.6
    assert "only square (black-box) ran" in describe_strongest(stats)


CHECKS = '''
[[tool.advrobust.models.mlp.checks]]
attack = "strongest"
eps = 0.1
steps = 10
targets = 2
square-queries = 100
min-accuracy = 0.9

[[tool.advrobust.models.mlp.checks]]
attack = "apgd"
loss = "dlr"
steps = 10
eps = 0.1
min-accuracy = 0.001

[tool.advrobust.models.forest]
model = "forest.onnx"
[[tool.advrobust.models.forest.checks]]
attack = "strongest"
eps = 0.2
queries = 200
min-accuracy = 0.001
[[tool.advrobust.models.forest.checks]]
attack = "square"
eps = 0.2
queries = 200
min-accuracy = 0.001
'''


def test_gates_run_the_way_users_run_them(pytester: pytest.Pytester) -> None:
    # a tree ensemble: no gradient (a skl2onnx logistic regression now has one, through the twin)
    write_digits_project(pytester.path, CHECKS, forest=True, max_samples=120)
    result = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json=out.json")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*strongest eps=0.1 on mlp: accuracy 0.* < min-accuracy 0.900*"
                                 "fooled first by: fgsm *, apgd-ce *, apgd-t *, square *"])
    result.stdout.no_fnmatch_line("*Traceback*")
    report = {(r["model"], r["attack"]): r for r in
              json.loads((pytester.path / "out.json").read_text())["results"]}
    mlp = report[("mlp", "strongest")]
    assert mlp["stats"]["gradients"] > 0 and mlp["stats"]["no_gradient_batches"] == 0
    forest = report[("forest", "strongest")]
    assert forest["stats"]["no_gradient_batches"] >= 1 and forest["stats"]["gradients"] == 0
    assert "only square (black-box) ran" in forest["message"]
    assert forest["accuracy"] <= forest["clean_accuracy"] - 0.2
    assert forest["accuracy"] <= report[("forest", "square")]["accuracy"]
    assert report[("mlp", "apgd")]["accuracy"] < mlp["clean_accuracy"] - 0.3


def test_members_without_work_are_refused(digits) -> None:
    from pytest_advrobust.errors import AttackError

    x, y = digits
    model = TorchClassifier(trained_mlp(), name="m", input_range=(0.0, 1.0))
    with pytest.raises(AttackError, match="strongest: targets = 0 leaves a member without any work"):
        run(model, x[:8], y[:8], targets=0)
    _, stats = run(model, x[:50], y[:50], square_queries=0)  # square may be left out
    assert stats["fooled_by_square"] == 0 and stats["queries"] == 0


class DetachedWhenFlagged(torch.nn.Module):
    """16 features: class 1 when the mean of features 1..15 exceeds 0.5 (logits -+20 (mean -
    0.5)); where feature 0 is above 0.5 the same logits come from ``x.detach()``, so every
    loss's input gradient there is exactly zero while the scores still answer a search."""

    def forward(self, x):
        def logits(v):
            d = 20 * (v[:, 1:].mean(1) - 0.5)
            return torch.stack([-d, d], 1)

        return torch.where(x[:, :1] > 0.5, logits(x.detach()), logits(x))


def test_square_fools_the_survivors_the_gradient_members_cannot_move() -> None:
    """All of class 0, the mean of features 1..15 at 0.5 - r * eps. Unflagged, r = 0.5: FGSM
    (every feature + eps) fools them. Flagged, the gradient members cannot move them (a zero
    gradient; APGD's uniform random start puts the mean 0.8 eps up with a probability of
    (1.5^15 - 15 * 0.5^15) / 15!, about 3e-10), yet the all-(+eps) corner of the ball fools
    those at r = 0.8, which a search on the scores reaches; at r = 1.2 no point of it does."""
    eps = 0.1

    def group(count, flag, r):
        x = torch.full((count, 16), 0.5 - r * eps)
        x[:, 0] = flag
        return x

    x = torch.cat([group(6, 0.0, 0.5), group(6, 1.0, 0.8), group(4, 1.0, 1.2)])
    y = torch.zeros(len(x), dtype=torch.long)
    model = TorchClassifier(DetachedWhenFlagged(), name="m", input_range=(0.0, 1.0))
    corner = (x + eps).clamp(0, 1)
    assert correct(model, x, y).all() and correct(model, corner, y).tolist() == [False] * 12 + [True] * 4
    adversarial, stats = run(model, x, y, eps)
    assert correct(model, adversarial, y).tolist() == [False] * 12 + [True] * 4
    assert float((adversarial - x).abs().max()) <= eps + 1e-6
    assert {m: stats[f"fooled_by_{m}"] for m in MEMBERS} == {"fgsm": 6, "apgd-ce": 0, "apgd-t": 0,
                                                            "apgd-t-interior": 0, "square": 6}
    assert stats["queries"] > 0 and stats["no_gradient_batches"] == 0
    assert describe_strongest(stats) == ("fooled first by: fgsm 6, apgd-ce 0, apgd-t 0, "
                                         "apgd-t-interior 0, square 6")
    assert stats["gradient_free"] == 10  # every flagged sample: the gradient members left them all


class Quantised(torch.nn.Module):
    """The MLP on inputs rounded to quarters: its input gradient is exactly zero everywhere."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


def test_gradient_free_samples_are_counted_and_cost_one_pass_per_run(digits) -> None:
    """Every gradient is exactly zero: FGSM and APGD cannot move a sample, so each APGD run
    leaves after its first evaluation (a zero gradient is a fixed point of the run), the
    samples they leave standing are all counted ``gradient_free``, and square, which needs
    no gradient, still fools some of them."""
    x, y = digits
    model = TorchClassifier(Quantised(trained_mlp()), name="q", input_range=(0.0, 1.0))
    grad, scores = model.loss_gradient(x, y)
    assert not grad.any()
    standing = int(correct(model, x, y).sum())
    stats = {}
    adversarial = strongest(model, x, y, 0.1, np.random.default_rng(0), scores, stats, grad=grad,
                            **{**FAST, "targets": 2})
    assert stats["fooled_by_fgsm"] == 0  # the FGSM corner is x itself
    # what APGD fools here it fools at its random starts, before any step
    gradient_members = sum(stats[f"fooled_by_{m}"] for m in ("apgd-ce", "apgd-t", "apgd-t-interior"))
    assert stats["gradient_free"] == standing - gradient_members - stats["interior"]
    assert stats["gradient_free"] > 0.5 * standing
    # the shared gradient, then one evaluation per run: apgd-ce, 2 targets, 2 interior targets
    assert stats["gradients"] <= len(x) + standing * (1 + 2 + 2)
    assert stats["fooled_by_square"] > 0
    assert int(correct(model, adversarial, y).sum()) == standing - sum(
        stats[f"fooled_by_{m}"] for m in MEMBERS)


def test_strongest_reuses_the_engines_gradient(digits) -> None:
    x, y = digits
    model = TorchClassifier(trained_mlp(), name="m", input_range=(0.0, 1.0))
    grad, scores = model.loss_gradient(x[:60], y[:60])
    at_x = []
    real = model.loss_gradient
    model.loss_gradient = lambda *args: (at_x.append(torch.equal(args[0], x[:60])), real(*args))[1]
    strongest(model, x[:60], y[:60], 0.1, np.random.default_rng(0), scores, {}, grad=grad, **FAST)
    assert at_x and not any(at_x)  # APGD's own gradients, never the cross-entropy's at x again
    at_x.clear()
    strongest(model, x[:60], y[:60], 0.1, np.random.default_rng(0), scores, {}, **FAST)
    assert at_x.count(True) == 1  # without the engine's, strongest takes it once
