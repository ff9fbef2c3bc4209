"""APGD: the paper's schedule against a hand-written reference, DLR by hand, never weaker
than FGSM, and not fooled by logits scaled to saturate the cross-entropy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from digits_project import digits_split, trained_mlp
from pytest_advrobust.attacks.apgd import apgd, checkpoints, dlr_loss
from pytest_advrobust.errors import AttackError
from pytest_advrobust.models.torch_models import TorchClassifier


def classifier(module: torch.nn.Module, dtype=torch.float32) -> TorchClassifier:
    return TorchClassifier(module.eval(), name="m", input_range=(0.0, 1.0), dtype=dtype)


def run_apgd(model, x, y, eps, seed=0, stats=None, **options):
    grad, scores = model.loss_gradient(x, y)
    return apgd(model, x, y, eps, np.random.default_rng(seed), grad, scores,
                {} if stats is None else stats, **options)


def fooled(model, x, y) -> torch.Tensor:
    return model.scores(x).argmax(1) != y


def test_checkpoints_follow_the_papers_p_schedule() -> None:
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (the official code's 100-step list)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(12) == [3, 5, 7, 9, 10, 11, 12]


def test_dlr_by_hand() -> None:
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.5, 2.0, 1.0, -3.0]])
    y = torch.tensor([0, 0])
    # row 0: -(3 - 1) / (3 - 0); row 1 (misclassified): -(0.5 - 2) / (2 - 0.5)
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-2 / 3, 1.0], dtype=torch.float64))
    # targeted at class 2: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    assert torch.allclose(dlr_loss(z, y, torch.tensor([2, 2])),
                          torch.tensor([-3 / 3.5, -(0.5 - 1.0) / (2 - (0.5 - 3.0) / 2)], dtype=torch.float64))
    # invariant to the scale of the logits (a x1e4 head cannot flatten it), and to a shift
    assert torch.allclose(dlr_loss(z * 1e4 + 7, y), dlr_loss(z, y))
    # probabilities: the DLR of their log equals the logits' DLR
    assert torch.allclose(dlr_loss(torch.softmax(z.double(), 1), y, probabilities=True), dlr_loss(z, y))


class Recorder(torch.nn.Module):
    """Wraps a module and keeps every input it is differentiated at."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        if x.requires_grad:
            self.seen.append(x.detach().clone())
        return self.inner(x)


def reference_apgd(net, x0, y, eps, steps, w, rules=(1, 2)):
    """Algorithm 1 of Croce & Hein (2020) for one sample, float64, written out plainly.
    ``rules``: the conditions that halve the step (1: the loss rose too rarely, 2: neither
    the step nor the best loss changed); ``()`` keeps the step at ``2 * eps``."""

    def f_and_grad(point):
        point = point.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(net(point[None]), y[None])
        (g,) = torch.autograd.grad(loss, point)
        return float(loss.detach()), g

    def project(point):
        return torch.clamp(torch.min(torch.max(point, x0 - eps), x0 + eps), 0.0, 1.0)

    eta, x, x_prev = 2 * eps, x0.clone(), x0.clone()
    f, g = f_and_grad(x)
    f_max, x_max, g_max = f, x, g
    losses, iterates, halvings = [f], [x], 0
    last_w, eta_at_last, f_max_at_last = 0, eta, f_max
    for k in range(steps):
        z = project(x + eta * torch.sign(g))
        new = z if k == 0 else project(x + 0.75 * (z - x) + 0.25 * (x - x_prev))
        x_prev, x = x, new
        f, g = f_and_grad(x)
        losses.append(f)
        iterates.append(x)
        if f > f_max:
            f_max, x_max, g_max = f, x, g
        if k + 1 in w:
            rises = sum(losses[i + 1] > losses[i] for i in range(last_w, k + 1))
            condition1 = rises < 0.75 * (k + 1 - last_w)
            condition2 = eta == eta_at_last and f_max == f_max_at_last
            eta_at_last, f_max_at_last, last_w = eta, f_max, k + 1
            if (1 in rules and condition1) or (2 in rules and condition2):
                eta, x, g, halvings = eta / 2, x_max, g_max, halvings + 1
    return iterates, halvings


def test_apgd_ce_takes_the_reference_iterates() -> None:
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).double()
    x = torch.rand(12, 6, dtype=torch.float64) * 0.6 + 0.2
    y = net(x).argmax(1)
    eps, steps = 0.02, 12  # small enough that no sample is fooled: every iterate is compared
    recorder = Recorder(net)
    model = classifier(recorder, torch.float64)
    grad, scores = model.loss_gradient(x, y)
    recorder.seen.clear()
    adversarial = apgd(model, x, y, eps, np.random.default_rng(0), grad, scores, {}, steps=steps,
                       random_start=False)
    assert not fooled(model, adversarial, y).any()
    assert len(recorder.seen) == steps  # the start's gradient is the engine's, reused
    total_halvings = 0
    for i in range(len(x)):
        iterates, halvings = reference_apgd(net, x[i], y[i], eps, steps, [3, 5, 7, 9, 10, 11, 12])
        total_halvings += halvings
        for k in range(steps):
            assert torch.allclose(recorder.seen[k][i], iterates[k + 1], atol=1e-12), (i, k)
    assert total_halvings > 0  # the schedule's halving and restart-from-best were exercised


class Notch(torch.nn.Module):
    """1-D, two classes: class 1 only within ``width`` of ``peak``, so the cross-entropy of
    class 0 peaks there and its gradient's sign points at the peak from either side."""

    def __init__(self, peak: float, width: float) -> None:
        super().__init__()
        self.peak, self.width = peak, width

    def forward(self, x):
        margin = 20 * ((x[:, 0] - self.peak).abs() - self.width)
        return torch.stack([margin, torch.zeros_like(margin)], 1)


@pytest.mark.parametrize("steps, weaker", [(20, []), (10, [(1,)])], ids=["steps=20", "steps=10"])
def test_halving_the_step_finds_a_narrow_region_a_fixed_step_jumps_over(steps, weaker) -> None:
    """A fixed step of 2 eps only ever aims at a corner of the ball, so the iterates jump to
    and fro across the 0.004-wide region where the model is fooled; the halvings (and the
    returns to the best point) close in on it. The reference decides which sample is fooled
    at which iterate, and shows that with a fixed step none is, and that at 10 steps the
    second halving rule (the best loss stalled) changes which are."""
    eps = 0.1
    net = Notch(0.5, 0.002).double()
    x = torch.tensor([[0.5 - r * eps] for r in np.linspace(0.1, 0.9, 17)], dtype=torch.float64)
    y = torch.zeros(len(x), dtype=torch.long)
    w = checkpoints(steps)

    def first_fooled(rules=(1, 2)):
        """Per sample, the reference iterate that first fools the model (None: none does)."""
        out = []
        for i in range(len(x)):
            iterates, _ = reference_apgd(net, x[i], y[i], eps, steps, w, rules)
            out.append(next((p for p in iterates if int(net(p[None]).argmax(1)) != 0), None))
        return out

    expected = first_fooled()
    assert sum(p is not None for p in expected) >= 8
    assert all(p is None for p in first_fooled(()))
    for rules in weaker:  # a reference with only these halving rules fools other samples
        assert [p is None for p in first_fooled(rules)] != [p is None for p in expected], rules
    model = classifier(net, torch.float64)
    adversarial = run_apgd(model, x, y, eps, steps=steps, random_start=False)
    assert fooled(model, adversarial, y).tolist() == [p is not None for p in expected]
    for i, point in enumerate(expected):  # each fooled sample keeps the iterate that first fooled it
        if point is not None:
            assert torch.allclose(adversarial[i], point, atol=1e-12), i


@pytest.fixture(scope="module")
def digits_mlp():
    _, _, x, y = digits_split()
    return classifier(trained_mlp()), torch.from_numpy(x), torch.from_numpy(y)


@pytest.mark.parametrize("options", [{"steps": 20}, {"steps": 20, "loss": "dlr"},
                                     {"steps": 10, "loss": "dlr", "targeted": True, "targets": 3}])
def test_apgd_is_never_weaker_than_fgsm_and_stays_in_the_ball(digits_mlp, options) -> None:
    model, x, y = digits_mlp
    eps = 0.1
    grad, _ = model.loss_gradient(x, y)
    fgsm_fooled = fooled(model, (x + eps * grad.sign()).clamp(0, 1), y) | fooled(model, x, y)
    stats = {}
    adversarial = run_apgd(model, x, y, eps, stats=stats, **options)
    apgd_fooled = fooled(model, adversarial, y)
    assert not bool((fgsm_fooled & ~apgd_fooled).any())
    assert int(apgd_fooled.sum()) > int(fgsm_fooled.sum()) + 10
    assert float((adversarial - x).abs().max()) <= eps * (1 + 1e-6)
    assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1
    # gradients are spent only on samples still standing: far fewer than every sample x steps
    runs = options.get("targets", 1) if options.get("targeted") else 1
    assert 0 < stats["gradients"] < len(x) * (options["steps"] + 1) * runs * 0.6


def test_apgd_is_seeded(digits_mlp) -> None:
    model, x, y = digits_mlp
    a = run_apgd(model, x[:100], y[:100], 0.1, seed=5, steps=10)
    b = run_apgd(model, x[:100], y[:100], 0.1, seed=5, steps=10)
    assert torch.equal(a, b)


class Scaled(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x):
        return self.inner(x) * self.factor


def test_dlr_sees_through_logits_scaled_to_saturate(digits_mlp) -> None:
    plain, x, y = digits_mlp
    saturated = classifier(Scaled(trained_mlp(), 1e4))
    eps = 0.1
    robust = {}
    for name, model in (("plain", plain), ("saturated", saturated)):
        robust[name] = 1 - float(fooled(model, run_apgd(model, x, y, eps, steps=20, loss="dlr"), y).float().mean())
    # same decisions, same DLR: the scale changes nothing
    assert abs(robust["saturated"] - robust["plain"]) <= 0.02
    assert robust["saturated"] < 0.5


def test_unknown_loss_is_named(digits_mlp) -> None:
    model, x, y = digits_mlp
    with pytest.raises(AttackError, match="loss = 'hinge'.*\"ce\".*\"dlr\""):
        run_apgd(model, x[:8], y[:8], 0.1, loss="hinge")


@pytest.mark.parametrize("options, key", [({"steps": 0}, "steps"), ({"restarts": 0}, "restarts"),
                                          ({"targeted": True, "targets": 0}, "targets")])
def test_options_that_run_no_attack_are_refused(digits_mlp, options, key) -> None:
    model, x, y = digits_mlp
    with pytest.raises(AttackError, match=f"apgd: {key} = 0 runs no attack at all.*Set {key} to 1 or more"):
        run_apgd(model, x[:8], y[:8], 0.1, **options)
