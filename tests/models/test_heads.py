"""Models as they ship: single-logit binary heads, fixed-batch exports, several outputs."""

from __future__ import annotations

import json
import textwrap
import warnings

import numpy as np
import pytest
import torch

from conftest import export_onnx
from project import gate_session, save_torchscript

from pytest_advrobust.errors import ModelLoadError


class BinaryNet(torch.nn.Module):
    """``z = x . w + b``, one logit per sample (``[N, 1]``, or ``[N]`` when ``flat``),
    optionally through a sigmoid."""

    def __init__(self, w: np.ndarray, b: float, *, flat: bool = False, sigmoid: bool = False) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(len(w), 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(w, dtype=torch.float32)[None])
            self.linear.bias.fill_(b)
        self.flat, self.sigmoid = flat, sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x.flatten(1))
        if self.sigmoid:
            z = torch.sigmoid(z)
        return z[:, 0] if self.flat else z


def fgsm_binary_numpy(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    """Independent FGSM on BCE-with-logits of ``z = x . w + b``: ``grad_x = (sigmoid(z) - y) w``."""
    x64 = x.astype(np.float64)
    z = x64 @ w.astype(np.float64) + b
    grad = (1 / (1 + np.exp(-z)) - y)[:, None] * w[None].astype(np.float64)
    return np.clip(x64 + eps * np.sign(grad), 0.0, 1.0)


def binary_accuracy(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray) -> float:
    return float((((x.astype(np.float64) @ w + b) > 0).astype(np.int64) == y).mean())


@pytest.fixture
def binary_task():
    """A linearly separable 0/1 task over 12 features in [0, 1], 300 samples."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, size=12).astype(np.float32)
    x = rng.uniform(0, 1, size=(300, 12)).astype(np.float32)
    b = float(-(x.astype(np.float64) @ w).mean())
    y = ((x.astype(np.float64) @ w + b) > 0).astype(np.int64)
    return w, b, x, y


# --------------------------------------------------------------------------
# binary heads
# --------------------------------------------------------------------------


def test_binary_logit_becomes_two_exact_class_columns() -> None:
    """[0, z]: softmax is [1 - sigmoid, sigmoid], cross-entropy is BCE-with-logits, argmax is z > 0;
    [1 - p, p] for probabilities, argmax is p > 0.5."""
    from pytest_advrobust.models.torch_models import TorchClassifier

    w = np.array([1.0, -2.0, 0.5], np.float32)
    net = BinaryNet(w, 0.1).eval()
    model = TorchClassifier(net, name="bin", input_range=(0, 1))
    x = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.9, 0.3], [0.5, 0.5, 0.5]])
    y = torch.tensor([1, 0, 1])
    grad, scores = model.loss_gradient(x, y)
    z = net(x)[:, 0].detach()
    assert torch.equal(scores, torch.stack([torch.zeros_like(z), z], 1))
    assert model.output_kind == "logits" and model.num_classes == 2
    assert torch.equal(scores.argmax(1), (z > 0).long())
    leaf = x.clone().requires_grad_(True)
    torch.nn.functional.binary_cross_entropy_with_logits(net(leaf)[:, 0], y.float(), reduction="sum").backward()
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-5, atol=1e-6)

    probs = TorchClassifier(BinaryNet(w, 0.1, sigmoid=True).eval(), name="p", input_range=(0, 1),
                            output_kind="probabilities")
    p = torch.sigmoid(z)
    out = probs.scores(x)
    torch.testing.assert_close(out, torch.stack([1 - p, p], 1))
    assert torch.equal(out.argmax(1), (p > 0.5).long())
    grad_p, _ = probs.loss_gradient(x, y)
    torch.testing.assert_close(grad_p, leaf.grad, rtol=1e-4, atol=1e-6)  # -log p_y = BCE too


@pytest.mark.parametrize("fmt", ["torchscript", "torchscript-flat", "onnx", "onnx-flat", "pt2"])
@pytest.mark.parametrize("eps", [0.03, 0.1])
def test_binary_fgsm_matches_numpy_bce(tmp_path, binary_task, fmt, eps) -> None:
    w, b, x, y = binary_task
    net = BinaryNet(w, b, flat=fmt.endswith("flat")).eval()
    if fmt.startswith("torchscript"):
        ref = str(save_torchscript(net, tmp_path / "bin.pt").name)
    elif fmt.startswith("onnx"):
        ref = export_onnx(net, torch.zeros(1, 12), tmp_path / "bin.onnx").name
    else:
        torch.export.save(torch.export.export(net, (torch.zeros(2, 12),),
                                              dynamic_shapes=({0: torch.export.Dim("n")},)),
                          str(tmp_path / "bin.pt2"))
        ref = "bin.pt2"
    result = gate_session(tmp_path, ref, x, y).probe().fgsm(eps=eps)
    expected = binary_accuracy(w, b, fgsm_binary_numpy(w, b, x, y, eps), y)
    assert result.n == 300
    assert result.clean_accuracy == pytest.approx(binary_accuracy(w, b, x, y))
    assert result.clean_accuracy > 0.98
    assert abs(result.accuracy - expected) <= 2.5 / 300
    if eps >= 0.1:  # the attack bites: not a comparison of two no-ops
        assert result.accuracy < 0.7


def test_binary_probabilities_give_the_same_figures(tmp_path, binary_task) -> None:
    w, b, x, y = binary_task
    save_torchscript(BinaryNet(w, b, sigmoid=True), tmp_path / "sig.pt")
    session = gate_session(tmp_path, "sig.pt", x, y, extra='output-kind = "probabilities"\n')
    result = session.probe().fgsm(eps=0.1)
    expected = binary_accuracy(w, b, fgsm_binary_numpy(w, b, x, y, 0.1), y)
    assert abs(result.accuracy - expected) <= 2.5 / 300
    assert session.engine.classifier(session.spec()).binary


def test_single_score_in_unit_interval_is_ambiguous_under_auto(tmp_path, binary_task) -> None:
    """A sigmoid output and a logit that happens to lie in [0, 1] look alike; guessing
    moves the decision threshold, so auto refuses and names the key."""
    w, b, x, y = binary_task
    save_torchscript(BinaryNet(w, b, sigmoid=True), tmp_path / "sig.pt")
    with pytest.raises(ModelLoadError, match="output-kind") as info:
        gate_session(tmp_path, "sig.pt", x, y).probe().clean()
    assert "sig.pt" in str(info.value.where)
    save_torchscript(BinaryNet(w, b), tmp_path / "logit.pt")
    with pytest.raises(ModelLoadError, match="outside \\[0, 1\\].*logits"):
        gate_session(tmp_path, "logit.pt", x, y, extra='output-kind = "probabilities"\n').probe().clean()


def test_binary_labels_must_be_zero_or_one(tmp_path, binary_task) -> None:
    from pytest_advrobust.errors import DataError

    w, b, x, y = binary_task
    save_torchscript(BinaryNet(w, b), tmp_path / "bin.pt")
    with pytest.raises(DataError, match="labels must be 0 or 1"):
        gate_session(tmp_path, "bin.pt", x, y * 2).probe().fgsm(eps=0.1)


BINARY_CHECKS = '''
[[tool.advrobust.checks]]
attack = "clean"
min-accuracy = 0.9

[[tool.advrobust.checks]]
attack = "fgsm"
eps = 0.1
min-accuracy = 0.001

[[tool.advrobust.checks]]
attack = "pgd"
eps = 0.1
steps = 5
min-accuracy = 0.001

[[tool.advrobust.checks]]
attack = "spsa"
eps = 0.1
queries = 99
samples = 8
min-accuracy = 0.001
max-samples = 40
'''


def test_binary_model_through_pytest_with_every_report(pytester: pytest.Pytester, binary_task) -> None:
    w, b, x, y = binary_task
    x, y = x[:120], y[:120]
    # exported without a dynamic batch axis, as many are shipped: the user sets nothing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(BinaryNet(w, b).eval(), (torch.zeros(16, 12),), str(pytester.path / "bin.onnx"),
                          dynamo=False, input_names=["x"], output_names=["y"])
    np.savez(pytester.path / "data.npz", x=x, y=y)
    (pytester.path / "pyproject.toml").write_text(textwrap.dedent('''
        [tool.advrobust]
        model = "bin.onnx"
        data = "data.npz"
        name = "fraud"
        batch-size = 50
        ''') + BINARY_CHECKS.replace("max-samples = 40\n", ""))
    result = pytester.runpytest("-p", "no:cacheprovider", "-v", "--advrobust-json", "out/r.json",
                                "--advrobust-markdown", "out/r.md", "--advrobust-plots", "out/plots")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*fgsm eps=0.1 on fraud: *binary head (one logit*fixed batch 16*"])
    result.stdout.fnmatch_lines(["*spsa eps=0.1 on fraud: *fixed batch 16*"])
    report = json.loads((pytester.path / "out" / "r.json").read_text())["results"]
    by_attack = {r["attack"]: r for r in report}
    expected = binary_accuracy(w, b, fgsm_binary_numpy(w, b, x, y, 0.1), y)
    assert abs(by_attack["fgsm"]["accuracy"] - expected) <= 2.5 / 120
    assert by_attack["pgd"]["accuracy"] <= by_attack["fgsm"]["accuracy"] + 1e-9
    assert by_attack["spsa"]["accuracy"] < by_attack["clean"]["accuracy"]
    assert "binary head" in by_attack["fgsm"]["details"]
    assert "| fraud | fgsm |" in (pytester.path / "out" / "r.md").read_text()
    plots = sorted(p.name for p in (pytester.path / "out" / "plots").glob("*.png"))
    assert any("linearity" in name for name in plots), plots


# --------------------------------------------------------------------------
# fixed batch dimension
# --------------------------------------------------------------------------


class SmallCnn(torch.nn.Module):
    """A conv net whose flatten bakes the batch size into a Reshape when exported statically."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.reshape(x.shape[0], -1))


FIXED_CHECKS = '''
[[tool.advrobust.checks]]
attack = "clean"
report-only = true
[[tool.advrobust.checks]]
attack = "fgsm"
report-only = true
eps = [0.05, 0.15]
[[tool.advrobust.checks]]
attack = "pgd"
report-only = true
eps = 0.1
steps = 4
[[tool.advrobust.checks]]
attack = "spsa"
report-only = true
eps = 0.1
queries = 90
samples = 4
'''


@pytest.fixture(scope="module")
def cnn_task():
    net = SmallCnn().eval()
    x = torch.rand(70, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    flip = torch.arange(70) % 7 == 0  # some wrong labels, so clean accuracy is not 1
    y = torch.where(flip, (y + 1) % 3, y)
    return net, x.numpy(), y.numpy()


def _figures(session) -> list[tuple[str, float | None, int, int]]:
    return [(r.attack, r.eps, r.correct, r.clean_correct) for r in session.run_all()]


def default_batch_session(root, model_ref: str, x, y, checks: str):
    """A session with the default batch-size (256), as a user who sets nothing has it."""
    from pytest_advrobust.session import RobustnessSession, plugin_manager

    np.savez(root / "data.npz", x=x, y=y)
    (root / "pyproject.toml").write_text(f'[tool.advrobust]\nmodel = "{model_ref}"\n'
                                         f'data = "data.npz"\nname = "m"\n' + checks)
    return RobustnessSession(plugin_manager().hook, root / "pyproject.toml")


def test_fixed_batch_onnx_gives_the_dynamic_exports_figures(tmp_path, cnn_task) -> None:
    net, x, y = cnn_task
    export_onnx(net, torch.zeros(1, 1, 6, 6), tmp_path / "dynamic.onnx")
    reference = _figures(default_batch_session(tmp_path, "dynamic.onnx", x, y, FIXED_CHECKS))
    assert reference[1][2] < reference[0][2]  # fgsm bites
    for size in (1, 8):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(size, 1, 6, 6),), str(tmp_path / f"fixed{size}.onnx"),
                              dynamo=False, input_names=["x"], output_names=["y"])
        session = default_batch_session(tmp_path, f"fixed{size}.onnx", x, y, FIXED_CHECKS)
        model = session.engine.classifier(session.spec())
        assert model.fixed_batch == size
        with pytest.raises(ModelLoadError, match="shape"):  # the graph itself refuses other sizes
            model._forward(torch.zeros(size + 1, 1, 6, 6))
        results = session.run_all()
        assert [(r.attack, r.eps, r.correct, r.clean_correct) for r in results] == reference, size
        assert all(f"fixed batch {size}" in r.details for r in results)


def test_fixed_batch_gradient_is_exact_with_padding(cnn_task) -> None:
    """Pad rows repeat a real row but never reach the loss: gradients equal the unpadded ones."""
    from pytest_advrobust.models.torch_models import TorchClassifier

    net, x, y = cnn_task
    free = TorchClassifier(net, name="free", input_range=(0, 1))
    fixed = TorchClassifier(net, name="fixed", input_range=(0, 1))
    fixed.fixed_batch = 8
    xt, yt = torch.from_numpy(x[:21]), torch.from_numpy(y[:21])
    calls = []
    real_forward = fixed._differentiable_forward
    fixed._differentiable_forward = lambda t: (calls.append(len(t)), real_forward(t))[1]
    grad, scores = fixed.loss_gradient(xt, yt)
    assert calls == [8, 8, 8]
    expected_grad, expected_scores = free.loss_gradient(xt, yt)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scores, expected_scores)
    assert fixed.scores(xt[:3]).shape == (3, 3)


def test_static_batch_pt2_is_fed_its_batch_size(tmp_path, cnn_task) -> None:
    net, x, y = cnn_task
    torch.export.save(torch.export.export(net, (torch.zeros(4, 1, 6, 6),)), str(tmp_path / "static.pt2"))
    torch.export.save(torch.export.export(net, (torch.zeros(4, 1, 6, 6),),
                                          dynamic_shapes=({0: torch.export.Dim("n")},)),
                      str(tmp_path / "dynamic.pt2"))
    checks = FIXED_CHECKS.split("[[tool.advrobust.checks]]\nattack = \"spsa\"")[0]
    static = gate_session(tmp_path, "static.pt2", x, y, checks=checks, extra='name = "m"\n')
    dynamic = gate_session(tmp_path, "dynamic.pt2", x, y, checks=checks, extra='name = "m"\n')
    assert static.engine.classifier(static.spec()).fixed_batch == 4
    assert dynamic.engine.classifier(dynamic.spec()).fixed_batch is None
    assert _figures(static) == _figures(dynamic)


# --------------------------------------------------------------------------
# picking the score tensor among several outputs
# --------------------------------------------------------------------------


class TwoHeads(torch.nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Linear(12, 5)
        self.head = torch.nn.Linear(5, 3)
        self.kind = kind

    def forward(self, x: torch.Tensor):
        features = torch.tanh(self.body(x))
        logits = self.head(features)
        if self.kind == "dict":
            return {"features": features, "logits": logits}
        return features, logits


@pytest.mark.parametrize("kind, output", [("dict", "logits"), ("dict", 1), ("tuple", 1)])
def test_output_picks_the_score_tensor_of_a_torch_model(tmp_path, kind, output) -> None:
    from pytest_advrobust.models.torch_models import TorchClassifier

    net = TwoHeads(kind).eval()
    x = torch.rand(30, 12, generator=torch.Generator().manual_seed(0))
    model = TorchClassifier(net, name="two", input_range=(0, 1), output=output)
    grad, scores = model.loss_gradient(x, torch.zeros(30, dtype=torch.long))
    expected = net.head(torch.tanh(net.body(x)))
    torch.testing.assert_close(scores, expected.detach())
    assert model.num_classes == 3
    unpicked = TorchClassifier(net, name="two", input_range=(0, 1))
    with pytest.raises(ModelLoadError, match="several outputs.*Set output"):
        unpicked.scores(x)


def test_output_key_reaches_a_factory_model(tmp_path) -> None:
    (tmp_path / "heads.py").write_text(textwrap.dedent('''
        import torch

        class TwoHeads(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.body, self.head = torch.nn.Linear(12, 5), torch.nn.Linear(5, 3)

            def forward(self, x):
                features = torch.tanh(self.body(x))
                return {"features": features, "logits": self.head(features)}

        def build():
            return TwoHeads()
        '''))
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        x = np.random.default_rng(0).uniform(0, 1, (40, 12)).astype(np.float32)
        y = np.zeros(40, np.int64)
        session = gate_session(tmp_path, "heads:build", x, y, extra='output = "logits"\n')
        assert session.probe().clean().n == 40
        session = gate_session(tmp_path, "heads:build", x, y, extra='output = "scores"\n')
        with pytest.raises(ModelLoadError, match="'features'.*'logits'"):
            session.probe().clean()
    finally:
        sys.path.remove(str(tmp_path))


def test_output_through_the_python_api() -> None:
    from pytest_advrobust.api import attack

    net = TwoHeads("tuple").eval()
    x = torch.rand(40, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x)[1].argmax(1)
    result = attack(net, x, y, "fgsm", eps=0.2, output=1)
    assert result.clean_accuracy == 1.0 and result.n == 40
    assert result.accuracy < 1.0
    with pytest.raises(ModelLoadError, match="several outputs"):
        attack(net, x, y, "clean")
