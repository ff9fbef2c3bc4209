"""Gradient-masking diagnostics: signs that a gradient attack's figure overstates robustness.

Carlini, Athalye, Papernot, Brendel, Rauber, Tsipras, Goodfellow, Madry & Kurakin, 2019,
"On Evaluating Adversarial Robustness", section 5 (and Athalye, Carlini & Wagner, 2018):
an attack whose gradient is masked reports a model as robust when it is not. Three of
their checks cost nothing here, because the engine's pass already has what they need:

- ``zero_gradient``: the fraction of a gradient gate's correctly classified samples whose
  input gradient of the cross-entropy is exactly zero (the loss is taken in float64, so an
  honest model's gradient is zero only where it truly vanishes: saturated logits,
  non-differentiable preprocessing, dead paths). A gradient attack cannot move such a
  sample, which then counts as robust for free.
- ``gradient_free``: for attacks that report it (``pgd``), the fraction of correctly
  classified samples left standing for which every gradient the attack took, with every
  loss it ran, was exactly zero.
- ``weaker_than_noise``: a gradient attack leaves the accuracy higher than random ``noise``
  of the same eps on the same samples (by this much).
- ``rises_with_eps``: within one check, a larger eps leaves a higher accuracy than a
  smaller one (by this much).

**What fails a gate.** A false green is the worst outcome, so a gradient gate whose own
attack could not move more than :data:`ZERO_GRADIENT_LIMIT` of its correctly classified
samples (``gradient_free`` where the attack reports it, else ``zero_gradient`` when the
attack ascends the cross-entropy) fails, unless the check says ``allow-masking = true``:
its figure would be the clean accuracy dressed as robustness. These are deterministic
counts, so they cannot flap. The two comparisons between gates are statistical (two
accuracies over finite samples), so they only add "gradient masking suspected" to the
message and the reports: they trip only on a difference of at least :data:`MIN_GAP` that
a one-sided two-proportion z-test puts at p < 0.001, so sampling noise alone does not
trip them, and a gate does not flip between green and red on them from run to run.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["MIN_GAP", "ZERO_GRADIENT_LIMIT", "diagnose", "masking_count", "significantly_above"]

#: more than this fraction of correctly classified samples unmoved fails a gradient gate
ZERO_GRADIENT_LIMIT = 0.05
#: the smallest accuracy difference the statistical checks report
MIN_GAP = 0.02
#: one-sided z for p < 0.001
Z_CRITICAL = 3.090232306167813


def significantly_above(high: int, low: int, n: int) -> bool:
    """Whether ``high / n`` exceeds ``low / n`` by at least :data:`MIN_GAP` and by a
    one-sided two-proportion z-test at p < 0.001 (conservative for paired samples)."""
    if n <= 0 or (high - low) / n < MIN_GAP:
        return False
    pooled = (high + low) / (2 * n)
    spread = math.sqrt(max(pooled * (1 - pooled) * 2 / n, 0.0))
    return spread == 0 or (high - low) / n / spread >= Z_CRITICAL


def diagnose(result: Any, siblings: Sequence[Any], *, needs_gradient: bool,
             zero_gradient: int | None, loss: str, allow_masking: bool) -> dict[str, Any]:
    """The ``diagnostics`` of ``result`` (an :class:`AttackResult`), given the other results
    of the same model's pass (``siblings``, which may include ``result`` itself), the count
    of its correctly classified samples with a zero cross-entropy gradient (None when it was
    not measured) and the loss its attack ascends (``"ce"``, ``"ce+margin"``, ...). Empty
    when nothing was measured."""
    out: dict[str, Any] = {}
    suspected: list[str] = []
    fails = False
    base = result.clean_correct
    own = "gradient_free" in result.stats  # the attack counted what it could not move itself
    if zero_gradient is not None and base:
        fraction = zero_gradient / base
        out["zero_gradient"] = round(fraction, 6)
        if fraction > ZERO_GRADIENT_LIMIT:
            words = (f"the cross-entropy gradient is exactly zero for {fraction:.1%} of correctly "
                     f"classified samples ({zero_gradient} of {base})")
            if not own and loss.split("+")[0] == "ce":
                fails = True
                words += f", so accuracy {result.accuracy:.3f} is no evidence of robustness"
            elif not own:
                words += f"; this gate ascends loss = {loss} instead"
            suspected.append(words)
    if needs_gradient and own and base:
        fraction = result.stats["gradient_free"] / base
        out["gradient_free"] = round(fraction, 6)
        if fraction > ZERO_GRADIENT_LIMIT:
            suspected.append(f"{result.attack} got no non-zero gradient for {fraction:.1%} of "
                             f"correctly classified samples, which it left standing, so accuracy "
                             f"{result.accuracy:.3f} is no evidence of robustness")
            fails = True
        elif suspected:
            suspected[-1] += (f"; {result.attack} (loss = {loss}) got a non-zero gradient for all "
                              f"but {fraction:.1%} of them")
    if needs_gradient and result.eps is not None:
        for noise in siblings:
            if (noise.attack == "noise" and noise.eps == result.eps and noise.n == result.n
                    and noise.clean_correct == result.clean_correct
                    and significantly_above(result.correct, noise.correct, result.n)):
                gap = (result.correct - noise.correct) / result.n
                out["weaker_than_noise"] = round(gap, 6)
                suspected.append(f"{result.attack} leaves accuracy {result.accuracy:.3f}, above "
                                 f"random noise's {noise.accuracy:.3f} at the same eps")
    if result.eps is not None:
        smaller = [other for other in siblings
                   if other.check == result.check and other.attack == result.attack
                   and other.eps is not None and other.eps < result.eps and other.n == result.n
                   and significantly_above(result.correct, other.correct, result.n)]
        if smaller:
            lowest = min(smaller, key=lambda other: other.correct)
            out["rises_with_eps"] = round((result.correct - lowest.correct) / result.n, 6)
            suspected.append(f"accuracy {result.accuracy:.3f} at eps={result.eps:g} is above "
                             f"{lowest.accuracy:.3f} at the smaller eps={lowest.eps:g}")
    if suspected:
        out["suspected"] = suspected
        out["fails_gate"] = fails and not allow_masking
    return out


def masking_count(stats: dict[str, Any], *, needs_gradient: bool, zero_gradient: int | None,
                  loss: str) -> int | None:
    """The count of correctly classified samples that fails a gate once it exceeds
    :data:`ZERO_GRADIENT_LIMIT` of them, by :func:`diagnose`'s rule: the attack's own
    ``gradient_free`` when it reports one, else the zero cross-entropy gradients of a gate
    that ascends cross-entropy; None when no count can fail the gate. decide-early must
    settle this count before it stops a gate (``tests/test_decide_early.py`` checks that
    the two agree)."""
    own = "gradient_free" in stats
    if needs_gradient and own:
        return int(stats["gradient_free"])
    if not own and zero_gradient is not None and loss.split("+")[0] == "ce":
        return int(zero_gradient)
    return None
