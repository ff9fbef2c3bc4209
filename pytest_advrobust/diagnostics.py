"""Gradient-masking diagnostics: signs that a gradient attack's figure overstates robustness.

Carlini, Athalye, Papernot, Brendel, Rauber, Tsipras, Goodfellow, Madry & Kurakin, 2019,
"On Evaluating Adversarial Robustness", section 5 (and Athalye, Carlini & Wagner, 2018):
an attack whose gradient is masked reports a model as robust when it is not. The engine's
pass already has what these checks need:

- ``zero_gradient``: the fraction of a gradient gate's correctly classified samples whose
  input gradient of the cross-entropy is exactly zero (the loss is taken in float64, so an
  honest model's gradient is zero only where it truly vanishes: saturated logits,
  non-differentiable preprocessing, dead paths). A gradient attack cannot move such a
  sample, which then counts as robust for free. ``strongest`` counts it for its gradient
  members (``stats["zero_gradient"]``).
- ``gradient_free``: for attacks that report it (``pgd``), the fraction of correctly
  classified samples left standing for which every gradient the attack took, with every
  loss it ran, was exactly zero.
- ``black_box_excess`` and ``black_box_p``: the masking probe. Non-zero gradients can lie
  too (most pixels quantised, a tiny high-frequency ripple, a gradient whose sign is
  mirrored): the engine cross-checks every per-sample gradient gate with a bounded square
  attack (black-box: it needs scores only) at the same eps on a subsample of the same
  samples, and counts, per sample, who fooled it (``stats["probe_*"]``). The excess is
  (samples fooled by square alone - samples fooled by the gate's attack alone) / samples
  probed; p is the one-sided exact sign test (McNemar's, exact) on those discordant pairs:
  :func:`paired_p`. For ``strongest`` the same test compares its square member with its
  gradient members (square ran only on the samples they left standing, so the samples the
  gradient members fooled all count against square: conservative).
- ``weaker_than_noise``: a gradient attack leaves the accuracy higher than random ``noise``
  of the same eps on the same samples (by this much).
- ``weaker_than_black_box``: the same against a black-box gate of the same model and eps
  (square, spsa, transfer or a custom attack that needs no gradient of this model).
- ``rises_with_eps``: within one check, a larger eps leaves a higher accuracy than a
  smaller one (by this much).

**What fails a gate.** A false green is the worst outcome, so a gradient gate fails,
unless the check says ``allow-masking = true``, when

- its own attack could not move more than :data:`ZERO_GRADIENT_LIMIT` of its correctly
  classified samples (``gradient_free`` where the attack reports it, else ``zero_gradient``
  when the attack ascends the cross-entropy; for ``strongest``, those every gradient member
  left standing, when no square member ran): its figure would be the clean accuracy
  dressed as robustness. These are
  deterministic counts, so they cannot flap;
- the masking probe's square fooled significantly more of the samples it probed than the
  gate's attack: at least :data:`MIN_GAP` of them more, and p < :data:`ALPHA` (with no
  sample fooled by the gate alone, that takes 10 samples fooled by square alone: p =
  2^-10; 9 pass). The test is paired on the same samples, computed inside the gate's own
  pass from counts that add up across batches and shards, so serial, xdist and merged
  shards give one verdict, and at p < 0.001 an honest model does not trip it on noise.
  ``strongest``'s own square-versus-gradient test only informs: its figure already
  includes what square fooled.

The comparisons between gates (noise, black-box gates, eps) are unpaired (two accuracies
over finite samples), and a gate's verdict cannot depend on which other gates a run
selects or which process runs them, so they only add "gradient masking suspected" to the
message and the reports: they trip only on a difference of at least :data:`MIN_GAP` that a
one-sided two-proportion z-test puts at p < 0.001 (conservative for the positively
correlated outcomes of two attacks on the same samples).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["ALPHA", "MIN_GAP", "ZERO_GRADIENT_LIMIT", "black_box_beats", "diagnose", "masking_counts",
           "paired_p", "probe_trips", "significantly_above"]

#: more than this fraction of correctly classified samples unmoved fails a gradient gate
ZERO_GRADIENT_LIMIT = 0.05
#: the smallest accuracy difference the statistical checks report
MIN_GAP = 0.02
#: one-sided z for p < 0.001
Z_CRITICAL = 3.090232306167813
#: the paired test's significance level (the masking probe, strongest's square member)
ALPHA = 1e-3
#: discordant pairs up to which :func:`paired_p` sums exact binomial terms (log-space above)
EXACT_PAIRS = 5000


def paired_p(more: int, fewer: int) -> float:
    """One-sided exact sign test (McNemar's test, exact) on discordant pairs: the chance
    that at least ``more`` of ``more + fewer`` pairs fall on one side when each falls on
    either side with probability 1/2. ``more``: samples one attack fooled and the other
    did not; ``fewer``: the reverse."""
    n = more + fewer
    if more <= 0 or n == 0:
        return 1.0
    if n <= EXACT_PAIRS:  # integers, then one correctly rounded division
        return sum(math.comb(n, k) for k in range(more, n + 1)) / 2 ** n
    logs = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
            for k in range(more, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


def black_box_beats(more: int, fewer: int, samples: int) -> bool:
    """Whether a black-box attack that fooled ``more`` samples the gradient attack did not
    (and missed ``fewer`` that it fooled), on ``samples`` paired samples, fooled
    significantly more: by at least :data:`MIN_GAP` of them and at p < :data:`ALPHA`."""
    return samples > 0 and more - fewer >= MIN_GAP * samples and paired_p(more, fewer) < ALPHA


def significantly_above(high: int, low: int, n: int) -> bool:
    """Whether ``high / n`` exceeds ``low / n`` by at least :data:`MIN_GAP` and by a
    one-sided two-proportion z-test at p < 0.001 (conservative for paired samples)."""
    if n <= 0 or (high - low) / n < MIN_GAP:
        return False
    pooled = (high + low) / (2 * n)
    spread = math.sqrt(max(pooled * (1 - pooled) * 2 / n, 0.0))
    return spread == 0 or (high - low) / n / spread >= Z_CRITICAL


def diagnose(result: Any, siblings: Sequence[Any], *, needs_gradient: bool,
             zero_gradient: int | None, loss: str, allow_masking: bool,
             black_box: Sequence[Any] = ()) -> dict[str, Any]:
    """The ``diagnostics`` of ``result`` (an :class:`AttackResult`), given the other results
    of the same model's pass (``siblings``, which may include ``result`` itself), the count
    of its correctly classified samples with a zero cross-entropy gradient (None when it was
    not measured), the loss its attack ascends (``"ce"``, ``"ce+margin"``, ...) and, for a
    per-sample gradient gate, the model's gates of attacks that need no gradient of it
    (``black_box``). Empty when nothing was measured."""
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
    if needs_gradient:
        fails |= _probe(result, out, suspected)
    fails |= _members(result, out, suspected, base)
    if needs_gradient and result.eps is not None:
        for other in black_box:
            if (other.eps == result.eps and other.n == result.n
                    and other.clean_correct == result.clean_correct
                    and significantly_above(result.correct, other.correct, result.n)):
                gap = (result.correct - other.correct) / result.n
                out["weaker_than_black_box"] = max(out.get("weaker_than_black_box", 0.0), round(gap, 6))
                suspected.append(f"{other.attack} (no gradient needed) leaves accuracy "
                                 f"{other.accuracy:.3f}, below {result.attack}'s {result.accuracy:.3f} "
                                 "at the same eps")
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


def _probe(result: Any, out: dict[str, Any], suspected: list[str]) -> bool:
    """The masking probe's paired test (see the module docstring); True when it trips."""
    stats = result.stats
    samples = int(stats.get("probe_samples", 0))
    if not samples:
        return False
    more, fewer = int(stats.get("probe_fooled_only", 0)), int(stats.get("probe_gate_only", 0))
    p = paired_p(more, fewer)
    out["black_box_excess"] = round((more - fewer) / samples, 6)
    out["black_box_p"] = float(f"{p:.3g}")
    if not black_box_beats(more, fewer, samples):
        return False
    gate, square = (stats.get(key, 0) / samples for key in ("probe_gate_correct", "probe_correct"))
    suspected.append(
        f"square fooled {more - fewer} more samples (accuracy {gate:.3f} "
        f"vs {square:.3f} on the {samples} samples the masking "
        f"probe attacked at the same eps without gradients: {more} fooled by square alone, "
        f"{fewer} by {result.attack} alone, one-sided exact test p = {p:.1e}), so accuracy "
        f"{result.accuracy:.3f} overstates robustness")
    return True


def _members(result: Any, out: dict[str, Any], suspected: list[str], base: int) -> bool:
    """An ensemble's own gradient members against its square member (``strongest``'s
    ``fooled_by_<member>`` and ``zero_gradient`` statistics): informative, except that
    zero gradients fail it when no square member ran. True when it fails the gate."""
    stats = result.stats
    if "fooled_by_square" not in stats or not base:
        return False
    square = int(stats["fooled_by_square"])
    gradient = sum(int(value) for key, value in stats.items()
                   if key.startswith("fooled_by_") and key != "fooled_by_square")
    fails = False
    zero = stats.get("zero_gradient")
    if zero is not None:
        fraction = int(zero) / base
        out["zero_gradient"] = round(fraction, 6)
        if fraction > ZERO_GRADIENT_LIMIT:
            words = (f"the cross-entropy gradient is exactly zero for {fraction:.1%} of correctly "
                     f"classified samples ({int(zero)} of {base}), so {result.attack}'s gradient "
                     "members could not move them")
            standing = int(stats.get("zero_gradient_standing", 0))
            if stats.get("queries", 0):
                words += "; its square member (no gradient needed) attacked them too"
            elif standing / base > ZERO_GRADIENT_LIMIT:
                fails = True
                words += (f"; {standing} of them were left standing by every gradient member and no "
                          f"square member ran (square-queries = 0), so accuracy {result.accuracy:.3f} "
                          "is no evidence of robustness")
            else:
                words += ("; its gradient members that ascend another loss moved all but "
                          f"{standing} of them")
            suspected.append(words)
    if square:
        p = paired_p(square, gradient)
        out["black_box_excess"] = round((square - gradient) / base, 6)
        out["black_box_p"] = float(f"{p:.3g}")
        if black_box_beats(square, gradient, base):
            suspected.append(f"its square member fooled {square} samples its gradient members left "
                             f"standing, more than the {gradient} they fooled (one-sided exact test "
                             f"p = {p:.1e}): the gradients are masked, and its accuracy "
                             f"{result.accuracy:.3f} rests on square")
    return fails


def masking_counts(stats: dict[str, Any], *, needs_gradient: bool, zero_gradient: int | None,
                   loss: str) -> tuple[int, ...]:
    """The counts of correctly classified samples that fail a gate once one exceeds
    :data:`ZERO_GRADIENT_LIMIT` of them, by :func:`diagnose`'s rules: the attack's own
    ``gradient_free`` when it reports one, else the zero cross-entropy gradients of a gate
    that ascends cross-entropy; and for ``strongest`` without a square member
    (``queries`` = 0), the zero-gradient samples every gradient member left standing. Empty
    when no count can fail the gate. decide-early must settle these counts before it stops
    a gate (``tests/test_decide_early_rule.py`` checks that the two agree); the masking probe's
    paired test is :func:`probe_trips`."""
    counts: list[int] = []
    own = "gradient_free" in stats
    if needs_gradient and own:
        counts.append(int(stats["gradient_free"]))
    if not own and zero_gradient is not None and loss.split("+")[0] == "ce":
        counts.append(int(zero_gradient))
    if "fooled_by_square" in stats and stats.get("zero_gradient") is not None \
            and not stats.get("queries", 0):
        counts.append(int(stats.get("zero_gradient_standing", 0)))
    return tuple(counts)


def probe_trips(stats: dict[str, Any]) -> bool:
    """Whether the masking probe's paired test fails the gate whose statistics are
    ``stats`` (False when the probe did not run): :func:`diagnose`'s rule."""
    samples = int(stats.get("probe_samples", 0))
    return bool(samples) and black_box_beats(int(stats.get("probe_fooled_only", 0)),
                                             int(stats.get("probe_gate_only", 0)), samples)
