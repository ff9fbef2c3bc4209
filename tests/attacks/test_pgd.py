"""PGD: the closed form on a linear model, never weaker than FGSM, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import LinearNet
from digits_project import digits_split, trained_mlp
from pytest_advrobust.attacks.pgd import pgd
from pytest_advrobust.models.torch_models import TorchClassifier


def classifier(module: torch.nn.Module) -> TorchClassifier:
    return TorchClassifier(module.eval(), name="m", input_range=(0.0, 1.0))


def run_pgd(model, x, y, eps, seed=0, **options):
    grad, scores = model.loss_gradient(x, y)
    return pgd(model, x, y, eps, np.random.default_rng(seed), grad, scores, **options)


def fooled(model, x, y) -> torch.Tensor:
    return model.scores(x).argmax(1) != y


@pytest.fixture
def linear():
    """A binary linear model and inputs well inside [0, 1], so eps=0.1 never clips."""
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(2, 16))
    x = torch.from_numpy(rng.uniform(0.3, 0.7, size=(400, 16)).astype(np.float32))
    centre = float(np.median(x.numpy() @ (weight[1] - weight[0])))
    model = classifier(LinearNet(weight, np.array([0.0, -centre])))  # half of each class
    y = model.scores(x).argmax(1)  # every sample starts correctly classified
    return model, weight, x, y


def test_pgd_reaches_the_linear_optimum(linear) -> None:
    model, weight, x, y = linear
    eps = 0.1
    # closed form: the loss of a linear model is maximised at the corner x + eps*sign(w_other - w_y)
    direction = np.sign(weight[1] - weight[0])
    sign = torch.from_numpy(np.where(y.numpy()[:, None] == 0, direction, -direction)).float()
    corner = x + eps * sign
    optimum_fooled = fooled(model, corner, y)
    assert 0 < int(optimum_fooled.sum()) < len(y)  # the test sees both kinds of sample
    assert 100 < int(y.sum()) < 300  # and both classes
    adversarial = run_pgd(model, x, y, eps, steps=10)
    assert torch.equal(fooled(model, adversarial, y), optimum_fooled)
    held = ~optimum_fooled  # samples no point of the ball fools end exactly at the corner
    assert torch.allclose(adversarial[held], corner[held], atol=1e-6)
    assert float((adversarial - x).abs().max()) <= eps * (1 + 1e-6)


@pytest.fixture(scope="module")
def digits_mlp():
    _, _, x, y = digits_split()
    return classifier(trained_mlp()), torch.from_numpy(x), torch.from_numpy(y)


def test_pgd_is_never_weaker_than_fgsm_per_sample(digits_mlp) -> None:
    model, x, y = digits_mlp
    eps = 0.1
    grad, _ = model.loss_gradient(x, y)
    fgsm_point = (x + eps * grad.sign()).clamp(0, 1)
    fgsm_fooled = fooled(model, fgsm_point, y) | fooled(model, x, y)
    for options in ({"steps": 20}, {"steps": 3, "random-start": False}, {"steps": 5, "restarts": 2}):
        adversarial = run_pgd(model, x, y, eps, **{k.replace("-", "_"): v for k, v in options.items()})
        pgd_fooled = fooled(model, adversarial, y)
        assert not bool((fgsm_fooled & ~pgd_fooled).any()), options
        assert float((adversarial - x).abs().max()) <= eps * (1 + 1e-6)
        assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1
    assert int(pgd_fooled.sum()) > int(fgsm_fooled.sum())  # and strictly stronger here


def test_pgd_without_steps_is_fgsm(digits_mlp) -> None:
    model, x, y = digits_mlp
    grad, _ = model.loss_gradient(x, y)
    adversarial = run_pgd(model, x, y, 0.05, steps=0)
    clean_wrong = fooled(model, x, y)
    expected = (x + 0.05 * grad.sign()).clamp(0, 1)
    assert torch.equal(adversarial[~clean_wrong], expected[~clean_wrong])
    assert torch.equal(adversarial[clean_wrong], x[clean_wrong])  # already wrong: left alone


def test_pgd_is_deterministic_given_the_seed(digits_mlp) -> None:
    model, x, y = digits_mlp
    first = run_pgd(model, x, y, 0.05, seed=3, steps=5)
    again = run_pgd(model, x, y, 0.05, seed=3, steps=5)
    other = run_pgd(model, x, y, 0.05, seed=4, steps=5)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


class Saturated(torch.nn.Module):
    """A model's logits multiplied by a constant: the same decisions, a masked cross-entropy
    gradient (the idea behind defensive distillation)."""

    def __init__(self, module: torch.nn.Module, factor: float = 1e4) -> None:
        super().__init__()
        self.module, self.factor = module, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) * self.factor


def accuracy(model, x, y, adversarial) -> float:
    return float((~fooled(model, adversarial, y)).float().mean())


def test_default_pgd_is_not_fooled_by_saturated_logits(digits_mlp) -> None:
    """Cross-entropy PGD calls the x1e4 model robust (its gradient is exactly zero); the
    default pgd (cross-entropy, then the margin on the survivors) finds what margin PGD finds."""
    plain, x, y = digits_mlp
    model = classifier(Saturated(trained_mlp()))
    clean = accuracy(model, x, y, x)
    assert clean == accuracy(plain, x, y, x) and clean > 0.95  # the same decisions
    stats: dict = {}
    ce = accuracy(model, x, y, run_pgd(model, x, y, 0.1, loss="ce", stats=stats))
    assert ce > clean - 0.05  # "robust"
    assert stats["gradient_free"] > 0.9 * clean * len(y)  # and it says why: nothing moved
    margin = accuracy(model, x, y, run_pgd(model, x, y, 0.1, loss="margin"))
    stats = {}
    default = accuracy(model, x, y, run_pgd(model, x, y, 0.1, stats=stats))
    assert margin < 0.5 and default <= margin + 0.05
    assert stats["gradient_free"] == 0
    # on the unsaturated model the default is at least as strong as cross-entropy alone
    assert accuracy(plain, x, y, run_pgd(plain, x, y, 0.1)) <= \
        accuracy(plain, x, y, run_pgd(plain, x, y, 0.1, loss="ce"))


def test_margin_run_costs_only_on_the_survivors(digits_mlp) -> None:
    """The margin run of the default sees only the samples cross-entropy left standing."""
    model, x, y = digits_mlp
    seen = {"ce": 0, "margin": 0}
    real = model.loss_gradient

    def counting(inputs, labels, loss="ce"):
        seen[loss] += len(inputs)
        return real(inputs, labels, loss)

    adversarial = pgd_linf_with(counting, model, x, y, 0.1, ("ce",))
    standing = int((~fooled(model, adversarial, y)).sum())
    seen.update(ce=0, margin=0)
    pgd_linf_with(counting, model, x, y, 0.1, ("ce", "margin"))
    assert 0 < seen["margin"] <= standing * 10  # at most `steps` gradients per survivor


def pgd_linf_with(loss_gradient, model, x, y, eps, losses):
    from pytest_advrobust.attacks.pgd import pgd_linf

    grad, scores = model.loss_gradient(x, y)
    return pgd_linf(loss_gradient, model.scores, x, y, eps, model.input_range, np.random.default_rng(0),
                    grad=grad, scores=scores, losses=losses)
