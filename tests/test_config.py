"""[tool.advrobust] validation: every mistake named by key and file, before any model loads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_advrobust.config import AttackOptions, parse_config
from pytest_advrobust.errors import ConfigError

ATTACKS = {
    "clean": AttackOptions(uses_eps=False),
    "fgsm": AttackOptions(),
    "noise": AttackOptions(),
    "universal": AttackOptions(options={"fit-samples": 256, "steps": 40, "step-size": float}),
}
PATH = Path("/project/pyproject.toml")


def parse(table: dict):
    return parse_config(table, path=PATH, attacks=ATTACKS)


def single(**overrides) -> dict:
    table = {"model": "models/digits.onnx", "data": "pkg.data:load",
             "checks": [{"attack": "fgsm", "eps": [0.05, 0.1], "min-accuracy": 0.6}]}
    table.update(overrides)
    return table


def test_single_model_defaults_and_name_from_file_stem() -> None:
    config = parse(single())
    (spec,) = config.models
    assert spec.name == "digits" and spec.model_format == "onnx"
    assert spec.input_range == (0.0, 1.0) and spec.batch_size == 256 and spec.seed == 0
    assert spec.checks[0].eps == (0.05, 0.1) and spec.checks[0].min_accuracy == 0.6
    assert spec.resolve(spec.model) == Path("/project/models/digits.onnx")


def test_factory_name_and_named_models_inherit_top_level_settings() -> None:
    config = parse({
        "data": "pkg.data:load", "input-range": [-1, 1], "seed": 3,
        "checks": [{"attack": "clean", "min-accuracy": 0.9}],
        "models": {
            "torch": {"model": "pkg.model:build", "weights": "w.pt"},
            "onnx": {"model": "m.onnx", "checks": [{"attack": "noise", "eps": 0.1, "report-only": True}]},
        },
    })
    torch_spec, onnx_spec = config.models
    assert torch_spec.name == "torch" and torch_spec.model_format == "factory"
    assert torch_spec.input_range == (-1.0, 1.0) and onnx_spec.seed == 3
    assert [c.attack for c in torch_spec.checks] == ["clean"]
    assert [c.attack for c in onnx_spec.checks] == ["noise"]
    assert parse(single(model="pkg.mlp:build")).models[0].name == "mlp"  # the module, not "build"
    assert parse(single(model="mlp:build", name="digits")).models[0].name == "digits"


def test_options_reach_the_check_with_types_enforced() -> None:
    table = single(checks=[{"attack": "universal", "eps": 0.1, "fit-samples": 100, "step-size": 1,
                                  "report-only": True}])
    check = parse(table).models[0].checks[0]
    assert check.options == {"fit-samples": 100, "step-size": 1.0}
    with pytest.raises(ConfigError, match=r"checks\[0\] steps: must be a whole number"):
        parse(single(checks=[{"attack": "universal", "eps": 0.1, "steps": 2.5}]))


@pytest.mark.parametrize("table, message", [
    (single(modle="x.onnx"), r"\[tool.advrobust\] modle: unknown key. Did you mean 'model'\?"),
    (single(checks=[{"attack": "fgsn", "eps": 0.1}]), r"unknown attack 'fgsn'. Did you mean 'fgsm'\?.*Known attacks: clean, fgsm, noise, universal"),
    (single(checks=[{"attack": "fgsm", "eps": -0.1}]), r"checks\[0\] eps: -0.1 is negative"),
    (single(checks=[{"attack": "fgsm", "eps": "0.1"}]), r"eps: must be a finite number, not '0.1'"),
    (single(checks=[{"attack": "fgsm", "eps": 2.0}]), r"larger than the whole input-range"),
    (single(checks=[{"attack": "fgsm"}]), r"checks\[0\] eps: is required"),
    (single(checks=[{"attack": "clean", "eps": 0.1}]), r"attack 'clean' takes no eps"),
    (single(checks=[{"attack": "fgsm", "eps": 0.1, "min-accuracy": 60}]), r"min-accuracy: 60 is outside \[0, 1\]"),
    (single(checks=[{"attack": "fgsm", "eps": 0.1, "max-drop": -0.1}]), r"max-drop: -0.1 is outside \[0, 1\]"),
    (single(checks=[{"attack": "fgsm", "eps": 0.1, "min_accuracy": 0.5}]), r"min_accuracy: unknown key. Did you mean 'min-accuracy'\?"),
    (single(checks=[]), r"checks: is empty"),
    (single(checks=None), r"has no checks"),
    (single(model="model.h5"), r"neither a model file"),
    (single(data="data.csv"), r"neither a .npz file"),
    (single(**{"input-range": [1, 0]}), r"low 1 must be below high 0"),
    (single(**{"batch-size": 0}), r"batch-size: must be a whole number >= 1"),
    (single(normalize={"mean": [0.5, 0.5], "std": [0.2]}), r"mean has 2 values and std 1"),
    (single(normalize={"mean": [0.5], "std": [0]}), r"std: values must be > 0"),
    (single(weights="w.pt"), r"weights: only applies to a factory model"),
    (single(device="tpu"), r"device: 'tpu' is not one of"),
    ({"data": "a.npz"}, r"names no model"),
    (single(models={"digits": {"model": "b.onnx"}}), r"the model name 'digits' is used twice"),
    (single(checks=[{"attack": "fgsm", "eps": [0.1, 0.1]}]), r"lists a value twice"),
])
def test_mistakes_name_the_key_and_file(table, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse(table)
    assert str(PATH) in str(info.value)


def test_no_section_means_no_gates(tmp_path) -> None:
    from pytest_advrobust.config import load_config

    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert load_config(tmp_path / "pyproject.toml", ATTACKS) is None
    (tmp_path / "pyproject.toml").write_text("[tool.advrobust\nmodel = 1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(tmp_path / "pyproject.toml", ATTACKS)


@pytest.mark.e2e
def test_config_reading_imports_no_torch() -> None:
    import subprocess

    code = ("import sys; from pytest_advrobust.config import parse_config, AttackOptions; "
            "from pathlib import Path; parse_config({'model': 'a.onnx', 'data': 'a.npz', "
            "'checks': [{'attack': 'clean', 'report-only': True}]}, path=Path('p'), attacks={'clean': AttackOptions(uses_eps=False)}); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def builtin_attacks() -> dict:
    from pytest_advrobust.attacks import AttackRegistry
    from pytest_advrobust.attacks.builtin import pytest_advrobust_add_attacks

    registry = AttackRegistry()
    pytest_advrobust_add_attacks(registry)
    return registry.config_options()


@pytest.mark.parametrize("check, message", [
    ({"attack": "pgd", "eps": 0.1, "loss": "hinge", "min-accuracy": 0.5},
     r"checks\[0\] loss: 'hinge' is not one of 'ce\+margin', 'ce', 'margin', 'dlr', 'ce\+dlr'"),
    ({"attack": "fgsm", "eps": 0.1, "loss": "ce+margin", "min-accuracy": 0.5},
     r"checks\[0\] loss: 'ce\+margin' is not one of 'ce', 'margin', 'dlr'"),
    ({"attack": "transfer", "eps": 0.1, "surrogate": "other", "loss": "hinge", "min-accuracy": 0.5},
     r"checks\[0\] loss: 'hinge' is not one of 'ce', 'margin', 'dlr'"),
    ({"attack": "pgd", "eps": 0.1, "allow-masking": "yes", "min-accuracy": 0.5},
     r"checks\[0\] allow-masking: must be true or false"),
])
def test_attack_choices_are_checked_when_the_config_is_read(check, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(single(checks=[check]), path=PATH, attacks=builtin_attacks())


def test_a_choice_is_its_default_string() -> None:
    from pytest_advrobust.config import Choice

    choice = Choice("ce", ("ce", "margin"))
    assert choice == "ce" and choice.default == "ce" and choice.values == ("ce", "margin")
    with pytest.raises(ValueError, match="'dlr' is not one of"):
        Choice("dlr", ("ce", "margin"))


def test_loss_and_allow_masking_are_read() -> None:
    config = parse_config(single(checks=[{"attack": "pgd", "eps": 0.1, "loss": "dlr",
                                          "allow-masking": True, "min-accuracy": 0.5}]), path=PATH, attacks=builtin_attacks())
    (check,) = config.models[0].checks
    assert check.options == {"loss": "dlr"} and check.allow_masking is True


def test_every_mistake_of_a_check_is_listed_together_even_with_an_unknown_attack() -> None:
    table = single(checks=[{"attack": "fgsn", "eps": -0.1, "min-acuracy": 0.5, "max-drop": 3},
                           {"attack": "fgsm", "eps": 0.1}])
    with pytest.raises(ConfigError) as info:
        parse(table)
    message = str(info.value)
    assert message.startswith(f"{PATH}: 5 configuration errors:\n")
    for part in ("1. [tool.advrobust] checks[0] attack: unknown attack 'fgsn'. Did you mean 'fgsm'?",
                 "2. [tool.advrobust] checks[0] min-acuracy: unknown key. Did you mean 'min-accuracy'?",
                 "3. [tool.advrobust] checks[0] eps: -0.1 is negative",
                 "4. [tool.advrobust] checks[0] max-drop: 3 is outside [0, 1]",
                 "5. [tool.advrobust] checks[1]: fgsm has no threshold"):  # the next check's too
        assert part in message


def test_a_known_attacks_mistakes_are_listed_together() -> None:
    table = single(checks=[{"attack": "universal", "eps": 0.1, "steps": 2.5, "stepz": 3,
                            "min-accuracy": 0.5, "report-only": "yes"}])
    with pytest.raises(ConfigError) as info:
        parse(table)
    message = str(info.value)
    assert "3 configuration errors" in message
    assert "checks[0] stepz: unknown key. Did you mean 'steps'? (attack 'universal' accepts:" in message
    assert "checks[0] steps: must be a whole number" in message
    assert "checks[0] report-only: must be true or false, not 'yes'" in message
