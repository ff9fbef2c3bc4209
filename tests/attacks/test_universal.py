"""Universal perturbation: one shared delta, fitted on a disjoint split, saved, and strong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from project import gate_session, save_torchscript


@pytest.fixture(scope="module")
def digits_mlp():
    """A small MLP on scikit-learn's bundled digits (trained in about a second)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1200], order[1200:]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    for _ in range(40):
        for start in range(0, 1200, 100):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[start:start + 100]), yt[start:start + 100]).backward()
            optimiser.step()
    return net.eval(), x[test], y[test]


UNIVERSAL_AND_NOISE = '''
[[tool.advrobust.checks]]
attack = "universal"
report-only = true
eps = 0.2
fit-samples = 200

[[tool.advrobust.checks]]
attack = "noise"
report-only = true
eps = 0.2
'''


def test_universal_fools_where_noise_does_not(tmp_path, digits_mlp) -> None:
    net, x, y = digits_mlp
    save_torchscript(net, tmp_path / "mlp.pt")
    session = gate_session(tmp_path, "mlp.pt", x, y, checks=UNIVERSAL_AND_NOISE)
    universal, noise = session.run_all()
    assert universal.n == len(y) - 200  # evaluated only on samples the fit never saw
    assert noise.n == len(y)
    assert universal.clean_accuracy > 0.9
    assert universal.accuracy < 0.5
    assert noise.accuracy > 0.85
    # the saved delta is the one evaluated: recompute the accuracy from it independently
    npy = [p for p in universal.artifacts if p.endswith(".npy")]
    assert len(npy) == 1 and any(p.endswith(".png") for p in universal.artifacts)
    delta = np.load(npy[0])
    assert delta.shape == (64,) and np.abs(delta).max() <= 0.2 + 1e-7
    held_out = torch.from_numpy(np.clip(x[200:] + delta, 0, 1))
    expected = int((net(held_out).argmax(1).numpy() == y[200:]).sum())
    assert universal.correct == expected


def test_universal_beats_the_sign_of_the_mean_gradient(tmp_path, digits_mlp) -> None:
    """The optimised delta is at least as strong as the naive one-step universal direction."""
    net, x, y = digits_mlp
    save_torchscript(net, tmp_path / "mlp.pt")
    session = gate_session(tmp_path, "mlp.pt", x, y, checks=UNIVERSAL_AND_NOISE)
    universal = session.run_all()[0]
    leaf = torch.from_numpy(x[:200]).requires_grad_(True)
    torch.nn.functional.cross_entropy(net(leaf), torch.from_numpy(y[:200])).backward()
    naive = 0.2 * leaf.grad.mean(0).sign()
    naive_correct = int((net((torch.from_numpy(x[200:]) + naive).clamp(0, 1)).argmax(1).numpy() == y[200:]).sum())
    assert universal.correct <= naive_correct


def test_too_few_samples_for_the_fit_split_is_a_clear_error(tmp_path, digits_mlp) -> None:
    from pytest_advrobust.errors import DataError

    net, x, y = digits_mlp
    save_torchscript(net, tmp_path / "mlp.pt")
    session = gate_session(tmp_path, "mlp.pt", x[:100], y[:100], checks=UNIVERSAL_AND_NOISE)
    with pytest.raises(DataError, match="fit-samples = 200 samples and evaluates on the rest, but the data has only 100"):
        session.run_all()



def test_universal_fit_ascends_the_configured_loss() -> None:
    """loss = "margin" reaches the fit: every gradient it takes is the margin's, whose
    gradient on a linear model is W_runner-up - W_y for each sample (closed form)."""
    from pytest_advrobust.attacks.universal import fit_universal
    from pytest_advrobust.models.torch_models import TorchClassifier

    from conftest import LinearNet

    w = np.array([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.0]], dtype=np.float32)
    model = TorchClassifier(LinearNet(w, np.zeros(2, np.float32)).eval(), name="lin", input_range=(-10, 10))
    asked = []
    real = model.loss_gradient
    model.loss_gradient = lambda x, y, loss="ce": (asked.append(loss), real(x, y, loss))[1]
    x = torch.tensor([[2.0, 0.0, 0.0], [3.0, 0.0, 1.0]])
    y = torch.tensor([0, 0])
    delta = fit_universal(model, x, y, 3.0, steps=1, step_size=3.0, loss="margin")  # flips both
    assert set(asked) == {"margin"}
    assert torch.equal(delta, 3.0 * torch.sign(torch.from_numpy(w[1] - w[0])))


def plain_reference(model, x, y, eps):
    """The issue's reference: 40 steps of sign ascent with step eps / 8, the last delta."""
    delta = torch.zeros_like(x[0])
    for _ in range(40):
        moved = x + delta
        grad, _ = model.loss_gradient(moved.clamp(0, 1), y)
        delta = (delta + eps / 8 * (grad * ((moved >= 0) & (moved <= 1))).sum(0).sign()).clamp(-eps, eps)
    return delta


@pytest.mark.parametrize("which, eps", [("mlp", 0.1), ("mlp", 0.2), ("cnn", 0.3)])
def test_default_fit_is_at_least_as_strong_as_the_plain_reference(which, eps) -> None:
    from digits_project import digits_split, trained_cnn, trained_mlp
    from pytest_advrobust.attacks.universal import fit_universal
    from pytest_advrobust.models.torch_models import TorchClassifier

    net, shape = (trained_mlp(), (64,)) if which == "mlp" else (trained_cnn(), (1, 8, 8))
    model = TorchClassifier(net, name=which, input_range=(0.0, 1.0))
    _, _, x, y = digits_split()
    x, y = torch.from_numpy(x).view((-1,) + shape), torch.from_numpy(y)
    held_x, held_y = x[256:], y[256:]

    def correct(delta):
        return int((model.scores((held_x + delta).clamp(0, 1)).argmax(1) == held_y).sum())

    steps_seen = []
    delta = fit_universal(model, x[:256], y[:256], eps, progress=steps_seen.append)
    assert float(delta.abs().max()) <= eps + 1e-7
    assert correct(delta) <= correct(plain_reference(model, x[:256], y[:256], eps))
    assert correct(delta) < 0.9 * int((model.scores(held_x).argmax(1) == held_y).sum())
    assert steps_seen[0].startswith("step 0/40, fit accuracy 0.9")
    assert 1 < len(steps_seen) <= 41


class Counted(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x):
        self.rows += len(x)
        return self.inner(x)


def test_fit_stops_once_fit_accuracy_stops_falling() -> None:
    from pytest_advrobust.attacks.universal import fit_universal
    from pytest_advrobust.models.torch_models import TorchClassifier

    torch.manual_seed(0)
    # a linear model whose decisions eps = 0.01 cannot move: accuracy never falls
    net = Counted(torch.nn.Linear(8, 2))
    with torch.no_grad():
        net.inner.weight.copy_(torch.tensor([[5.0] * 8, [-5.0] * 8]))
        net.inner.bias.zero_()
    model = TorchClassifier(net, name="m", input_range=(0.0, 1.0))
    x = torch.full((32, 8), 0.5)
    y = torch.zeros(32, dtype=torch.long)
    seen = []
    fit_universal(model, x, y, 0.01, progress=seen.append)
    assert len(seen) == 11  # step 0 set the low; 10 more steps without a new low
    assert net.rows == 11 * 32
    assert seen[-1] == "step 10/40, fit accuracy 1.000"


def test_fit_work_is_bounded_on_large_inputs() -> None:
    from pytest_advrobust.attacks.universal import FIT_ELEMENTS, fit_universal
    from pytest_advrobust.models.torch_models import TorchClassifier

    shape = (3, 48, 192)
    net = Counted(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 48 * 192, 4)))
    model = TorchClassifier(net, name="m", input_range=(0.0, 1.0))
    x = torch.rand((256,) + shape)
    y = torch.zeros(256, dtype=torch.long)
    delta = fit_universal(model, x, y, 0.05, patience=0)
    per_step = FIT_ELEMENTS // (40 * x[0].numel())
    assert per_step == 30
    assert net.rows <= 41 * per_step  # instead of 41 x 256
    assert float(delta.abs().max()) <= 0.05 + 1e-7
