"""The engine's per-model pass, step by step (``ModelPass``): each step on its own, against
figures computed here by hand on a linear model."""

from __future__ import annotations

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


def test_selection_skips_the_fit_split_of_a_fitted_gate_unless_it_is_cross_fitted(linear_pass) -> None:
    from dataclasses import replace

    run, *_ = linear_pass
    run.fit()
    universal = next(r for r in run.todo if r.check.attack == "universal")
    fgsm = next(r for r in run.todo if r.check.attack == "fgsm")
    first = next(run.batches())
    assert run.selection(fgsm, first) is None
    assert run.selection(universal, first) is None  # cross-fitted: every sample, fit split too
    state = run.states[universal.key]
    assert state.shape == (2, 8) and state.abs().max() <= 0.1 + 1e-7  # one delta per fold
    run.attacks[universal.key] = replace(run.attacks[universal.key], folds_key=None)
    keep = run.selection(universal, first)  # a plain fitted attack: scored past its fit split
    assert keep.cpu().tolist() == [i >= 40 for i in range(64)]


def test_attack_step_counts_one_batch_like_a_hand_computed_fgsm(linear_pass) -> None:
    run, x, y, weight, bias = linear_pass
    batch = next(run.batches())
    fgsm = next(r for r in run.todo if r.check.attack == "fgsm")
    run.attack(fgsm, batch, run.shared(batch))
    tally = run.tallies[fgsm.key]
    xb, yb = x[:64].astype(np.float64), y[:64]
    logits = _logits(xb, weight, bias)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(64), yb] -= 1
    adversarial = np.clip(xb + 0.1 * np.sign(p @ weight), 0, 1)
    expected = int((_logits(adversarial, weight, bias).argmax(1) == yb).sum())
    assert abs(tally.correct - expected) <= 1  # a float tie at most
    assert tally.n == 64
    assert tally.clean_correct == int((logits.argmax(1) == yb).sum())


def test_an_attack_error_stays_with_its_gate(linear_pass) -> None:
    from pytest_advrobust.errors import AttackError

    run, *_ = linear_pass
    noise = next(r for r in run.todo if r.check.attack == "noise")
    clean = next(r for r in run.todo if r.check.attack == "clean")

    def broken(*args, **kwargs):
        raise AttackError("boom")

    run._attacked = lambda r, *a: broken() if r is noise else ModelPass._attacked(run, r, *a)
    batch = next(run.batches())
    shared = run.shared(batch)
    for r in (clean, noise):
        run.attack(r, batch, shared)
    assert noise.key in run.errors and noise not in run.live()
    assert run.tallies[clean.key].n == 64


def test_outcomes_turn_tallies_into_results_and_errors(linear_pass) -> None:
    run, x, y, *_ = linear_pass
    run.fit()
    for batch in run.batches():
        shared = run.shared(batch)
        for r in run.live():
            run.attack(r, batch, shared)
    outcomes = run.outcomes()
    assert set(outcomes) == {r.key for r in run.todo}
    by_attack = {run.attacks[k].name: v for k, v in outcomes.items()}
    assert by_attack["clean"].n == len(y) and by_attack["universal"].n == len(y)
    assert by_attack["fgsm"].correct <= by_attack["clean"].correct
    assert by_attack["universal"].artifacts  # the fitted delta was saved


def test_a_perturbation_that_cannot_be_saved_leaves_the_gate_standing(linear_pass, monkeypatch) -> None:
    run, x, y, *_ = linear_pass

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(run.engine, "_save_state", broken)
    run.fit()
    universal = next(r for r in run.todo if r.check.attack == "universal")
    assert universal.key in run.states and universal in run.live()
    for batch in run.batches():
        shared = run.shared(batch)
        for r in run.live():
            run.attack(r, batch, shared)
    result = run.outcomes()[universal.key]
    assert result.n == len(y) and result.artifacts == []
    assert "fitted perturbation not saved (OSError: disk full)" in result.details
