"""The losses gradient attacks ascend: exact gradients (closed forms on linear models, in
numpy float64) where float32 cross-entropy loses the true class's term, and the margin and
DLR losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import LinearNet
from pytest_advrobust.models.base import loss_per_sample
from pytest_advrobust.models.torch_models import TorchClassifier


def confident_linear(scale: float = 1.0):
    """A 3-class linear model over 6 features whose true-class logit leads by 20-40: p_y
    rounds to 1.0 in float32 (and for the larger gaps in float64 too)."""
    w = np.array([[4.0, -1.0, 2.0, 0.5, -3.0, 1.0],
                  [-2.0, 3.0, -1.0, 2.5, 1.0, -0.5],
                  [1.0, 1.0, -4.0, -2.0, 2.0, 3.0]]) * scale
    b = np.array([30.0, 0.0, 2.0]) * scale
    x = np.random.default_rng(0).uniform(0.0, 1.0, size=(8, 6)).astype(np.float32)
    return w.astype(np.float32), b.astype(np.float32), x


def closed_form_ce_gradient(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """W^T (softmax(z) - onehot(y)) in float64, the true class's term written as minus the
    sum of the others' probabilities (so it does not cancel to 0)."""
    w64, b64, x64 = w.astype(np.float64), b.astype(np.float64), x.astype(np.float64)
    z = x64 @ w64.T + b64
    rows = np.arange(len(y))
    shifted = z - z[rows, y][:, None]  # true class at 0: exp(shifted) = p_j / p_y
    ratio = np.exp(shifted)
    ratio[rows, y] = 0.0
    rest = ratio.sum(1)  # sum_{j != y} p_j / p_y
    p = ratio / (1.0 + rest)[:, None]
    p[rows, y] = -rest / (1.0 + rest)  # p_y - 1 = -(sum of the others)
    return p @ w64


def test_float32_cross_entropy_loses_the_true_class_term_and_ours_does_not() -> None:
    w, b, x = confident_linear()
    model = TorchClassifier(LinearNet(w, b).eval(), name="m", input_range=(0.0, 1.0))
    y = torch.zeros(len(x), dtype=torch.int64)  # class 0 leads by ~20-40 everywhere
    assert bool((model.scores(torch.from_numpy(x)).argmax(1) == 0).all())
    expected = closed_form_ce_gradient(w, b, x, y.numpy())

    # the premise: float32 cross-entropy (what peer libraries compute) points elsewhere
    leaf = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.cross_entropy(LinearNet(w, b)(leaf), y, reduction="sum").backward()
    assert (np.sign(leaf.grad.numpy()) != np.sign(expected)).any()

    grad, _ = model.loss_gradient(torch.from_numpy(x), y)
    assert np.array_equal(np.sign(grad.numpy()), np.sign(expected))
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-4, atol=0)


def test_gradient_stays_exact_beyond_float64_rounding_of_p_y() -> None:
    """At logit gaps of 40-80, p_y is 1.0 even in float64: the softplus form keeps the term
    (up to float32's smallest normal number, the logit gradient going back through the model)."""
    w, b, x = confident_linear(scale=2.0)
    model = TorchClassifier(LinearNet(w, b).eval(), name="m", input_range=(0.0, 1.0))
    y = torch.zeros(len(x), dtype=torch.int64)
    z = x.astype(np.float64) @ w.T.astype(np.float64) + b
    gap = z[:, 0] - z[:, 1:].max(1)
    assert (gap > 38).all() and (gap < 85).all()
    expected = closed_form_ce_gradient(w, b, x, y.numpy())
    grad, _ = model.loss_gradient(torch.from_numpy(x), y)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-4, atol=0)


class SoftmaxNet(torch.nn.Module):
    """A linear model whose output is its softmax: probabilities, in float32."""

    def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
        super().__init__()
        self.linear = LinearNet(w, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), 1)


def test_probabilities_output_gets_the_exact_gradient_of_minus_log_p_y() -> None:
    w, b, x = confident_linear()
    model = TorchClassifier(SoftmaxNet(w, b).eval(), name="m", input_range=(0.0, 1.0))
    y = torch.zeros(len(x), dtype=torch.int64)
    probabilities = model.scores(torch.from_numpy(x))
    assert bool((probabilities[:, 0] == 1.0).all())  # float32 p_y is exactly 1
    assert model.output_kind == "probabilities"
    expected = closed_form_ce_gradient(w, b, x, y.numpy())
    grad, _ = model.loss_gradient(torch.from_numpy(x), y)
    assert np.array_equal(np.sign(grad.numpy()), np.sign(expected))
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-3, atol=0)
    # and the value is -log p_y (~ the sum of the other probabilities)
    value = loss_per_sample(probabilities, y, "probabilities")
    rest = probabilities[:, 1:].double().sum(1)
    assert torch.allclose(value, rest, rtol=1e-6, atol=0)


def test_ce_value_matches_cross_entropy() -> None:
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0], [-3.0, 4.0, 1.0]])
    y = torch.tensor([0, 2, 0])
    expected = torch.nn.functional.cross_entropy(z.double(), y, reduction="none")
    assert torch.allclose(loss_per_sample(z, y, "logits"), expected, rtol=1e-12, atol=1e-12)


def test_margin_and_dlr_values_on_hand_made_scores() -> None:
    z = torch.tensor([[3.0, 1.0, 2.0, -1.0], [0.0, 5.0, 1.0, 1.0]])
    y = torch.tensor([0, 0])
    # margin = max_{j != y} z_j - z_y
    assert loss_per_sample(z, y, "logits", "margin").tolist() == [2.0 - 3.0, 5.0 - 0.0]
    # dlr = margin / (z_(1) - z_(3)): sorted rows (3, 2, 1, -1) and (5, 1, 1, 0)
    assert torch.allclose(loss_per_sample(z, y, "logits", "dlr"),
                          torch.tensor([-1.0 / 2.0, 5.0 / 4.0], dtype=torch.float64))
    # DLR is invariant to the scale of the logits; the margin scales with it
    assert torch.allclose(loss_per_sample(z * 1e4, y, "logits", "dlr"), loss_per_sample(z, y, "logits", "dlr"))
    # probabilities: the margin of their log, which equals the logit margin of a softmax model
    p = torch.softmax(z.double(), 1)
    assert torch.allclose(loss_per_sample(p, y, "probabilities", "margin"),
                          loss_per_sample(z, y, "logits", "margin"))


def test_margin_gradient_survives_logits_scaled_by_1e4() -> None:
    """The saturated model: cross-entropy's gradient is exactly 0, the margin's is W_j - W_y."""
    w, b, x = confident_linear(scale=1e4)
    model = TorchClassifier(LinearNet(w, b).eval(), name="m", input_range=(0.0, 1.0))
    xt = torch.from_numpy(x)
    y = torch.zeros(len(x), dtype=torch.int64)
    grad, _ = model.loss_gradient(xt, y)
    assert bool((grad == 0).all())
    z = model.scores(xt).double()
    w64 = w.astype(np.float64)
    runner_up, last = (z[:, 1:].argmax(1) + 1).numpy(), z.argmin(1).numpy()
    margin = w64[runner_up] - w64[0]
    grad, _ = model.loss_gradient(xt, y, loss="margin")
    assert np.array_equal(np.sign(grad.numpy()), np.sign(margin))
    # DLR with 3 classes: gap / (z_y - z_min), so its gradient is the quotient rule's
    gap = (z.gather(1, torch.from_numpy(runner_up)[:, None]).squeeze(1) - z[:, 0]).numpy()
    spread = (z[:, 0] - z.min(1).values).numpy()
    dlr = margin / spread[:, None] - (gap / spread ** 2)[:, None] * (w64[0] - w64[last])
    grad, _ = model.loss_gradient(xt, y, loss="dlr")
    np.testing.assert_allclose(grad.numpy(), dlr, rtol=1e-3, atol=1e-9)


def test_unknown_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="'hinge' is not one of"):
        loss_per_sample(torch.zeros(2, 3), torch.tensor([0, 1]), "logits", "hinge")


def test_onnx_model_takes_the_same_exact_and_margin_gradients(tmp_path) -> None:
    """An ONNX export gives the torch model's gradients for every loss (through its twin)."""
    from conftest import export_onnx
    from pytest_advrobust.models.onnx_models import load_onnx

    w, b, x = confident_linear()
    net = LinearNet(w, b).eval()
    export_onnx(net, torch.zeros(1, 6), tmp_path / "linear.onnx")
    onnx_model = load_onnx(tmp_path / "linear.onnx", output=None, device=torch.device("cpu"),
                           name="onnx", input_range=(0.0, 1.0))
    torch_model = TorchClassifier(net, name="torch", input_range=(0.0, 1.0))
    xt, y = torch.from_numpy(x), torch.zeros(len(x), dtype=torch.int64)
    expected = closed_form_ce_gradient(w, b, x, y.numpy())
    grad, _ = onnx_model.loss_gradient(xt, y)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-4, atol=0)
    for loss in ("margin", "dlr"):
        ours, _ = onnx_model.loss_gradient(xt, y, loss)
        reference, _ = torch_model.loss_gradient(xt, y, loss)
        assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-7), loss
