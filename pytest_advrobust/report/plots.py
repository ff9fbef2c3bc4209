"""``--advrobust-plots DIR``: PNGs a reviewer can read (matplotlib, the ``plots`` extra).

Per model: robustness curves (accuracy against eps per attack, 95% bands, each gate's
threshold, clean accuracy as a reference line), the fitted universal perturbation(s), and
the linearity plot.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from ..errors import AdvRobustError
from ..results import AttackResult
from .artifacts import inside, render_perturbation
from .files import atomic_write

if TYPE_CHECKING:
    from ..linearity import LinearityCurves

__all__ = ["PlotsUnavailable", "pyplot", "write_plots", "robustness_curves", "perturbation_images",
           "linearity_plot", "threshold_floor", "curves_figure"]

#: fixed colours, so FGSM and its noise baseline look the same in every project
COLOURS = {"fgsm": "tab:red", "noise": "tab:blue", "universal": "tab:green", "pgd": "tab:purple"}


class PlotsUnavailable(AdvRobustError):
    """``--advrobust-plots`` without matplotlib installed."""

    kind = "plots unavailable"


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or :class:`PlotsUnavailable`."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotsUnavailable("--advrobust-plots needs matplotlib, which is not installed. "
                               "Install the extra: pip install pytest-advrobust[plots]") from None
    return plt


def write_plots(results: Iterable[AttackResult], folder: Path, *,
                linearity: Callable[[str], "LinearityCurves"] | None = None) -> tuple[list[Path], list[str]]:
    """Every plot for a run: curves, perturbations and (per model, when ``linearity`` gives
    curves) the linearity plot. Returns the PNGs written and, in words, what was skipped."""
    results = list(results)
    written = robustness_curves(results, folder) + perturbation_images(results, folder)
    problems = []
    if linearity is not None:
        for model in sorted({r.model for r in results}):
            try:
                curves = linearity(model)
            except AdvRobustError as exc:
                problems.append(f"linearity plot of {model}: {exc}")
                continue
            written.append(linearity_plot(curves, inside(folder, f"{_safe(model)}-linearity.png"), model=model))
    return written, problems


def robustness_curves(results: Iterable[AttackResult], folder: Path) -> list[Path]:
    """One ``MODEL-robustness.png`` per model with an eps-taking attack: accuracy against
    eps per attack, 95% bands, and each gate's threshold (its floor: the higher of
    min-accuracy and clean accuracy minus max-drop) as a bar in the curve's colour; a gate
    that failed is crossed out. A check measured at several eps is a line starting at eps 0
    from the same samples' clean accuracy; one measured at one eps is a point with its
    interval, never a line (only that eps was measured)."""
    plt = pyplot()
    by_model: dict[str, list[AttackResult]] = defaultdict(list)
    for r in results:
        by_model[r.model].append(r)
    written = []
    for model, rows in sorted(by_model.items()):
        figure = curves_figure(model, rows)
        if figure is None:
            continue
        try:
            written.append(_save(figure, inside(folder, f"{_safe(model)}-robustness.png")))
        finally:
            plt.close(figure)
    return written


def curves_figure(model: str, rows: list[AttackResult]) -> Any:
    """The robustness curves of one model's results (a matplotlib figure; the caller closes
    it), or None when no attack of it takes an eps."""
    plt = pyplot()
    curves: dict[str, list[AttackResult]] = defaultdict(list)
    for r in rows:
        if r.eps is not None:
            curves[_curve_name(r)].append(r)
    if not curves:
        return None
    clean = next((r.clean_accuracy for r in rows if r.attack == "clean"), rows[0].clean_accuracy)
    figure, axis = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    axis.axhline(clean, color="black", linestyle="--", linewidth=1, label=f"clean accuracy {clean:.3f}")
    thresholds = False
    for name, points in sorted(curves.items(), key=lambda item: _order(item[0])):
        points.sort(key=lambda r: r.eps)
        colour = COLOURS.get(points[0].attack)
        if len(points) == 1:  # one eps measured: a point and its interval
            r = points[0]
            low, high = r.interval
            drawn = axis.errorbar([r.eps], [r.accuracy], yerr=[[r.accuracy - low], [high - r.accuracy]],
                                  fmt="o", color=colour, capsize=4, label=f"{name} (one eps)")
            colour = drawn.lines[0].get_color()
        else:
            eps = [0.0] + [r.eps for r in points]
            acc = [points[0].clean_accuracy] + [r.accuracy for r in points]
            low = [points[0].clean_accuracy] + [r.interval[0] for r in points]
            high = [points[0].clean_accuracy] + [r.interval[1] for r in points]
            colour = axis.plot(eps, acc, marker="o", color=colour, label=name)[0].get_color()
            axis.fill_between(eps, low, high, color=colour, alpha=0.18, linewidth=0)
        for r in points:
            floor = threshold_floor(r)
            if floor is not None:
                axis.plot([r.eps], [floor], marker="_", markersize=22, markeredgewidth=2.5,
                          color=colour, linestyle="none", gid="threshold")
                thresholds = True
            if r.status == "failed":
                axis.plot([r.eps], [r.accuracy], marker="x", color="black", markersize=9)
    if thresholds:  # one legend entry for every gate's bar
        axis.plot([], [], marker="_", markersize=16, markeredgewidth=2.5, color="grey",
                  linestyle="none", label="threshold of the gate (min-accuracy / max-drop)")
    axis.set_xlabel("eps (L-inf, input units)")
    axis.set_ylabel("accuracy")
    axis.set_ylim(-0.02, 1.02)
    largest = max(r.eps for points in curves.values() for r in points)
    axis.set_xlim(left=0, right=1.08 * largest if largest > 0 else None)
    axis.grid(alpha=0.3)
    axis.set_title(f"{model}: accuracy under attack (bands: 95% Wilson interval)", fontsize=10)
    axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    return figure


def threshold_floor(r: AttackResult) -> float | None:
    """The lowest accuracy ``r``'s gate accepts: min-accuracy and clean accuracy minus
    max-drop, whichever is higher; None for a gate without a threshold (report-only)."""
    floors = [f for f in (r.min_accuracy, None if r.max_drop is None else r.clean_accuracy - r.max_drop)
              if f is not None]
    return max(floors) if floors and not r.report_only else None


def perturbation_images(results: Iterable[AttackResult], folder: Path) -> list[Path]:
    """Each fitted perturbation the engine saved (``.npy`` artifacts) drawn as an image."""
    pyplot()
    written = []
    for r in results:
        for artifact in r.artifacts:
            if not artifact.endswith(".npy") or not Path(artifact).is_file():
                continue
            delta = np.load(artifact)
            target = inside(folder, f"{_safe(Path(artifact).stem)}.png")  # the artifact's unique stem
            title = (f"{r.attack} perturbation on {r.model}, eps={r.eps:g}\n"
                     f"accuracy {r.accuracy:.3f} (clean {r.clean_accuracy:.3f})")
            if render_perturbation(delta, target, title=title, any_shape=True):
                written.append(target)
    return written


def linearity_plot(curves: "LinearityCurves", path: Path, *, model: str) -> Path:
    """Class scores along the FGSM direction (left) and a random sign direction (right),
    one row per sample; the true class is drawn thick."""
    plt = pyplot()
    samples, _, classes = curves.fgsm.shape
    figure, axes = plt.subplots(samples, 2, figsize=(9.2, 2.4 * samples + 0.6), dpi=100,
                                sharex=True, squeeze=False)
    try:
        colours = plt.get_cmap("tab10" if classes <= 10 else "tab20")
        for i in range(samples):
            label = int(curves.labels[i])
            shared = (min(curves.fgsm[i].min(), curves.random[i].min()),
                      max(curves.fgsm[i].max(), curves.random[i].max()))
            pad = 0.05 * (shared[1] - shared[0] or 1.0)
            for j, (name, data) in enumerate((("FGSM direction sign(grad)", curves.fgsm),
                                              ("random sign direction", curves.random))):
                axis = axes[i, j]
                for c in range(classes):
                    axis.plot(curves.eps, data[i, :, c], color=colours(c % colours.N),
                              linewidth=2.6 if c == label else 1.0)
                axis.axvline(0, color="grey", linewidth=0.8, linestyle=":")
                axis.set_ylim(shared[0] - pad, shared[1] + pad)
                axis.grid(alpha=0.3)
                axis.set_title(f"sample {i} (label {label}): {name}", fontsize=9)
                if j == 0:
                    axis.set_ylabel(curves.output_kind, fontsize=9)
        for axis in axes[-1]:
            axis.set_xlabel("eps (step along the direction, input units)")
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=colours(c % colours.N), linewidth=1.5) for c in range(classes)]
        figure.legend(handles, [f"class {c}" for c in range(classes)], loc="center right",
                      ncol=1 if classes <= 20 else 2, fontsize=8, frameon=False,
                      title="thick: true class", title_fontsize=8)
        figure.suptitle(f"{model}: class scores along a line through the input (not clipped)",
                        fontsize=10)
        figure.tight_layout(rect=(0, 0, 0.86, 0.97))
        return _save(figure, path)
    finally:
        plt.close(figure)


def _curve_name(r: AttackResult) -> str:
    options = ", ".join(f"{k}={v}" for k, v in sorted(r.options.items()))
    return r.attack + (f" ({options})" if options else "")


def _order(name: str) -> tuple[int, str]:
    """FGSM first, noise beside it, then the rest by name."""
    first = {"fgsm": 0, "noise": 1}
    return first.get(name.split(" ")[0], 2), name


def _safe(name: str) -> str:
    """A file-name part for ``name``: itself when it follows the model-name rule, else a
    cleaned form plus a hash of the original, so two names never share a file."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) and ".." not in name:
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "model"
    return f"{cleaned[:60]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _save(figure: Any, path: Path) -> Path:
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
