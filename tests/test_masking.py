"""Gradient-masking diagnostics: the rules on hand-made results, then a saturated model
(logits x 1e4: the same decisions, a zero cross-entropy gradient) through the engine and
through pytest, the way users meet it."""

from __future__ import annotations

import json

import pytest
import torch

from digits_project import digits_split, trained_mlp
from project import gate_session, save_torchscript, train_blob_model, write_project
from pytest_advrobust.diagnostics import diagnose, significantly_above
from pytest_advrobust.gate import judge
from pytest_advrobust.results import AttackResult


def result(attack="fgsm", eps=0.1, correct=50, clean=90, n=100, check=1, **kwargs) -> AttackResult:
    return AttackResult(model="m", attack=attack, eps=eps, correct=correct, clean_correct=clean,
                        n=n, check=check, min_accuracy=0.1, **kwargs)


def run(r, siblings=(), *, zero=None, loss="ce", allow=False, gradient=True) -> dict:
    return diagnose(r, [r, *siblings], needs_gradient=gradient, zero_gradient=zero, loss=loss,
                    allow_masking=allow)


def test_zero_gradients_above_the_limit_fail_a_cross_entropy_gate() -> None:
    r = result(clean=90)
    assert run(r, zero=4) == {"zero_gradient": round(4 / 90, 6)}  # 4.4%: under the limit
    d = run(r, zero=60)
    assert d["zero_gradient"] == pytest.approx(60 / 90, abs=1e-6) and d["fails_gate"] is True
    assert d["suspected"] == ["the cross-entropy gradient is exactly zero for 66.7% of correctly "
                              "classified samples (60 of 90), so accuracy 0.500 is no evidence of robustness"]
    r.diagnostics = d
    verdict = judge(r)  # accuracy 0.5 >= min-accuracy 0.1, and still red
    assert not verdict.passed and "gradient masking suspected: the cross-entropy" in verdict.message
    assert "allow-masking = true" in verdict.message
    r.min_accuracy = 0.0  # whatever the thresholds say: the figure is not a measurement
    assert not judge(r).passed
    r.min_accuracy = 0.1
    assert run(r, zero=60, allow=True)["fails_gate"] is False
    r.diagnostics = run(r, zero=60, allow=True)
    assert judge(r).passed and "gradient masking suspected" in judge(r).message
    # an attack ascending another loss is not failed by the cross-entropy's zeros
    d = run(r, zero=60, loss="margin")
    assert d["fails_gate"] is False and d["suspected"][0].endswith("; this gate ascends loss = margin instead")


def test_pgd_is_judged_by_the_samples_it_never_moved() -> None:
    saved = result(attack="pgd", stats={"gradient_free": 0})  # the margin run moved them all
    d = run(saved, zero=90, loss="ce+margin")
    assert d["zero_gradient"] == 1.0 and d["gradient_free"] == 0.0 and d["fails_gate"] is False
    assert d["suspected"][0].endswith("; pgd (loss = ce+margin) got a non-zero gradient for all but 0.0% of them")
    stuck = result(attack="pgd", correct=85, stats={"gradient_free": 80})
    d = run(stuck, zero=90, loss="ce+margin")
    assert d["gradient_free"] == pytest.approx(80 / 90, abs=1e-6) and d["fails_gate"] is True
    assert any("pgd got no non-zero gradient for 88.9%" in s for s in d["suspected"])


def test_weaker_than_noise_needs_a_significant_gap_and_never_fails() -> None:
    noise = result(attack="noise", correct=500, clean=900, n=1000, check=2)
    close = result(correct=520, clean=900, n=1000)  # +0.02, z ~ 0.9: sampling noise
    assert "suspected" not in run(close, [noise])
    weak = result(correct=700, clean=900, n=1000)
    d = run(weak, [noise])
    assert d["weaker_than_noise"] == 0.2 and d["fails_gate"] is False
    assert "above random noise's 0.500" in d["suspected"][0]
    other_samples = result(attack="noise", correct=500, clean=800, n=1000, check=2)
    assert "suspected" not in run(weak, [other_samples])  # not the same samples: no comparison


def test_accuracy_rising_with_eps_within_one_check() -> None:
    small = result(eps=0.05, correct=300, n=1000, clean=900)
    large = result(eps=0.2, correct=600, n=1000, clean=900)
    d = run(large, [small])
    assert d["rises_with_eps"] == 0.3 and "at eps=0.2 is above 0.300 at the smaller eps=0.05" in d["suspected"][0]
    assert "suspected" not in run(small, [large])
    assert "suspected" not in run(result(eps=0.2, correct=600, n=1000, check=5), [small])  # other check


def test_significance_rule() -> None:
    assert not significantly_above(51, 50, 100)
    assert significantly_above(80, 50, 100)
    assert not significantly_above(10, 9, 10_000)  # far below the minimum gap


class Saturated(torch.nn.Module):
    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) * 1e4


CHECKS = '''
[[tool.advrobust.checks]]
attack = "fgsm"
eps = [0.05, 0.1]
min-accuracy = 0.5

[[tool.advrobust.checks]]
attack = "noise"
eps = 0.1
min-accuracy = 0.001

[[tool.advrobust.checks]]
attack = "pgd"
eps = 0.1
min-accuracy = 0.001

[[tool.advrobust.checks]]
attack = "fgsm"
eps = 0.1
loss = "margin"
min-accuracy = 0.001
'''


def test_saturated_digits_model_is_flagged_and_broken(tmp_path) -> None:
    _, _, x, y = digits_split()
    save_torchscript(Saturated(trained_mlp()), tmp_path / "saturated.pt")
    session = gate_session(tmp_path, "saturated.pt", x, y, checks=CHECKS)
    results = {(r.attack, r.eps, r.check): r for r in session.run_all()}
    fgsm = results[("fgsm", 0.1, 0)]
    assert fgsm.accuracy == fgsm.clean_accuracy > 0.95  # FGSM on cross-entropy cannot move it
    assert fgsm.diagnostics["zero_gradient"] == 1.0 and fgsm.diagnostics["fails_gate"] is True
    assert not fgsm.passed and "gradient masking suspected" in fgsm.message
    pgd = results[("pgd", 0.1, 2)]
    assert pgd.accuracy < 0.5  # the default pgd is not fooled
    assert pgd.diagnostics["zero_gradient"] == 1.0 and pgd.diagnostics["gradient_free"] == 0.0
    assert pgd.diagnostics["fails_gate"] is False and pgd.passed  # min-accuracy 0: masking decides
    assert "gradient masking suspected" in pgd.message
    margin = results[("fgsm", 0.1, 3)]
    assert margin.accuracy < 0.6 and margin.diagnostics.get("fails_gate") is False
    assert results[("noise", 0.1, 1)].diagnostics == {}


def test_exact_gradients_do_not_trip_on_an_honest_model(tmp_path) -> None:
    _, _, x, y = digits_split()
    save_torchscript(trained_mlp(), tmp_path / "mlp.pt")
    session = gate_session(tmp_path, "mlp.pt", x, y, checks=CHECKS)
    for r in session.run_all():
        assert "suspected" not in r.diagnostics, r.message
        if r.attack != "noise":
            assert r.diagnostics["zero_gradient"] == 0.0


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_pytest_run_reports_masking_in_json_and_markdown(pytester: pytest.Pytester, blobs, workers) -> None:
    x, y = blobs
    model = train_blob_model(x, y)
    with torch.no_grad():  # logits x 1e4 through the last layer: a ReLU net keeps its decisions
        model[2].weight.mul_(1e4)
        model[2].bias.mul_(1e4)
    write_project(pytester.path, x, y, '''
        [[tool.advrobust.checks]]
        attack = "fgsm"
        eps = 0.1
        min-accuracy = 0.5

        [[tool.advrobust.checks]]
        attack = "fgsm"
        eps = 0.2
        min-accuracy = 0.5
        allow-masking = true
        ''', model=model)
    outcome = pytester.runpytest("-p", "no:cacheprovider", *workers, "--advrobust-json=r.json",
                                 "--advrobust-markdown=s.md")
    outcome.assert_outcomes(passed=1, failed=1)
    outcome.stdout.fnmatch_lines(["*fgsm eps=0.1 on blob: gradient masking suspected: the cross-entropy "
                                  "gradient is exactly zero for 100.0% of correctly classified samples*"])
    entries = {r["eps"]: r for r in json.loads((pytester.path / "r.json").read_text())["results"]}
    assert entries[0.1]["diagnostics"]["fails_gate"] is True and not entries[0.1]["passed"]
    assert entries[0.2]["diagnostics"]["zero_gradient"] == 1.0 and entries[0.2]["passed"]
    markdown = (pytester.path / "s.md").read_text()
    assert "**Gradient masking suspected**" in markdown
    assert "- `fgsm eps=0.2 on blob`: `the cross-entropy gradient is exactly zero" in markdown
    assert "(informative: the gate's verdict stands)" in markdown


class Quantised(torch.nn.Module):
    """Non-differentiable preprocessing: inputs cut to 1/8 steps as ``x - fmod(x, 1/8)``,
    whose autograd gradient is exactly zero, so every loss's input gradient is. (Written
    with ``torch.round`` the plugin would see the rounding in the TorchScript graph and take
    its gradient straight-through; ``fmod``'s gradient is 1, so nothing here looks
    non-differentiable.)"""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x - torch.fmod(x, 0.125))


def test_margin_losses_on_a_model_with_no_gradient_at_all_still_fail(tmp_path) -> None:
    """Rounding inside the model zeroes every loss's gradient: fgsm with loss = "margin" and
    the default pgd count the samples they could not move, and their gates fail."""
    _, _, x, y = digits_split()
    save_torchscript(Quantised(trained_mlp()), tmp_path / "rounded.pt")
    session = gate_session(tmp_path, "rounded.pt", x, y, checks='''
        [[tool.advrobust.checks]]
        attack = "fgsm"
        eps = 0.05
        loss = "margin"
        min-accuracy = 0.001

        [[tool.advrobust.checks]]
        attack = "pgd"
        eps = 0.05
        min-accuracy = 0.001
        ''')
    for r in session.run_all():
        assert r.diagnostics["gradient_free"] > 0.9 and r.diagnostics["fails_gate"] is True, r.attack
        assert not r.passed and f"{r.attack} got no non-zero gradient for" in r.message


def test_a_masked_model_cannot_pass_by_being_sharded(pytester: pytest.Pytester, blobs) -> None:
    """Each shard's diagnostics see only its part; the merge diagnoses the summed counts, so
    the saturated model fails the merged gate exactly as an unsharded run fails it."""
    import io

    from pytest_advrobust.merge import main as merge_main

    x, y = blobs
    model = train_blob_model(x, y)
    with torch.no_grad():
        model[2].weight.mul_(1e4)
        model[2].bias.mul_(1e4)
    write_project(pytester.path, x, y, '''
        [[tool.advrobust.checks]]
        attack = "fgsm"
        eps = 0.1
        min-accuracy = 0.5
        ''', model=model)
    whole = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json=whole.json")
    whole.assert_outcomes(failed=1)
    for k in (1, 2):
        shard = pytester.runpytest("-p", "no:cacheprovider", f"--advrobust-shard={k}/2",
                                   f"--advrobust-json=shard-{k}.json")
        assert shard.ret == 0  # partial: no verdict in a shard
    out = io.StringIO()
    code = merge_main(["merge", str(pytester.path / "shard-1.json"), str(pytester.path / "shard-2.json"),
                       "--json", str(pytester.path / "merged.json")], out=out)
    assert code == 1, out.getvalue()
    merged = json.loads((pytester.path / "merged.json").read_text())["results"][0]
    unsharded = json.loads((pytester.path / "whole.json").read_text())["results"][0]
    assert merged["diagnostics"] == unsharded["diagnostics"] and merged["diagnostics"]["fails_gate"]
    assert merged["message"] == unsharded["message"]
