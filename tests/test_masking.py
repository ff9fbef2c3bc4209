"""Gradient-masking diagnostics: the rules on hand-made results, then a saturated model
(logits x 1e4: the same decisions, a zero cross-entropy gradient) through the engine and
through pytest, the way users meet it."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from digits_project import digits_split, trained_flat_cnn, trained_mlp, trained_mlp_state
from project import gate_session, save_torchscript, train_blob_model, write_project
from pytest_advrobust.diagnostics import diagnose, significantly_above
from pytest_advrobust.gate import judge
from pytest_advrobust.results import AttackResult
from pytest_advrobust.session import RobustnessSession, plugin_manager


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


# -- the masking probe: a black-box attack on the same samples, paired ----------------------
def test_paired_test_is_the_exact_sign_test_and_its_boundary_is_ten_to_none() -> None:
    """``paired_p`` against scipy's exact binomial test (the exact one-sided McNemar test),
    on both of its paths; and the rule's boundary, found independently with scipy."""
    from scipy.stats import binomtest

    from pytest_advrobust.diagnostics import ALPHA, EXACT_PAIRS, black_box_beats, paired_p

    for more, fewer in [(1, 0), (9, 0), (10, 0), (14, 3), (40, 25), (3, 20), (3100, 2900),
                        (EXACT_PAIRS // 2 + 60, EXACT_PAIRS // 2)]:
        expected = binomtest(more, more + fewer, 0.5, alternative="greater").pvalue
        assert paired_p(more, fewer) == pytest.approx(expected, rel=1e-9, abs=1e-300), (more, fewer)
    assert paired_p(0, 7) == 1.0 and paired_p(0, 0) == 1.0
    # no sample fooled by the gradient attack alone: 9 fooled by square alone pass, 10 fail
    assert paired_p(9, 0) == 2.0 ** -9 > ALPHA > paired_p(10, 0) == 2.0 ** -10
    assert not black_box_beats(9, 0, 100) and black_box_beats(10, 0, 100)
    for fewer in (1, 3, 8):  # the same boundary with some discordant pairs the other way
        first = next(m for m in range(1, 200)
                     if binomtest(m, m + fewer, 0.5, alternative="greater").pvalue < ALPHA)
        assert not black_box_beats(first - 1, fewer, 200) and black_box_beats(first, fewer, 200)
    # significant but small: fewer than MIN_GAP of the probed samples more is not masking
    assert paired_p(1100, 900) < 1e-5 and not black_box_beats(1100, 900, 20_000)
    assert black_box_beats(1100, 900, 9_000)


def probed(more: int, fewer: int, samples: int = 100, gate_correct: int = 90, probe_correct: int = 78,
           **kwargs) -> AttackResult:
    stats = {"probe_samples": samples, "probe_fooled_only": more, "probe_gate_only": fewer,
             "probe_gate_correct": gate_correct, "probe_correct": probe_correct, "probe_queries": 4000}
    return result(correct=480, clean=520, n=540, stats=stats, **kwargs)


def test_the_probe_fails_a_gradient_gate_unless_masking_is_allowed() -> None:
    r = probed(12, 0)
    d = run(r)
    assert d["black_box_excess"] == 0.12 and d["black_box_p"] == float(f"{2.0 ** -12:.3g}")
    assert d["fails_gate"] is True
    assert d["suspected"] == [
        "square fooled 12 more samples (accuracy 0.900 vs 0.780 on the 100 samples the masking probe "
        "attacked at the same eps without gradients: 12 fooled by square alone, 0 by fgsm alone, "
        "one-sided exact test p = 2.4e-04), so accuracy 0.889 overstates robustness"]
    r.diagnostics = d
    verdict = judge(r)  # 0.889 >= min-accuracy 0.1, and red
    assert not verdict.passed and verdict.message.startswith(
        "fgsm eps=0.1 on m: gradient masking suspected: square fooled 12 more samples (accuracy 0.900 vs 0.780")
    r.diagnostics = run(r, allow=True)
    assert r.diagnostics["fails_gate"] is False and judge(r).passed
    assert "gradient masking suspected: square fooled 12" in judge(r).message
    quiet = run(probed(9, 0))  # p = 2^-9: the figures, no suspicion
    assert quiet == {"black_box_excess": 0.09, "black_box_p": float(f"{2.0 ** -9:.3g}")}
    assert "suspected" not in run(probed(12, 0), gradient=False)  # only gradient gates are probed


def test_strongest_reports_its_gradient_members_and_fails_only_without_square() -> None:
    members = {"fooled_by_fgsm": 5, "fooled_by_apgd-ce": 2, "fooled_by_apgd-t": 1,
               "fooled_by_square": 60, "zero_gradient": 80, "queries": 9000, "gradients": 540}
    r = result(attack="strongest", correct=20, clean=90, n=100, stats=members)
    d = run(r, gradient=False)
    assert d["zero_gradient"] == pytest.approx(80 / 90, abs=1e-6) and d["fails_gate"] is False
    assert d["suspected"][0] == ("the cross-entropy gradient is exactly zero for 88.9% of correctly "
                                 "classified samples (80 of 90), so strongest's gradient members could "
                                 "not move them; its square member (no gradient needed) attacked them too")
    assert d["suspected"][1].startswith("its square member fooled 60 samples its gradient members left "
                                        "standing, more than the 8 they fooled")
    honest = dict(members, **{"fooled_by_apgd-ce": 60, "fooled_by_square": 8, "zero_gradient": 0})
    assert run(result(attack="strongest", correct=20, clean=90, n=100, stats=honest),
               gradient=False) == {"zero_gradient": 0.0, "black_box_excess": round((8 - 66) / 90, 6),
                                   "black_box_p": 1.0}
    # square-queries = 0: no black-box member; it fails when the samples with a zero gradient
    # stayed standing, not when a member ascending another loss (apgd-t's DLR) moved them
    blind = dict(members, fooled_by_square=0, queries=0, zero_gradient_standing=75)
    d = run(result(attack="strongest", correct=82, clean=90, n=100, stats=blind), gradient=False)
    assert d["fails_gate"] is True and d["suspected"][0].endswith(
        "; 75 of them were left standing by every gradient member and no square member ran "
        "(square-queries = 0), so accuracy 0.820 is no evidence of robustness")
    moved = dict(blind, zero_gradient_standing=2)
    d = run(result(attack="strongest", correct=20, clean=90, n=100, stats=moved), gradient=False)
    assert d["fails_gate"] is False and d["suspected"][0].endswith(
        "; its gradient members that ascend another loss moved all but 2 of them")


def test_a_black_box_gate_of_the_same_eps_informs_and_never_fails() -> None:
    """Unpaired (the gates may run in other processes, or not be selected): it adds words."""
    square = result(attack="square", correct=200, clean=520, n=540, check=3)
    gate = result(correct=480, clean=520, n=540)
    d = diagnose(gate, [gate, square], needs_gradient=True, zero_gradient=0, loss="ce",
                 allow_masking=False, black_box=[square])
    assert d["weaker_than_black_box"] == round(280 / 540, 6) and d["fails_gate"] is False
    assert d["suspected"] == ["square (no gradient needed) leaves accuracy 0.370, below fgsm's 0.889 at "
                              "the same eps"]
    for other in (result(attack="square", eps=0.2, correct=200, clean=520, n=540, check=3),
                  result(attack="square", correct=470, clean=520, n=540, check=3)):  # other eps; noise
        assert "suspected" not in diagnose(gate, [gate, other], needs_gradient=True, zero_gradient=0,
                                           loss="ce", allow_masking=False, black_box=[other])


def test_the_judge_compares_gradient_gates_with_black_box_gates_only() -> None:
    from pytest_advrobust.attacks import AttackRegistry
    from pytest_advrobust.attacks.builtin import pytest_advrobust_add_attacks
    from pytest_advrobust.config import CheckSpec, ModelSpec
    from pytest_advrobust.gate import Judge
    from pytest_advrobust.results import Measurement

    registry = AttackRegistry()
    pytest_advrobust_add_attacks(registry)
    spec = ModelSpec(name="m", model="m.onnx", data="d.npz", root=Path("."), source=Path("p.toml"))
    judge_ = Judge(lambda model, index: (spec, CheckSpec(attack="fgsm", eps=(0.1,), min_accuracy=0.1)),
                   registry)
    found = [Measurement(model="m", attack=a, eps=0.1, check=i, correct=c, clean_correct=520, n=540)
             for i, (a, c) in enumerate([("fgsm", 480), ("pgd", 470), ("universal", 500), ("square", 200),
                                         ("spsa", 210), ("noise", 500), ("strongest", 100)])]
    results = {r.attack: r for r in judge_.results(found)}
    assert judge_._black_box(found) == [found[3], found[4]]
    for attack in ("fgsm", "pgd"):
        assert results[attack].diagnostics["weaker_than_black_box"] > 0.45
        assert results[attack].passed  # informative only
    assert "weaker_than_black_box" not in results["universal"].diagnostics  # weaker by design


def test_probe_keys_are_read_inherited_and_refused_where_nothing_is_probed() -> None:
    from pytest_advrobust.attacks import AttackRegistry
    from pytest_advrobust.attacks.builtin import pytest_advrobust_add_attacks
    from pytest_advrobust.config import (EOT_SAMPLES, MASKING_PROBE_QUERIES, MASKING_PROBE_SAMPLES,
                                         ModelSpec, masking_probe, parse_config)
    from pytest_advrobust.errors import ConfigError

    registry = AttackRegistry()
    pytest_advrobust_add_attacks(registry)
    attacks = registry.config_options()
    table = {"data": "d.npz", "masking-probe-queries": 20, "eot-samples": 3, "models": {
        "a": {"model": "a.onnx", "checks": [
            {"attack": "fgsm", "eps": 0.1, "min-accuracy": 0.5},
            {"attack": "pgd", "eps": 0.1, "min-accuracy": 0.5, "masking-probe-samples": 400},
            {"attack": "apgd", "eps": 0.1, "min-accuracy": 0.5, "masking-probe": False}]},
        "b": {"model": "b.onnx", "masking-probe": False, "checks": [
            {"attack": "fgsm", "eps": 0.1, "min-accuracy": 0.5},
            {"attack": "pgd", "eps": 0.1, "min-accuracy": 0.5, "masking-probe": True}]}}}
    config = parse_config(table, path=Path("p.toml"), attacks=attacks)
    a, b = config.models
    assert a.eot_samples == b.eot_samples == 3
    assert ModelSpec(name="x", model="m.onnx", data="d.npz", root=Path("."),
                     source=Path("p.toml")).eot_samples == EOT_SAMPLES == 8
    assert [masking_probe(a, c) for c in a.checks] == [(MASKING_PROBE_SAMPLES, 20), (400, 20), None]
    assert [masking_probe(b, c) for c in b.checks] == [None, (MASKING_PROBE_SAMPLES, 20)]
    assert (MASKING_PROBE_SAMPLES, MASKING_PROBE_QUERIES) == (100, 50)
    for check, words in [({"attack": "square", "eps": 0.1, "masking-probe": False},
                          "checks[0] masking-probe: attack 'square' is not cross-checked"),
                         ({"attack": "universal", "eps": 0.1, "masking-probe-queries": 5},
                          "checks[0] masking-probe-queries: attack 'universal' is not cross-checked"),
                         ({"attack": "fgsm", "eps": 0.1, "masking-probe-samples": 0},
                          "masking-probe-samples: must be a whole number >= 1, not 0"),
                         ({"attack": "fgsm", "eps": 0.1, "masking-probe": "no"},
                          "masking-probe: must be true or false")]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            parse_config({"model": "a.onnx", "data": "d.npz", "checks": [{**check, "min-accuracy": 0.1}]},
                         path=Path("p.toml"), attacks=attacks)
    with pytest.raises(ConfigError, match=re.escape("eot-samples: must be a whole number >= 1, not 0")):
        parse_config({"model": "a.onnx", "data": "d.npz", "eot-samples": 0,
                      "checks": [{"attack": "clean", "min-accuracy": 0.1}]}, path=Path("p.toml"), attacks=attacks)


# -- through the engine: honest, masked, ensembles, randomised ---------------------------------
HONEST = '''
[[tool.advrobust.checks]]
attack = "fgsm"
eps = [0.02, 0.05, 0.1, 0.2, 0.3]
report-only = true

[[tool.advrobust.checks]]
attack = "pgd"
eps = [0.02, 0.05, 0.1, 0.2, 0.3]
report-only = true
'''


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_honest_models_never_trip_the_probe(tmp_path, net) -> None:
    """The digits MLP and CNN, exact gradients, five eps: square never fools significantly
    more than fgsm or pgd on the samples it probes (it fools fewer), so nothing is said."""
    _, _, x, y = digits_split()
    save_torchscript(trained_mlp() if net == "mlp" else trained_flat_cnn(), tmp_path / "m.pt")
    results = gate_session(tmp_path, "m.pt", x, y, checks=HONEST).run_all()
    assert len(results) == 10
    for r in results:
        assert r.status == "measured" and "suspected" not in r.diagnostics, r.message
        assert r.stats["probe_samples"] > 60 and r.diagnostics["black_box_p"] > 0.1, r.label
        assert r.stats["probe_fooled_only"] <= r.stats["probe_gate_only"] + 3, r.label
        assert "randomised" not in r.details and not any(key.startswith("eot_") for key in r.stats)



def _mirrored(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The digits MLP behind a mirrored gradient sign (tests/models/defences.py), saved as
    ``folder/mirrored.pt``; the held-out digits it is gated on."""
    sys.path.insert(0, str(Path(__file__).parent / "models"))
    from defences import Mirrored

    _, _, x, y = digits_split()
    model = Mirrored()
    model.net.load_state_dict(trained_mlp_state())
    save_torchscript(model, folder / "mirrored.pt")
    return x, y

def test_the_probe_does_not_depend_on_batch_size_or_on_the_gates_beside_it(tmp_path) -> None:
    """A sample's probe outcome is keyed by its position: other batch sizes, and fgsm alone
    or beside pgd (which share one probe per batch), count exactly the same."""
    x, y = _mirrored(tmp_path)
    fgsm = '[[tool.advrobust.checks]]\nattack = "fgsm"\neps = 0.1\nmin-accuracy = 0.6\n'
    pgd = '[[tool.advrobust.checks]]\nattack = "pgd"\neps = 0.1\nsteps = 3\nmin-accuracy = 0.6\n'
    runs = []
    for batch, checks in ((64, fgsm), (100, fgsm), (64, fgsm + pgd)):
        gate_session(tmp_path, "mirrored.pt", x, y, checks=checks)  # writes the project
        path = tmp_path / "pyproject.toml"
        path.write_text(path.read_text().replace("batch-size = 64", f"batch-size = {batch}"))
        results = RobustnessSession(plugin_manager().hook, path).run_all()
        assert results[0].attack == "fgsm" and not results[0].passed
        assert "gradient masking suspected: square fooled" in results[0].message
        runs.append({k: v for k, v in results[0].stats.items() if k.startswith("probe_")})
    assert runs[0] == runs[1] == runs[2] and runs[0]["probe_fooled_only"] >= 10


def test_strongest_says_its_gradient_members_were_blind(tmp_path) -> None:
    """Rounding inside the model: every gradient member of strongest is stuck. With its
    square member the figure is honest and the diagnostics say what happened; without it
    (square-queries = 0) the gate fails instead of reporting the clean accuracy."""
    _, _, x, y = digits_split()
    save_torchscript(Quantised(trained_mlp()), tmp_path / "rounded.pt")
    session = gate_session(tmp_path, "rounded.pt", x, y, extra="max-samples = 128\n", checks='''
        [[tool.advrobust.checks]]
        attack = "strongest"
        eps = 0.1
        steps = 5
        targets = 2
        square-queries = 300
        min-accuracy = 0.001

        [[tool.advrobust.checks]]
        attack = "strongest"
        eps = 0.1
        steps = 5
        targets = 2
        square-queries = 0
        min-accuracy = 0.001
        ''')
    with_square, without = session.run_all()
    assert with_square.diagnostics["zero_gradient"] > 0.9 and with_square.diagnostics["fails_gate"] is False
    assert with_square.passed
    assert "its square member (no gradient needed) attacked them too" in with_square.message
    assert "its square member fooled" in with_square.message and "rests on square" in with_square.message
    stats = with_square.stats
    assert stats["fooled_by_square"] > 5 * (stats["fooled_by_fgsm"] + stats["fooled_by_apgd-ce"]
                                            + stats["fooled_by_apgd-t"])
    assert f"square {stats['fooled_by_square']}" in with_square.details  # who fooled how many
    assert without.accuracy > with_square.accuracy + 0.2 and not without.passed
    assert "no square member ran (square-queries = 0)" in without.message


RANDOMISED = '''
[[tool.advrobust.checks]]
attack = "clean"
report-only = true

[[tool.advrobust.checks]]
attack = "fgsm"
eps = 0.1
report-only = true
'''


def noisy_digits(tmp_path) -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    sys.path.insert(0, str(Path(__file__).parent / "models"))
    from defences import Noisy

    _, _, x, y = digits_split()
    model = Noisy(sigma=0.1)
    model.net.load_state_dict(trained_mlp_state())
    save_torchscript(model, tmp_path / "noisy.pt")
    return model.eval(), x[:256], y[:256]


def test_a_randomised_model_is_attacked_with_eot_and_counted_over_its_draws(tmp_path) -> None:
    """Noise inside forward: detected, attacked through the mean over 4 draws, and each
    figure counts the samples right in all 4 evaluation draws (the mean beside it); the
    draws are seeded, so a rerun gives the same figures, and the caller's torch generator
    is left as it was."""
    model, x, y = noisy_digits(tmp_path)
    state = torch.get_rng_state()
    session = gate_session(tmp_path, "noisy.pt", x, y, checks=RANDOMISED, extra="eot-samples = 4\n")
    clean, fgsm = session.run_all()
    assert torch.equal(torch.get_rng_state(), state)
    means = {}
    for r in (clean, fgsm):
        assert r.stats["eot_evaluations"] == 4 * r.n == 1024
        means[r.attack] = r.stats["eot_correct_draws"] / r.stats["eot_evaluations"]
        assert means[r.attack] > r.accuracy
        assert "randomised: scores differ between identical forward passes" in r.details
        assert (f"{r.correct} of 256 samples correct in all 4 draws (accuracy {r.accuracy:.3f}); "
                f"mean accuracy over the draws {means[r.attack]:.3f}") in r.details
        assert r.fingerprint["randomised"] == {"eot-samples": 4, "batch-size": 64, "seed": 0}
    assert fgsm.accuracy < clean.accuracy and fgsm.stats["probe_samples"] > 50
    # independently: the module itself over 64 unseeded draws
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    with torch.no_grad():
        right = torch.stack([model(xt).argmax(1) == yt for _ in range(64)])
    assert means["clean"] == pytest.approx(float(right.float().mean()), abs=0.02)
    all_four = float(right.view(16, 4, -1).all(1).float().mean())  # P(right in 4 draws), 16 groups
    assert clean.accuracy == pytest.approx(all_four, abs=0.05)
    again = gate_session(tmp_path, "noisy.pt", x, y, checks=RANDOMISED, extra="eot-samples = 4\n").run_all()
    assert [r.to_dict() for r in again] == [r.to_dict() for r in (clean, fgsm)]
    single = gate_session(tmp_path, "noisy.pt", x, y, checks=RANDOMISED, extra="eot-samples = 1\n").run_all()
    assert "eot-samples = 1 judges every sample on one seeded draw" in single[0].details
    assert single[0].accuracy > clean.accuracy  # one draw: more samples look right


def test_a_randomised_model_sharded_merges_to_its_unsharded_figures(tmp_path) -> None:
    """Draws are seeded per gate and batch, and shards keep the batch boundaries."""
    from test_sharding import merged, shard_report, sharded_run

    _, x, y = noisy_digits(tmp_path)
    gate_session(tmp_path, "noisy.pt", x, y, checks=RANDOMISED, extra="eot-samples = 3\n")
    path = tmp_path / "pyproject.toml"
    whole = sharded_run(path, None)
    parts = [shard_report(tmp_path, path, sharded_run(path, (k, 2)), k, 2) for k in (1, 2)]
    assert [r.to_dict() for r in merged(path, parts)] == [r.to_dict() for r in whole]
    assert all("randomised" in r.details for r in whole)


def test_reports_carry_the_probe(pytester: pytest.Pytester) -> None:
    """The mirrored-sign defence as a TorchScript archive: the probe's verdict and words in
    the terminal, JSON, Markdown and JUnit; allow-masking keeps the words, not the failure."""
    from xml.etree import ElementTree

    x, y = _mirrored(pytester.path)
    np.savez(pytester.path / "digits.npz", x=x, y=y)
    pytester.makefile(".toml", pyproject='''
        [tool.advrobust]
        model = "mirrored.pt"
        data = "digits.npz"

        [[tool.advrobust.checks]]
        attack = "fgsm"
        eps = 0.1
        min-accuracy = 0.6

        [[tool.advrobust.checks]]
        attack = "pgd"
        eps = 0.1
        steps = 3
        min-accuracy = 0.6
        allow-masking = true
        ''')
    outcome = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json=r.json",
                                 "--advrobust-markdown=s.md", "--junitxml=j.xml")
    outcome.assert_outcomes(passed=1, failed=1)
    outcome.stdout.fnmatch_lines(["*fgsm eps=0.1 on mirrored: gradient masking suspected: square fooled *"
                                  "more samples (accuracy 0.9* vs 0.* on the * samples the masking probe*"])
    entries = {r["attack"]: r for r in json.loads((pytester.path / "r.json").read_text())["results"]}
    for attack, failed in (("fgsm", True), ("pgd", False)):
        entry = entries[attack]
        assert entry["status"] == ("failed" if failed else "passed") and entry["accuracy"] > 0.6
        assert entry["diagnostics"]["fails_gate"] is failed and entry["diagnostics"]["black_box_p"] < 1e-3
        assert entry["stats"]["probe_fooled_only"] >= 10 and "square fooled" in entry["message"]
    markdown = (pytester.path / "s.md").read_text()
    assert "**Gradient masking suspected**" in markdown
    assert "- `fgsm eps=0.1 on mirrored`: `square fooled" in markdown
    masking = markdown.split("**Gradient masking suspected**")[1].split("\n\n")[1]
    pgd_line, = (line for line in masking.splitlines() if line.startswith("- `pgd eps=0.1 on mirrored`"))
    assert pgd_line.endswith("(informative: the gate's verdict stands)")
    fgsm_line, = (line for line in masking.splitlines() if line.startswith("- `fgsm eps=0.1 on mirrored`"))
    assert "informative" not in fgsm_line
    failure = ElementTree.parse(pytester.path / "j.xml").getroot().find(".//failure")
    assert "gradient masking suspected: square fooled" in failure.get("message")


def test_a_stream_of_unknown_length_probes_its_first_samples(tmp_path) -> None:
    """Batches from a generator (no length known before the pass): the probe takes the
    first masking-probe-samples samples the gate evaluates, not a share of an unknown N."""
    x, y = _mirrored(tmp_path)
    np.savez(tmp_path / "digits.npz", x=x, y=y)
    (tmp_path / "streamed.py").write_text(
        "import numpy as np\n\ndef batches():\n    data = np.load('digits.npz')\n"
        "    for start in range(0, 540, 50):\n        yield data['x'][start:start + 50], data['y'][start:start + 50]\n")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.advrobust]\nmodel = "mirrored.pt"\ndata = "streamed:batches"\nbatch-size = 64\n'
        'masking-probe-samples = 70\n[[tool.advrobust.checks]]\nattack = "fgsm"\neps = 0.1\n'
        'min-accuracy = 0.6\n')
    monkey = pytest.MonkeyPatch()
    monkey.chdir(tmp_path)
    try:
        (r,) = RobustnessSession(plugin_manager().hook, tmp_path / "pyproject.toml").run_all()
    finally:
        monkey.undo()
    assert r.stats["probe_samples"] == 70 and not r.passed
    assert "gradient masking suspected: square fooled" in r.message
    # sharded, each shard probes its part of the same first 70 positions: the sums are the
    # unsharded counts (a shard probing "its own first 70" would probe 140)
    probed = {k: 0 for k in r.stats if k.startswith("probe_") and k != "probe_queries"}
    for shard in ((1, 2), (2, 2)):
        monkey.chdir(tmp_path)
        try:
            session = RobustnessSession(plugin_manager().hook, tmp_path / "pyproject.toml")
            session.engine.shard = shard
            (part,) = session.run_all()
        finally:
            monkey.undo()
        for key in probed:
            probed[key] += part.stats[key]
    assert probed == {k: r.stats[k] for k in probed}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (torch sees none)")
def test_a_randomised_model_on_a_gpu_is_seeded_there_too(tmp_path) -> None:
    """Noise drawn on the GPU: the CUDA generator is seeded per draw as well (so a rerun
    gives the same figures) and restored afterwards."""
    _, x, y = noisy_digits(tmp_path)
    cuda = torch.cuda.get_rng_state()
    runs = [gate_session(tmp_path, "noisy.pt", x, y, checks=RANDOMISED,
                         extra='eot-samples = 2\ndevice = "cuda"\n').run_all() for _ in range(2)]
    assert torch.equal(torch.cuda.get_rng_state(), cuda)
    assert [r.to_dict() for r in runs[0]] == [r.to_dict() for r in runs[1]]
    assert all("randomised" in r.details for r in runs[0])


def test_deciding_early_takes_the_probe_on_the_same_samples_as_a_full_run(tmp_path) -> None:
    """decide-early stops a gate after 128 samples; the probe attacks the first 100 the gate
    evaluates in the seed-keyed order, which is the order the early pass reads: the early
    gate's probe counts are the full run's, to the sample, so the probe's failing verdict
    cannot be cut short into a pass (the mirrored model's fgsm accuracy alone would pass)."""
    x, y = _mirrored(tmp_path)
    checks = '[[tool.advrobust.checks]]\nattack = "fgsm"\neps = 0.1\nmin-accuracy = 0.6\n'
    runs = {}
    for early in ("false", "true"):
        session = gate_session(tmp_path, "mirrored.pt", x, y, checks=checks,
                               extra=f"decide-early = {early}\n")
        (runs[early],) = session.run_all()
    full, early = runs["false"], runs["true"]
    assert not full.decided_early and full.n == 540 and early.decided_early and early.n == 128
    probe = {k: v for k, v in full.stats.items() if k.startswith("probe_")}
    assert probe["probe_samples"] == 100 and probe["probe_fooled_only"] >= 10
    assert {k: v for k, v in early.stats.items() if k.startswith("probe_")} == probe
    assert early.accuracy > 0.6 and early.status == full.status == "failed"
    assert "masking-probe" in early.decision["failing"] and "square fooled" in early.message


def test_an_early_stop_waits_for_the_probe() -> None:
    """decide(): a probed gate whose accuracy is settled far above its floor stays open
    until the probe's subsample is measured, then follows the probe's test."""
    from pytest_advrobust.gate import decide

    common = dict(correct=120, clean_correct=125, gained=0, n=128, stage=1, error=1e-3, min_accuracy=0.3)
    assert decide(**common).passed is True
    assert decide(**common, probed=True, probe=None).passed is None
    assert decide(**common, probed=True, probe=False).passed is True
    failed = decide(**common, probed=True, probe=True)
    assert failed.passed is False and failed.failing == ("masking-probe",)


def test_the_judge_keeps_an_early_gate_open_until_its_probe_is_complete(tmp_path) -> None:
    """Judge.settled on fgsm counts far above the floor: not settled while n is below
    masking-probe-samples, settled (passed) at it with a quiet probe, failed with a tripped one."""
    from pytest_advrobust.results import Measurement

    _, _, x, y = digits_split()
    save_torchscript(trained_mlp(), tmp_path / "mlp.pt")
    checks = '[[tool.advrobust.checks]]\nattack = "fgsm"\neps = 0.1\nmin-accuracy = 0.3\n'
    session = gate_session(tmp_path, "mlp.pt", x, y, checks=checks,
                           extra="decide-early = true\nmasking-probe-samples = 200\n")
    name = session.config.models[0].name

    def measured(n: int, more: int) -> Measurement:
        stats = {"probe_samples": min(n, 200), "probe_fooled_only": more, "probe_gate_only": 0,
                 "probe_correct": 100, "probe_gate_correct": 120}
        return Measurement(model=name, attack="fgsm", eps=0.1, check=0, options={},
                           correct=n - 4, clean_correct=n - 2, n=n, stats=stats, zero_gradient=0,
                           samples=540, decided_early=True, stage=1)

    assert not session.judge.settled(measured(128, 0))
    assert session.judge.settled(measured(256, 0)) and session.judge.result(measured(256, 0)).passed
    tripped = session.judge.result(measured(256, 40))
    assert tripped.passed is False and "masking-probe" in tripped.decision["failing"]
