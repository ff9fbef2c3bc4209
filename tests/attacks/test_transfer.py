"""Transfer: surrogates named in the config, checked before any model loads; an ensemble
attacks the sum of losses; a model's own export is fooled exactly as FGSM fools it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import LinearNet
from digits_project import write_digits_project
from pytest_advrobust.attacks.transfer import transfer
from pytest_advrobust.config import parse_config
from pytest_advrobust.errors import AttackError, ConfigError
from pytest_advrobust.models.torch_models import TorchClassifier
from pytest_advrobust.session import RobustnessSession, plugin_manager

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def registry_options():
    return RobustnessSession(plugin_manager().hook, None).registry.config_options()


def parse(text: str):
    section = tomllib.loads(textwrap.dedent(text))["tool"]["advrobust"]
    return parse_config(section, path=Path("pyproject.toml"), attacks=registry_options())


TWO_MODELS = '''
[tool.advrobust]
data = "d.npz"
[tool.advrobust.models.mlp-torch]
model = "pkg.m:build"
[[tool.advrobust.models.mlp-torch.checks]]
attack = "clean"
report-only = true
[tool.advrobust.models.forest]
model = "forest.onnx"
{range}
[[tool.advrobust.models.forest.checks]]
attack = "transfer"
report-only = true
eps = 0.1
{surrogate}
'''


@pytest.mark.parametrize("surrogate, range_, message", [
    ("", "", "checks[0] surrogate: is required by attack 'transfer'"),
    ('surrogate = "mlp-torhc"', "", "no model named 'mlp-torhc'. Did you mean 'mlp-torch'?"),
    ('surrogate = ["mlp-torch", "forest"]', "", "names 'forest', the model under test itself"),
    ("surrogate = 3", "", "must be a model name or a non-empty list of names"),
    ("surrogate = []", "", "must be a model name or a non-empty list of names"),
    ('surrogate = "mlp-torch"', "input-range = [0.0, 255.0]", "'mlp-torch' takes input-range [0.0, 1.0]"),
])
def test_bad_surrogate_is_a_config_error_naming_the_key(surrogate, range_, message) -> None:
    with pytest.raises(ConfigError) as info:
        parse(TWO_MODELS.format(surrogate=surrogate, range=range_))
    assert "[tool.advrobust.models.forest] checks[0] surrogate" in str(info.value)
    assert message in str(info.value)


def test_good_surrogates_parse() -> None:
    config = parse(TWO_MODELS.format(surrogate='surrogate = ["mlp-torch"]\nvia = "pgd"', range=""))
    check = config.model("forest").checks[0]
    assert check.options == {"surrogate": ("mlp-torch",), "via": "pgd"}


def test_ensemble_attacks_the_sum_of_the_surrogates_losses() -> None:
    rng = np.random.default_rng(0)
    nets = [TorchClassifier(LinearNet(rng.normal(size=(3, 6)), rng.normal(size=3)).eval(),
                            name=f"s{i}", input_range=(0.0, 1.0)) for i in range(2)]
    x = torch.from_numpy(rng.uniform(0.2, 0.8, size=(50, 6)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, size=50))
    target = nets[0]
    corner, inside = transfer(target, x, y, 0.1, np.random.default_rng(0), nets)
    # independent: the summed loss's gradient, written out with autograd
    leaf = x.clone().requires_grad_(True)
    loss = sum(torch.nn.functional.cross_entropy(n.module(leaf), y, reduction="sum") for n in nets)
    (grad,) = torch.autograd.grad(loss, leaf)
    assert torch.equal(corner, (x + 0.1 * grad.sign()).clamp(0, 1))
    # and the interior point on the way there, a second candidate for the target (interior.py)
    scale = torch.from_numpy(0.99 + 0.009 * np.random.default_rng(0).random(50)).float()[:, None]
    assert torch.allclose(inside, x + scale * (corner - x), atol=1e-7)
    alone, _ = transfer(target, x, y, 0.1, np.random.default_rng(0), nets[1:])
    assert not torch.equal(corner, alone)


def test_unknown_via_is_an_attack_error() -> None:
    net = TorchClassifier(LinearNet(np.eye(2), np.zeros(2)).eval(), name="s", input_range=(0.0, 1.0))
    with pytest.raises(AttackError, match="via = 'bim' is not one of 'fgsm', 'pgd'"):
        transfer(net, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), 0.1,
                 np.random.default_rng(0), [net], via="bim")


def test_transfer_from_torch_to_its_onnx_export_equals_fgsm_on_itself(tmp_path: Path) -> None:
    path = write_digits_project(tmp_path, '''
        [[tool.advrobust.models.mlp.checks]]
        attack = "clean"
        report-only = true
        [tool.advrobust.models.mlp-onnx]
        model = "mlp.onnx"
        [[tool.advrobust.models.mlp-onnx.checks]]
        attack = "fgsm"
        report-only = true
        eps = [0.05, 0.1]
        [[tool.advrobust.models.mlp-onnx.checks]]
        attack = "transfer"
        report-only = true
        surrogate = "mlp"
        eps = [0.05, 0.1]
        ''', mlp_onnx=True)
    session = RobustnessSession(plugin_manager().hook, path)
    results = {(r.attack, r.eps): r for r in session.run_all(["mlp-onnx"])}
    for eps in (0.05, 0.1):
        fgsm, moved = results[("fgsm", eps)], results[("transfer", eps)]
        assert moved.correct == fgsm.correct and moved.n == fgsm.n == 540
        assert moved.accuracy < moved.clean_accuracy - 0.2  # the attack does bite
    probe = session.probe("mlp-onnx")  # the fixture's API, validated like the config
    assert probe.transfer(0.1, surrogate="mlp").correct == results[("fgsm", 0.1)].correct
    with pytest.raises(ConfigError, match="the model under test itself"):
        probe.transfer(0.1, surrogate="mlp-onnx")


def test_margin_loss_crafts_on_a_saturated_surrogate() -> None:
    """A surrogate whose logits are x1e4 has a zero cross-entropy gradient: transfer with
    loss = "margin" still crafts on it, and the inputs fool the plain model."""
    import numpy as np
    import torch

    from digits_project import digits_split, trained_mlp
    from pytest_advrobust.attacks.transfer import transfer
    from pytest_advrobust.models.torch_models import TorchClassifier

    class Saturated(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x) * 1e4

    _, _, x_np, y_np = digits_split()
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    target = TorchClassifier(trained_mlp(), name="target", input_range=(0, 1))
    surrogate = TorchClassifier(Saturated(trained_mlp()), name="saturated", input_range=(0, 1))

    def accuracy(adversarial):
        return float((target.scores(adversarial).argmax(1) == y).float().mean())

    rng = np.random.default_rng(0)
    clean = accuracy(x)
    # only the few samples the surrogate misclassifies have a cross-entropy gradient
    # (each is scored on the crafted point, the first candidate; the second is its interior point)
    assert accuracy(transfer(target, x, y, 0.1, rng, [surrogate])[0]) > clean - 0.05
    assert accuracy(transfer(target, x, y, 0.1, rng, [surrogate], loss="margin")[0]) < 0.5
    assert accuracy(transfer(target, x, y, 0.1, rng, [surrogate], via="pgd", loss="dlr")[0]) < 0.5


def test_pgd_transfer_from_the_input_matches_a_long_plain_ascent() -> None:
    """The default start (the input) transfers better than a random one, and its 10 steps
    come within a sample or two of a 40-step eps/8 ascent on the surrogate."""
    import numpy as np
    import torch

    from digits_project import digits_split, trained_cnn, trained_mlp
    from pytest_advrobust.attacks.transfer import transfer
    from pytest_advrobust.models.torch_models import TorchClassifier

    _, _, x, y = digits_split()
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    surrogate = TorchClassifier(trained_mlp(), name="mlp", input_range=(0.0, 1.0))
    target = TorchClassifier(torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)), trained_cnn()),
                             name="cnn", input_range=(0.0, 1.0))
    eps = 0.2

    def correct(points):
        return int((target.scores(points).argmax(1) == y).sum())

    plain = x.clone()
    for _ in range(40):
        grad, _ = surrogate.loss_gradient(plain, y)
        plain = torch.min(torch.max(plain + eps / 8 * grad.sign(), x - eps), x + eps).clamp(0, 1)
    default = transfer(target, x, y, eps, np.random.default_rng(0), [surrogate], via="pgd")[0]
    randomised = transfer(target, x, y, eps, np.random.default_rng(0), [surrogate], via="pgd",
                          random_start=True)[0]
    assert correct(default) <= correct(plain) + 3
    assert correct(default) < correct(randomised)
