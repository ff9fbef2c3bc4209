"""``--advrobust-examples DIR``: the adversarial examples themselves, for image inputs.

One PNG per gate: a row per flipped sample (classified right when clean, wrong under
attack; the first ones in data order), with the clean input, the attacked input and the
perturbation between them, each titled with the sample's index, label and predictions.
The engine hands the samples out with the gate's measurement; the process that measured
the gate draws them (matplotlib, the ``plots`` extra).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy and matplotlib load when a grid is drawn: the plugin imports COUNT
    import numpy as np

__all__ = ["COUNT", "DPI", "HEADER", "PANEL", "image_layout", "write_examples"]

#: how many flipped samples each gate's grid shows (at most)
COUNT = 8
#: the grid's geometry: each panel PANEL x PANEL inches, a HEADER-inch title, at DPI
PANEL = 2.0
HEADER = 0.6
DPI = 100


def image_layout(shape: tuple[int, ...]) -> str | None:
    """How one input of ``shape`` is drawn: ``gray`` (H x W, or a flat square), ``chw`` /
    ``hwc`` (1 or 3 channels first / last); None when it is not an image."""
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        return "gray" if side > 1 and side * side == shape[0] else None
    if len(shape) == 2:
        return "gray" if min(shape) > 1 else None
    if len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) > 1:
        return "chw"
    if len(shape) == 3 and shape[2] in (1, 3) and min(shape[:2]) > 1:
        return "hwc"
    return None


def _picture(sample: "np.ndarray", layout: str) -> "np.ndarray":
    """H x W (one channel) or H x W x 3."""
    import numpy as np

    if layout == "gray":
        return sample.reshape(math.isqrt(sample.size), -1) if sample.ndim == 1 else sample
    image = np.transpose(sample, (1, 2, 0)) if layout == "chw" else sample
    return image[..., 0] if image.shape[2] == 1 else image


def write_examples(examples: dict[str, Any], path: Path, *, title: str, eps: float | None,
                   input_range: tuple[float, float]) -> Path | None:
    """Draw ``examples`` (the engine's record: ``index``, ``label``, ``clean``,
    ``adversarial`` lists and ``x``, ``adv`` tensors) into ``path``; None when the inputs are
    not images."""
    import numpy as np

    from .files import atomic_write

    x = np.asarray(examples["x"].numpy(), dtype=np.float64)
    adv = np.asarray(examples["adv"].numpy(), dtype=np.float64)
    layout = image_layout(x.shape[1:])
    if layout is None:
        return None
    from .plots import pyplot

    plt = pyplot()
    low, high = input_range
    rows = len(x)
    bound = eps or float(np.abs(adv - x).max()) or 1.0
    figure, axes = plt.subplots(rows, 3, figsize=(3 * PANEL, rows * PANEL + HEADER), dpi=DPI,
                                squeeze=False)
    try:
        for i in range(rows):
            clean, attacked = _picture(x[i], layout), _picture(adv[i], layout)
            delta = attacked - clean
            colour = clean.ndim == 3
            scale = (lambda image: np.clip((image - low) / (high - low), 0, 1)) if colour else (lambda image: image)
            shown = {"cmap": None} if colour else {"cmap": "gray", "vmin": low, "vmax": high}
            axes[i, 0].imshow(scale(clean), **shown)
            axes[i, 0].set_title(f"sample {examples['index'][i]}: label {examples['label'][i]}, "
                                 f"predicted {examples['clean'][i]}", fontsize=7)
            axes[i, 1].imshow(scale(attacked), **shown)
            axes[i, 1].set_title(f"attacked: predicted {examples['adversarial'][i]}", fontsize=7)
            if colour:
                axes[i, 2].imshow(np.clip(delta / (2 * bound) + 0.5, 0, 1))
            else:
                axes[i, 2].imshow(delta, cmap="RdBu_r", vmin=-bound, vmax=bound)
            axes[i, 2].set_title(f"perturbation (±{bound:g})", fontsize=7)
            for axis in axes[i]:
                axis.set_xticks([])
                axis.set_yticks([])
        figure.suptitle(title, fontsize=9)
        figure.tight_layout(rect=(0, 0, 1, 1 - HEADER / (rows * PANEL + HEADER)))
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    finally:
        plt.close(figure)


def examples_path(folder: Path, stem: str) -> Path:
    """Where a gate's grid goes: ``folder/STEM-examples.png`` (a name the config cannot steer
    outside ``folder``)."""
    from .artifacts import inside

    return inside(folder, f"{stem}-examples.png")
