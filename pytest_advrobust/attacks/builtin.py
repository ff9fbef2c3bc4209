"""The built-in attacks, registered through the same hook as anyone's (``trylast``, so a
user's attack of the same name wins). Functions are named by import path and imported
only when an attack runs: registering them costs no torch import."""

from __future__ import annotations

import pytest

from . import Attack, AttackRegistry, Choice

#: the losses of models/base.py (kept here as names, so registering imports no torch)
LOSSES = ("ce", "margin", "dlr")
#: pgd: one loss, or cross-entropy and then a margin loss on the samples still standing
PGD_LOSSES = ("ce+margin", "ce", "margin", "dlr", "ce+dlr")

__all__ = ["pytest_advrobust_add_attacks"]


@pytest.hookimpl(trylast=True)
def pytest_advrobust_add_attacks(registry: AttackRegistry) -> None:
    base = "pytest_advrobust.attacks.basic"
    registry.add(Attack("clean", f"{base}:clean", uses_eps=False,
                        description="accuracy on the unperturbed inputs"))
    registry.add(Attack("fgsm", f"{base}:fgsm", needs_gradient=True,
                        options={"loss": Choice("ce", LOSSES)}, loss_key="loss",
                        description="fast gradient sign method, one L-inf step"))
    registry.add(Attack("noise", f"{base}:noise",
                        description="random {-1, +1} signs of the same L-inf size"))
    universal = "pytest_advrobust.attacks.universal"
    registry.add(Attack("universal", f"{universal}:apply_universal", fit=f"{universal}:fit_universal",
                        needs_gradient=True, describe=f"{universal}:describe_universal", folds_key="folds",
                        options={"fit-samples": 512, "folds": 2, "targets": 10, "steps": 40,
                                 "step-size": float, "patience": 10, "loss": Choice("ce", LOSSES)},
                        positive=("fit-samples", "folds", "steps", "step-size"),
                        validate="pytest_advrobust.attacks.rules:universal_options",
                        fit_samples_key="fit-samples", loss_key="loss",
                        description="one perturbation shared by all inputs, each sample scored on a fit "
                                    "that never saw it"))
    registry.add(Attack("pgd", "pytest_advrobust.attacks.pgd:pgd", needs_gradient=True,
                        options={"steps": 10, "step-size": float, "random-start": True, "restarts": 1,
                                 "loss": Choice("ce+margin", PGD_LOSSES)},
                        positive=("steps", "step-size", "restarts"), loss_key="loss",
                        description="projected gradient descent, L-inf, never weaker than fgsm"))
    registry.add(Attack("apgd", "pytest_advrobust.attacks.apgd:apgd", needs_gradient=True,
                        options={"loss": Choice("ce", ("ce", "dlr")), "steps": 100, "restarts": 1,
                                 "targeted": False, "targets": 9, "random-start": True},
                        positive=("steps", "restarts", "targets"), loss_key="loss",
                        description="Auto-PGD (APGD-CE / APGD-DLR / APGD-T), L-inf, step size set by itself"))
    registry.add(Attack("transfer", "pytest_advrobust.attacks.transfer:transfer",
                        options={"surrogate": None, "via": "fgsm", "steps": 10, "step-size": float,
                                 "loss": Choice("ce", LOSSES), "random-start": False},
                        positive=("steps", "step-size"),
                        validate="pytest_advrobust.attacks.rules:transfer_options",
                        surrogate_key="surrogate",
                        description="inputs crafted on surrogate models, evaluated on this one"))
    registry.add(Attack("spsa", "pytest_advrobust.attacks.spsa:spsa",
                        options={"queries": 2000, "samples": 32, "delta": 0.01, "step-size": float},
                        positive=("queries", "samples", "delta", "step-size"),
                        validate="pytest_advrobust.attacks.rules:spsa_options",
                        description="score-based black-box attack (SPSA), no gradient needed"))
    registry.add(Attack("square", "pytest_advrobust.attacks.square:square",
                        options={"queries": int, "p-init": 0.8},
                        positive=("queries", "p-init"),
                        description="Square attack: score-based random search, no gradient needed"))
    strongest = "pytest_advrobust.attacks.strongest"
    registry.add(Attack("strongest", f"{strongest}:strongest", describe=f"{strongest}:describe_strongest",
                        options={"steps": 50, "restarts": 1, "targets": 9, "square-queries": 1000,
                                 "queries": int},
                        positive=("steps", "restarts", "targets", "queries"),
                        description="fgsm, apgd-ce, apgd-t, square in turn: robust only if all fail"))
    search = "pytest_advrobust.attacks.search"
    registry.add(Attack("hypothesis", f"{search}:hypothesis_search", describe=f"{search}:describe_search",
                        samples_key="samples", options={"max-examples": 100, "samples": 16},
                        positive=("max-examples", "samples"),
                        description="hypothesis searches the eps ball for a flip and shrinks it"))
