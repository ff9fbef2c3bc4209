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
