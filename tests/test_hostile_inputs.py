"""Hostile and broken inputs (round 2): misbehaving models, damaged files, odd names and
values. Each ends in one short paragraph naming the culprit, never a traceback."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

import pytest_advrobust
from conftest import LinearNet
from project import write_project
from pytest_advrobust.errors import AttackError, ModelLoadError


@pytest.fixture
def task():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 6)).astype(np.float32)
    x = rng.uniform(0, 1, size=(40, 6)).astype(np.float32)
    return w, x, (x @ w.T).argmax(1).astype(np.int64)


# -- a user's model raising anything, or giving no gradient ---------------------------------
class KeyErrorNet(LinearNet):
    def forward(self, x):
        return {"logits": self.linear(x)}["scores"]  # the user's bug, on this line


class Int64Net(LinearNet):
    def forward(self, x):
        return (self.linear(x) * 100).long()


class NoGradNet(LinearNet):
    def forward(self, x):
        with torch.no_grad():
            return self.linear(x)


class DetachingNet(LinearNet):
    def forward(self, x):
        return self.linear(torch.from_numpy(x.detach().numpy()))


def test_model_raising_anything_is_a_model_error_naming_the_users_line(task) -> None:
    w, x, y = task
    net = KeyErrorNet(w, np.zeros(3, np.float32))
    for attack, eps in (("clean", None), ("fgsm", 0.1)):
        with pytest.raises(ModelLoadError) as info:
            pytest_advrobust.attack(net, x, y, attack, eps=eps)
        message = str(info.value)
        line = KeyErrorNet.forward.__code__.co_firstlineno + 1
        assert "the model raised KeyError" in message and "key 'scores'" in message
        assert f"test_hostile_inputs.py:{line}" in message
        assert "site-packages" not in message and len(message) < 600


def test_integer_scores_are_refused_for_every_gate(task) -> None:
    w, x, y = task
    net = Int64Net(w, np.zeros(3, np.float32))
    for attack, eps in (("clean", None), ("fgsm", 0.1)):
        with pytest.raises(ModelLoadError, match=r"scores of dtype int64; class scores must be "
                                                 r"floating-point"):
            pytest_advrobust.attack(net, x, y, attack, eps=eps)


@pytest.mark.parametrize("net_class, says", [
    (NoGradNet, r"scores carry no gradient: its forward runs under torch.no_grad\(\)"),
    (DetachingNet, r"scores carry no gradient: .* detaches the input or output"),
])
def test_model_without_a_gradient_path_fails_gradient_gates_only(task, net_class, says) -> None:
    w, x, y = task
    net = net_class(w, np.zeros(3, np.float32))
    clean = pytest_advrobust.attack(net, x, y, "clean")
    assert clean.accuracy == 1.0 and clean.n == 40  # scoring still works
    with pytest.raises(AttackError, match=says) as info:
        pytest_advrobust.attack(net, x, y, "fgsm", eps=0.1)
    assert "Attacks that need no gradient of this model: noise" in str(info.value)
    assert pytest_advrobust.attack(net, x, y, "noise", eps=0.1).n == 40


def test_callable_whose_scores_bypass_the_input_says_so(task) -> None:
    w, x, y = task
    weight = torch.tensor(w, requires_grad=True)  # scores need a gradient, but not through x
    with pytest.raises(AttackError, match=r"do not depend on its input through autograd"):
        pytest_advrobust.attack(lambda batch: batch.detach() @ weight.T, x, y, "fgsm", eps=0.1)


def test_api_called_inside_inference_mode_or_no_grad_gives_the_same_numbers(task) -> None:
    w, x, y = task
    net = LinearNet(w, np.zeros(3, np.float32))
    plain = pytest_advrobust.attack(net, x, y, "fgsm", eps=0.2).accuracy
    assert plain < 1.0  # the attack bites, so equality below is not trivial
    with torch.inference_mode():
        assert pytest_advrobust.attack(net, x, y, "fgsm", eps=0.2).accuracy == plain
        assert pytest_advrobust.attack(net, x, y, "pgd", eps=0.2, steps=3).accuracy <= plain
    with torch.no_grad():
        assert pytest_advrobust.attack(net, x, y, "fgsm", eps=0.2).accuracy == plain


def test_weights_made_in_inference_mode_say_so(task) -> None:
    w, x, y = task
    with torch.inference_mode():
        net = LinearNet(w, np.zeros(3, np.float32))
    assert pytest_advrobust.attack(net, x, y, "clean").accuracy == 1.0
    with pytest.raises(AttackError, match=r"weights were created under torch.inference_mode\(\)"):
        pytest_advrobust.attack(net, x, y, "fgsm", eps=0.1)


RAISING_FACTORY = '''
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x):
        table = {"a": self.linear(x)}
        return table["b"]


def build():
    return Net()
'''


def test_raising_model_in_a_pytest_run_is_one_paragraph(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, textwrap.dedent('''
        [[tool.advrobust.checks]]
        attack = "clean"
        min-accuracy = 0.5
        [[tool.advrobust.checks]]
        attack = "fgsm"
        eps = 0.1
        min-accuracy = 0.5
        '''))
    (pytester.path / "blobmodel.py").write_text(RAISING_FACTORY)
    (pytester.path / "pyproject.toml").write_text(
        (pytester.path / "pyproject.toml").read_text().replace('weights = "weights.pt"\n', ""))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["model error: blobmodel:build: the model raised KeyError on a batch "
                                 "of shape (64, 8) in */blobmodel.py:12: key 'b' Fix the model code*"])
    out = result.stdout.str()
    assert "Traceback" not in out and "site-packages" not in out and len(out.splitlines()) < 40
