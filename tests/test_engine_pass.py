"""The engine's per-model pass, step by step (``ModelPass``): each step on its own, against
figures computed here by hand on a linear model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import LinearNet
from project import gate_session, save_torchscript
from pytest_advrobust.engine import ModelPass

CHECKS = '''
[[tool.advrobust.checks]]
attack = "clean"
min-accuracy = 0.0

[[tool.advrobust.checks]]
attack = "fgsm"
eps = 0.1
min-accuracy = 0.0

[[tool.advrobust.checks]]
attack = "noise"
eps = 0.1
min-accuracy = 0.0

[[tool.advrobust.checks]]
attack = "universal"
eps = 0.1
fit-samples = 40
steps = 2
min-accuracy = 0.0
'''


@pytest.fixture
def linear_pass(tmp_path, blobs):
    x, y = blobs
    rng = np.random.default_rng(5)
    weight, bias = rng.normal(size=(4, 8)), rng.normal(size=4) * 0.1
    save_torchscript(LinearNet(weight, bias), tmp_path / "lin.pt")
    session = gate_session(tmp_path, "lin.pt", x, y, checks=CHECKS)
    spec = session.spec()
    todo = session.requests(spec)
    return ModelPass(session.engine, spec, todo), x, y, weight, bias


def _logits(x, weight, bias):
    return x.astype(np.float64) @ weight.T + bias


def test_shared_step_gives_clean_scores_and_the_exact_linear_gradient(linear_pass) -> None:
    run, x, y, weight, bias = linear_pass
    batch = next(run.batches())
    shared = run.shared(batch)
    logits = _logits(x[:64], weight, bias)
    np.testing.assert_allclose(shared.scores.cpu().numpy(), logits, rtol=1e-4, atol=1e-4)
    assert shared.clean_ok.cpu().tolist() == (logits.argmax(1) == y[:64]).tolist()
    # d CE / dx = W.T (softmax - onehot), per sample
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(64), y[:64]] -= 1
    np.testing.assert_allclose(shared.grad.cpu().numpy(), p @ weight, rtol=1e-3, atol=1e-5)


def _gate(run, attack):
    return next(g for g in run.gates.values() if g.check.attack == attack)


def test_selection_skips_the_fit_split_of_a_fitted_gate_unless_it_is_cross_fitted(linear_pass) -> None:
    run, *_ = linear_pass
    run.fit()
    universal, fgsm = _gate(run, "universal"), _gate(run, "fgsm")
    first = next(run.batches())
    assert run.selection(fgsm, first) is None
    assert run.selection(universal, first) is None  # cross-fitted: every sample, fit split too
    assert universal.fit_size == 40 and fgsm.fit_size == 0 and universal.folds == 2
    assert universal.state.shape == (2, 8) and universal.state.abs().max() <= 0.1 + 1e-7
    universal.folds = None  # a plain fitted attack: scored past its fit split only
    keep = run.selection(universal, first)
    assert keep.cpu().tolist() == [i >= 40 for i in range(64)]


def test_attack_step_counts_one_batch_like_a_hand_computed_fgsm(linear_pass) -> None:
    run, x, y, weight, bias = linear_pass
    batch = next(run.batches())
    fgsm = _gate(run, "fgsm")
    run.attack(fgsm, batch, run.shared(batch))
    xb, yb = x[:64].astype(np.float64), y[:64]
    logits = _logits(xb, weight, bias)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(64), yb] -= 1
    adversarial = np.clip(xb + 0.1 * np.sign(p @ weight), 0, 1)
    expected = int((_logits(adversarial, weight, bias).argmax(1) == yb).sum())
    assert abs(fgsm.correct - expected) <= 1  # a float tie at most
    assert fgsm.n == 64
    assert fgsm.clean_correct == int((logits.argmax(1) == yb).sum())
    # the masking diagnostic counts correctly classified samples with an all-zero gradient
    assert fgsm.zero_gradient == 0 and _gate(run, "noise").zero_gradient is None


def test_an_attack_error_stays_with_its_gate(linear_pass) -> None:
    from pytest_advrobust.errors import AttackError

    run, *_ = linear_pass
    noise, clean = _gate(run, "noise"), _gate(run, "clean")

    def broken(*args, **kwargs):
        raise AttackError("boom")

    run._attacked = lambda g, *a: broken() if g is noise else ModelPass._attacked(run, g, *a)
    batch = next(run.batches())
    shared = run.shared(batch)
    for gate in (clean, noise):
        run.attack(gate, batch, shared)
    assert isinstance(noise.error, AttackError) and noise not in run.live()
    assert clean.n == 64 and clean.error is None


def test_outcomes_turn_counts_into_measurements_and_errors(linear_pass) -> None:
    from pytest_advrobust.results import Measurement

    run, x, y, *_ = linear_pass
    run.fit()
    for batch in run.batches():
        shared = run.shared(batch)
        for gate in run.live():
            run.attack(gate, batch, shared)
    outcomes = run.outcomes()
    assert set(outcomes) == set(run.gates)
    by_attack = {run.gates[k].attack.name: v for k, v in outcomes.items()}
    assert all(isinstance(m, Measurement) for m in by_attack.values())
    assert by_attack["clean"].n == len(y) and by_attack["universal"].n == len(y)
    folds = by_attack["universal"].stats
    assert folds["fold1_n"] + folds["fold2_n"] == len(y)
    assert folds["fold1_correct"] + folds["fold2_correct"] == by_attack["universal"].correct
    assert by_attack["fgsm"].correct <= by_attack["clean"].correct
    # the engine measures only: no thresholds, no verdict, no files; the fitted delta is
    # handed out for the reports to save
    assert not hasattr(by_attack["fgsm"], "min_accuracy") and not hasattr(by_attack["fgsm"], "passed")
    assert by_attack["universal"].state is not None and by_attack["universal"].artifacts == []


def test_a_perturbation_that_cannot_be_saved_leaves_the_gate_standing(tmp_path, blobs, monkeypatch) -> None:
    from pytest_advrobust.report import artifacts

    x, y = blobs
    rng = np.random.default_rng(5)
    save_torchscript(LinearNet(rng.normal(size=(4, 8)), rng.normal(size=4) * 0.1), tmp_path / "lin.pt")
    session = gate_session(tmp_path, "lin.pt", x, y, checks=CHECKS)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts, "save_perturbation", broken)
    results = {r.attack: r for r in session.run_all()}
    universal = results["universal"]
    assert universal.n == len(y) and universal.artifacts == [] and universal.measured
    assert "fitted perturbation not saved (OSError: disk full)" in universal.details
    assert results["noise"].artifacts == []


def test_a_saved_perturbation_is_the_fitted_one(tmp_path, blobs) -> None:
    x, y = blobs
    rng = np.random.default_rng(5)
    save_torchscript(LinearNet(rng.normal(size=(4, 8)), rng.normal(size=4) * 0.1), tmp_path / "lin.pt")
    session = gate_session(tmp_path, "lin.pt", x, y, checks=CHECKS)
    results = {r.attack: r for r in session.run_all()}
    saved = sorted(a for a in results["universal"].artifacts if a.endswith(".npy"))
    assert [Path(a).name for a in saved] == ["lin-universal-eps0.1-fold1.npy", "lin-universal-eps0.1-fold2.npy"]
    assert all(a.startswith(str(tmp_path / ".advrobust" / "universal")) for a in saved)
    fitted = session.engine.measure(session.spec(), session.requests(session.spec())[3]).state
    for fold, path in enumerate(saved):  # the deltas the verdict used, one per fold
        np.testing.assert_array_equal(np.load(path), fitted[fold].detach().cpu().numpy())
