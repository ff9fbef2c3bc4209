"""The Python API: the same results as a pytest run, and the user's module handed back as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pytest_advrobust
from conftest import LinearNet
from project import write_project

SHIFT_CONFTEST = """
def pytest_advrobust_add_attacks(registry):
    @registry.attack("shift")
    def shift(x, eps):
        return x + eps
"""

CHECKS = '''
[[tool.advrobust.checks]]
attack = "clean"
min-accuracy = 0.9

[[tool.advrobust.checks]]
attack = "fgsm"
eps = [0.05, 0.3]
min-accuracy = 0.5

[[tool.advrobust.checks]]
attack = "universal"
report-only = true
eps = 0.2
fit-samples = 80
steps = 5

[[tool.advrobust.checks]]
attack = "shift"
report-only = true
eps = 0.5
'''


def test_evaluate_equals_the_pytest_run(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    path = write_project(pytester.path, x, y, CHECKS)
    pytester.makeconftest(SHIFT_CONFTEST)  # the custom "shift" attack; the API loads it too
    result = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json", "out.json")
    result.assert_outcomes(passed=4, failed=1)
    from_pytest = json.loads((pytester.path / "out.json").read_text())["results"]
    results = pytest_advrobust.evaluate(path)
    assert len(results) == 5
    from_api = json.loads(json.dumps([r.to_dict() for r in results]))
    assert sorted(from_api, key=lambda r: r["key"]) == sorted(from_pytest, key=lambda r: r["key"])
    assert [r.key for r in pytest_advrobust.evaluate(path, models=["blob"], conftest=False,
                                                     plugins=[_ShiftPlugin()])][-1] == "blob::shift[eps=0.5]"


class _ShiftPlugin:
    """A plugin object (as a notebook would pass one)."""

    @staticmethod
    def pytest_advrobust_add_attacks(registry):
        registry.attack("shift")(lambda x, eps: x + eps)


def _two_class_linear() -> tuple[LinearNet, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(2, 6)).astype(np.float32)
    bias = np.zeros(2, dtype=np.float32)
    x = rng.uniform(0.2, 0.8, size=(64, 6)).astype(np.float32)
    y = (x @ weight.T + bias).argmax(1)
    return LinearNet(weight, bias), x, y


def test_attack_on_an_in_memory_module_matches_the_closed_form() -> None:
    model, x, y = _two_class_linear()
    weight = model.linear.weight.detach().numpy().astype(np.float64)
    eps = 0.05
    # FGSM on two logits: the loss gradient's sign is sign(w_other - w_true) per element
    direction = np.sign(weight[1 - y] - weight[y])
    expected = ((np.clip(x + eps * direction, 0, 1) @ weight.T).argmax(1) == y).mean()
    result = pytest_advrobust.attack(model, x, y, "fgsm", eps=eps, min_accuracy=0.99)
    assert result.n == 64 and result.clean_accuracy == 1.0
    assert result.accuracy == pytest.approx(expected) and 0 < expected < 1
    assert result.passed is False and "fgsm eps=0.05 on model: accuracy" in result.message
    # hypothesis can never beat the closed form: what it flips, FGSM (optimal here) flips too
    found = pytest_advrobust.attack(model, torch.from_numpy(x), torch.from_numpy(y), "hypothesis",
                                    eps=eps, samples=12, max_examples=60)
    optimal = ((np.clip(x[:12] + eps * direction[:12], 0, 1) @ weight.T).argmax(1) == y[:12]).mean()
    assert found.n == 12 and found.accuracy >= optimal


def test_unknown_option_is_a_config_error() -> None:
    model, x, y = _two_class_linear()
    with pytest.raises(pytest_advrobust.ConfigError, match="steps: unknown key"):
        pytest_advrobust.attack(model, x, y, "fgsm", eps=0.1, steps=3)


def test_module_state_is_restored_bit_for_bit() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5),
                                torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model.train()
    model[1].eval()  # a mix of modes
    model[0].bias.requires_grad_(False)
    model(torch.rand(16, 6)).sum().backward()  # grads present
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    before_modes = [m.training for m in model.modules()]
    before_flags = [p.requires_grad for p in model.parameters()]
    x = np.random.default_rng(1).uniform(0, 1, size=(40, 6)).astype(np.float32)
    y = np.zeros(40, dtype=np.int64)
    for name, eps, options in (("fgsm", 0.1, {}), ("universal", 0.1, {"fit_samples": 20, "steps": 3}),
                               ("hypothesis", 0.1, {"samples": 2, "max_examples": 10}),
                               ("clean", None, {})):
        pytest_advrobust.attack(model, x, y, name, eps=eps, **options)
    after = model.state_dict()
    assert before_state.keys() == after.keys()
    assert all(torch.equal(before_state[k], after[k]) for k in after)  # BatchNorm stats too
    assert all((p.grad is None and before_grads[n] is None) or torch.equal(p.grad, before_grads[n])
               for n, p in model.named_parameters())
    assert [m.training for m in model.modules()] == before_modes
    assert [p.requires_grad for p in model.parameters()] == before_flags


def test_a_classifier_without_gradients_runs_black_box_attacks_only() -> None:
    model, x, y = _two_class_linear()
    weight = model.linear.weight.detach().numpy()

    class NumpyModel(pytest_advrobust.Classifier):
        gradient_error = "the model is served by numpy"

        def _forward(self, batch):
            return torch.from_numpy(batch.numpy() @ weight.T)

    served = NumpyModel(name="served", input_range=(0.0, 1.0))
    noise = pytest_advrobust.attack(served, x, y, "noise", eps=0.05)
    assert noise.accuracy == pytest_advrobust.attack(model, x, y, "noise", eps=0.05).accuracy
    with pytest.raises(pytest_advrobust.AttackError, match="fgsm needs input gradients, which this "
                                                           "model cannot give: the model is served by numpy"):
        pytest_advrobust.attack(served, x, y, "fgsm", eps=0.05)


@pytest.mark.parametrize("options, error, match", [
    ({"samples": 0}, pytest_advrobust.ConfigError, "samples: must be > 0, not 0"),
    ({"max_examples": 0}, pytest_advrobust.ConfigError, "max-examples: must be > 0, not 0"),
])
def test_hypothesis_attack_rejects_empty_searches(options, error, match) -> None:
    model, x, y = _two_class_linear()
    with pytest.raises(error, match=match):
        pytest_advrobust.attack(model, x, y, "hypothesis", eps=0.05, **options)
