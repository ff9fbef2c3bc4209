"""FGSM against results computed independently: closed forms on linear models, in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import LinearNet, export_onnx
from project import gate_session, save_torchscript


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def fgsm_linear_numpy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, eps: float,
                      low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Independent FGSM on z = x W^T + b: grad_x CE = W^T (softmax(z) - onehot(y))."""
    x64 = x.astype(np.float64)
    p = softmax(x64 @ w.T + b)
    p[np.arange(len(y)), y] -= 1.0
    grad = p @ w
    return np.clip(x64 + eps * np.sign(grad), low, high)


def accuracy_numpy(w, b, x, y) -> float:
    return float(((x @ w.T + b).argmax(1) == y).mean())


@pytest.fixture
def linear_task():
    """A 4-class linear model over 12 features with a clean accuracy near 1."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, size=(4, 12))
    b = rng.normal(0, 0.1, size=4)
    x = rng.uniform(0, 1, size=(300, 12)).astype(np.float32)
    y = (x.astype(np.float64) @ w.T + b).argmax(1).astype(np.int64)
    return w.astype(np.float32), b.astype(np.float32), x, y


def gate_scales(spec, check, eps: float, n: int) -> np.ndarray:
    """The interior points' scales of a gate's samples 0..n-1: each sample's first draw from
    its own stream (interior.py), s = 0.99 + 0.009 * u."""
    from pytest_advrobust.randomness import row_random, sample_key

    key = sample_key(spec.seed, spec.name, check.index, eps)
    return 0.99 + 0.009 * np.array([row_random(key, i, 1)[0] for i in range(n)])


def test_binary_logistic_step_is_eps_sign_w_away_from_true_class() -> None:
    """For logits [0, w.x + b] the FGSM step is -eps*sign(w) for class 1, +eps*sign(w) for 0."""
    from pytest_advrobust.attacks.basic import fgsm_step
    from pytest_advrobust.models.torch_models import TorchClassifier

    w = np.array([0.5, -2.0, 1.0, -0.25], dtype=np.float32)
    net = LinearNet(np.stack([np.zeros(4, np.float32), w]), np.array([0.0, 0.1], np.float32))
    model = TorchClassifier(net.eval(), name="logistic", input_range=(0, 1))
    x = torch.full((2, 4), 0.5)
    y = torch.tensor([1, 0])
    grad, _ = model.loss_gradient(x, y)
    step = fgsm_step(x, 0.1, grad, model.input_range) - x
    expected = torch.stack([-0.1 * torch.sign(torch.from_numpy(w)), 0.1 * torch.sign(torch.from_numpy(w))])
    assert torch.allclose(step, expected)


class Band(torch.nn.Module):
    """Class 1 for inputs strictly between 0.55 and 0.59995, class 0 elsewhere: the FGSM
    corner 0.6 of x = 0.5 at eps 0.1 is classified right, the way there wrong."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        band = ((x > 0.55) & (x < 0.59995)).float().sum(1, keepdim=True)
        return torch.cat([1 - band, band], 1)


def test_fgsm_hands_the_engine_the_corner_then_its_interior_point(tmp_path) -> None:
    """fgsm returns two candidates, the corner and the interior point x + s (x_c - x), s in
    [0.99, 0.999) drawn per sample; the gate counts a sample fooled when either fools it."""
    from pytest_advrobust.attacks.basic import fgsm
    from pytest_advrobust.engine import Request
    from pytest_advrobust.models.torch_models import TorchClassifier

    model = TorchClassifier(Band(), name="band", input_range=(0, 1))
    x = torch.tensor([[0.5], [0.5], [0.2], [0.2]])
    y = torch.zeros(4, dtype=torch.long)
    corner, inside = fgsm(model, x, y, 0.1, np.random.default_rng(3), torch.ones(4, 1))
    scale = 0.99 + 0.009 * np.random.default_rng(3).random(4)  # one draw per sample
    assert torch.allclose(corner, torch.tensor([[0.6], [0.6], [0.3], [0.3]]))
    assert torch.allclose(inside, x + torch.from_numpy(scale).float()[:, None] * 0.1, atol=1e-7)
    assert (model.scores(corner).argmax(1) == 0).all() and (model.scores(inside[:2]).argmax(1) == 1).all()
    # through the engine: the corners fool nobody, the interior points two of four
    session = gate_session(tmp_path, "band.pt", x.numpy(), y.numpy(),
                           checks='[[tool.advrobust.checks]]\nattack = "fgsm"\nreport-only = true\neps = 0.1\n')
    save_torchscript(Band(), tmp_path / "band.pt")
    spec = session.spec()
    model = session.engine.classifier(spec)
    model.loss_gradient = lambda inputs, labels, loss="ce": (torch.ones_like(inputs), model.scores(inputs))
    assert session.engine.measure(spec, Request(spec.checks[0], 0.1)).correct == 2


@pytest.mark.parametrize("eps", [0.02, 0.1, 0.3])
def test_fgsm_gate_matches_numpy_on_torchscript(tmp_path, linear_task, eps) -> None:
    w, b, x, y = linear_task
    save_torchscript(LinearNet(w, b), tmp_path / "linear.pt")
    session = gate_session(tmp_path, "linear.pt", x, y)
    result = session.probe().fgsm(eps=eps)
    expected = accuracy_numpy(w, b, fgsm_linear_numpy(w, b, x, y, eps), y)
    assert result.n == 300
    assert result.clean_accuracy == pytest.approx(1.0)
    assert abs(result.accuracy - expected) <= 2 / 300  # float32 vs float64 ties: within 2 samples
    if eps >= 0.1:  # and the attack does bite: the comparison is not between two no-ops
        assert result.accuracy < 0.9


def test_fgsm_sweep_reuses_one_gradient_pass(tmp_path, linear_task) -> None:
    """The sweep computes one forward+backward per batch, and per eps one forward and one
    more over the samples the corner left standing (for their interior points)."""
    w, b, x, y = linear_task
    save_torchscript(LinearNet(w, b), tmp_path / "linear.pt")
    session = gate_session(tmp_path, "linear.pt", x, y,
                           checks='[[tool.advrobust.checks]]\nattack = "fgsm"\nreport-only = true\neps = [0.05, 0.1, 0.2]\n'
                                  'masking-probe = false\n'
                                  '[[tool.advrobust.checks]]\nattack = "clean"\nreport-only = true\n')
    model = session.engine.classifier(session.spec())
    calls = {"grad": 0, "scores": 0}
    real_grad, real_scores = model.loss_gradient, model.scores
    model.loss_gradient = lambda *a: (calls.__setitem__("grad", calls["grad"] + 1), real_grad(*a))[1]
    model.scores = lambda *a: (calls.__setitem__("scores", calls["scores"] + 1), real_scores(*a))[1]
    results = session.run_all()
    batches = -(-300 // 64)
    assert calls["grad"] == batches
    # per eps one forward and one over the samples the corner left standing; + the randomness check, once
    assert 3 * batches + 1 < calls["scores"] <= 2 * 3 * batches + 1
    assert [r.attack for r in results] == ["fgsm", "fgsm", "fgsm", "clean"]
    assert results[3].accuracy == results[0].clean_accuracy


def test_probability_outputs_use_negative_log_of_true_class(tmp_path, linear_task) -> None:
    """softmax outputs: -log p_y has the same gradient as cross-entropy on the logits."""
    w, b, x, y = linear_task
    net = torch.nn.Sequential(LinearNet(w, b), torch.nn.Softmax(dim=1))
    save_torchscript(net, tmp_path / "probs.pt")
    session = gate_session(tmp_path, "probs.pt", x, y)
    result = session.probe().fgsm(eps=0.1)
    assert session.engine.classifier(session.spec()).output_kind == "probabilities"
    expected = accuracy_numpy(w, b, fgsm_linear_numpy(w, b, x, y, 0.1), y)
    assert abs(result.accuracy - expected) <= 2 / 300


def test_fgsm_on_onnx_and_torch_export_match_numpy(tmp_path, linear_task) -> None:
    w, b, x, y = linear_task
    net = LinearNet(w, b).eval()
    export_onnx(net, torch.zeros(1, 12), tmp_path / "linear.onnx")
    torch.export.save(torch.export.export(net, (torch.zeros(2, 12),),
                                          dynamic_shapes=({0: torch.export.Dim("n")},)),
                      str(tmp_path / "linear.pt2"))
    expected = accuracy_numpy(w, b, fgsm_linear_numpy(w, b, x, y, 0.1), y)
    for ref in ("linear.onnx", "linear.pt2"):
        result = gate_session(tmp_path, ref, x, y).probe().fgsm(eps=0.1)
        assert abs(result.accuracy - expected) <= 2 / 300, ref


def test_normalisation_acts_in_raw_units(tmp_path, linear_task) -> None:
    """A model fed (x - mean)/std equals one with the normalisation folded into its weights;
    eps must stay in raw units (perturbing the normalised tensor would be 4x weaker here)."""
    w, b, x, y = linear_task
    mean, std = 0.5, 0.25
    folded_w, folded_b = w / std, b - (w / std).sum(1) * mean
    save_torchscript(LinearNet(w, b), tmp_path / "expects_normalised.pt")
    session = gate_session(tmp_path, "expects_normalised.pt", x, y,
                           extra=f"normalize = {{ mean = [{mean}], std = [{std}] }}\n")
    result = session.probe().fgsm(eps=0.05)
    expected = accuracy_numpy(folded_w, folded_b, fgsm_linear_numpy(folded_w, folded_b, x, y, 0.05), y)
    assert abs(result.accuracy - expected) <= 2 / 300
    assert result.clean_accuracy == pytest.approx(accuracy_numpy(folded_w, folded_b, x, y))


def test_per_channel_normalisation_on_images(tmp_path) -> None:
    """NCHW inputs: mean/std per channel (dimension 1); gradient with respect to raw pixels.
    A ReLU net is not linear along the step, so the reference tries the interior point too."""
    from pytest_advrobust.engine import Request

    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 4 * 4, 3)).eval()
    x = torch.rand(40, 3, 6, 6)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    y = conv((x - mean[:, None, None]) / std[:, None, None]).argmax(1)
    save_torchscript(conv, tmp_path / "conv.pt")
    session = gate_session(tmp_path, "conv.pt", x.numpy(), y.numpy(),
                           checks='[[tool.advrobust.checks]]\nattack = "fgsm"\nreport-only = true\neps = 0.03\n',
                           extra="normalize = { mean = [0.4, 0.5, 0.6], std = [0.2, 0.25, 0.3] }\n")
    spec = session.spec()
    result = session.engine.measure(spec, Request(spec.checks[0], 0.03))
    leaf = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(conv((leaf - mean[:, None, None]) / std[:, None, None]), y,
                                             reduction="sum")
    (grad,) = torch.autograd.grad(loss, leaf)
    corner = (x + 0.03 * grad.sign()).clamp(0, 1)
    scale = torch.from_numpy(gate_scales(spec, spec.checks[0], 0.03, 40)).float()[:, None, None, None]
    inside = x + scale * (corner - x)

    def right(points: torch.Tensor) -> torch.Tensor:
        return conv((points - mean[:, None, None]) / std[:, None, None]).argmax(1) == y

    expected = float((right(corner) & right(inside)).float().mean())
    assert result.clean_accuracy == 1.0
    assert abs(result.accuracy - expected) <= 1 / 40
    assert result.accuracy < 1.0


def test_exact_fgsm_on_a_digits_cnn_is_stronger_than_float32_cross_entropy() -> None:
    """Before/after on a small CNN: the gradient of float32 cross-entropy (what peer libraries
    take) against ours (the loss in float64). Measured: eps 0.2, 0.085 -> 0.024; eps 0.3,
    0.026 -> 0.000."""
    from digits_project import digits_split, trained_flat_cnn
    from pytest_advrobust.models.torch_models import TorchClassifier

    _, _, x_np, y_np = digits_split()
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    net = trained_flat_cnn()
    model = TorchClassifier(net, name="cnn", input_range=(0, 1))
    exact, scores = model.loss_gradient(x, y)
    leaf = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(net(leaf), y, reduction="sum").backward()

    def accuracy(grad: torch.Tensor, eps: float) -> float:
        with torch.no_grad():
            return float((net((x + eps * grad.sign()).clamp(0, 1)).argmax(1) == y).float().mean())

    assert float((scores.argmax(1) == y).float().mean()) > 0.95
    assert (torch.softmax(scores, 1).max(1).values == 1.0).float().mean() > 0.05  # saturated in float32
    assert accuracy(exact, 0.2) <= 0.05
    assert accuracy(leaf.grad, 0.2) >= accuracy(exact, 0.2) + 0.03
    assert accuracy(exact, 0.3) <= accuracy(leaf.grad, 0.3)


def test_linearity_plot_direction_lowers_the_true_class_score() -> None:
    """The linearity plot's "FGSM direction" is the exact one: on the digits CNN's samples
    whose float32 p_y is exactly 1.0, the true class's logit falls along it for every one,
    while along the float32 cross-entropy's direction it rises for some (7 of 50 here)."""
    from digits_project import digits_split, trained_flat_cnn
    from pytest_advrobust.linearity import linearity_curves
    from pytest_advrobust.models.torch_models import TorchClassifier

    _, _, x_np, y_np = digits_split()
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    net = trained_flat_cnn()
    with torch.no_grad():
        logits = net(x)
    saturated = (torch.softmax(logits, 1).max(1).values == 1.0) & (logits.argmax(1) == y)
    x, y, logits = x[saturated], y[saturated], logits[saturated]
    assert len(y) >= 20
    leaf = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(net(leaf), y, reduction="sum").backward()
    with torch.no_grad():
        moved = net(x + 0.1 * leaf.grad.sign())
    assert (moved.gather(1, y[:, None]) >= logits.gather(1, y[:, None])).any()  # the premise

    model = TorchClassifier(net, name="cnn", input_range=(0, 1))
    curves = linearity_curves(model, x, y, eps_max=0.1, steps=3, seed=0)
    true = curves.fgsm[np.arange(len(y)), :, y.numpy()]  # [sample, eps in (-0.1, 0, 0.1)]
    assert (true[:, 2] < true[:, 1]).all()
