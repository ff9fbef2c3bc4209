"""``--advrobust-examples``: the engine hands out each gate's first flipped samples (checked
against FGSM's closed form on the hand-made model of test_per_class), and the grid is drawn
only for image-shaped inputs, one row per sample."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from project import gate_session, save_torchscript
from test_per_class import CHECKS, EPS, Identity, hand_made_data

pytest.importorskip("matplotlib")


def closed_form_flips(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FGSM on logits = x: -eps on the true feature, +eps on the others; the flipped rows."""
    adversarial = x + EPS * (1 - 2 * np.eye(3, dtype=np.float32)[y])
    return adversarial, np.flatnonzero((x.argmax(1) == y) & (adversarial.argmax(1) != y))


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_the_engine_hands_out_the_first_k_flipped_samples(tmp_path) -> None:
    x, y = hand_made_data()
    adversarial, flipped = closed_form_flips(x, y)
    assert len(flipped) == 3
    save_torchscript(Identity(), tmp_path / "ident.pt")
    session = gate_session(tmp_path, "ident.pt", x, y, checks=CHECKS)
    session.engine.examples = 2
    session.run_all()
    by_attack = {m.attack: m for m in session.engine.measurements}
    assert by_attack["clean"].examples is None  # nothing is attacked, nothing flips
    examples = by_attack["fgsm"].examples
    first = flipped[:2]
    assert examples["index"] == first.tolist()
    assert examples["label"] == y[first].tolist() == examples["clean"]
    assert examples["adversarial"] == adversarial[first].argmax(1).tolist()
    assert torch.equal(examples["x"], torch.from_numpy(x[first]))
    assert torch.allclose(examples["adv"], torch.from_numpy(adversarial[first]), atol=1e-6)
    assert "examples" not in by_attack["fgsm"].to_dict()  # handed out, never serialised


def test_a_grid_has_a_row_per_sample_and_only_images_are_drawn(tmp_path) -> None:
    from pytest_advrobust.report.examples import DPI, HEADER, PANEL, image_layout, write_examples

    rows = 3
    images = torch.rand(rows, 1, 4, 4)
    record = {"index": [4, 9, 11], "label": [0, 1, 2], "clean": [0, 1, 2], "adversarial": [1, 2, 0],
              "x": images, "adv": (images + 0.1).clamp(0, 1)}
    path = write_examples(record, tmp_path / "g.png", title="t", eps=0.1, input_range=(0.0, 1.0))
    assert png_size(path) == (round(3 * PANEL * DPI), round((rows * PANEL + HEADER) * DPI))
    rgb = dict(record, x=torch.rand(rows, 3, 5, 5), adv=torch.rand(rows, 3, 5, 5))
    assert write_examples(rgb, tmp_path / "rgb.png", title="t", eps=None, input_range=(0.0, 1.0))
    flat = dict(record, x=torch.rand(rows, 3), adv=torch.rand(rows, 3))
    assert write_examples(flat, tmp_path / "flat.png", title="t", eps=0.1, input_range=(0.0, 1.0)) is None
    assert not (tmp_path / "flat.png").exists()
    assert [image_layout(s) for s in [(64,), (8, 8), (1, 8, 8), (3, 8, 8), (8, 8, 3), (3,), (10, 3, 8)]] == \
        ["gray", "gray", "chw", "chw", "hwc", None, None]


class FirstThree(torch.nn.Module):
    """4x4 images (16 features, flat); the logits are the first three pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :3] * 1.0


def _project(root, model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> None:
    save_torchscript(model, root / "m.pt")
    np.savez(root / "data.npz", x=x, y=y)
    (root / "pyproject.toml").write_text(
        '[tool.advrobust]\nmodel = "m.pt"\nname = "m"\ndata = "data.npz"\nbatch-size = 4\n' + CHECKS)


def test_examples_option_writes_a_grid_per_attacked_gate(pytester: pytest.Pytester) -> None:
    x3, y = hand_made_data()
    images = np.concatenate([x3, np.full((len(x3), 13), 0.5, np.float32)], axis=1)  # 4x4, flat
    _project(pytester.path, FirstThree(), images, y)
    result = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-examples=ex", "--advrobust-json=r.json",
                                "--advrobust-markdown=out/r.md")
    result.assert_outcomes(passed=2)
    grid = pytester.path / "ex" / "m-fgsm-eps0.1-examples.png"
    assert sorted(p.name for p in (pytester.path / "ex").iterdir()) == [grid.name]  # none for clean
    from pytest_advrobust.report.examples import DPI, HEADER, PANEL

    assert png_size(grid) == (round(3 * PANEL * DPI), round((3 * PANEL + HEADER) * DPI))  # 3 flipped
    fgsm = next(r for r in json.loads((pytester.path / "r.json").read_text())["results"] if r["attack"] == "fgsm")
    assert fgsm["artifacts"] == [str(grid)]
    assert "- [m-fgsm-eps0.1-examples.png](../ex/m-fgsm-eps0.1-examples.png)" in \
        (pytester.path / "out" / "r.md").read_text()  # linked from the Markdown's folder


def test_inputs_that_are_not_images_say_so_and_a_bad_folder_is_refused(pytester: pytest.Pytester) -> None:
    x, y = hand_made_data()
    _project(pytester.path, Identity(), x, y)
    result = pytester.runpytest("-p", "no:cacheprovider", "-v", "--advrobust-examples=ex")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*fgsm eps=0.1 on m: *examples not drawn: inputs of shape (3,) are not images*"])
    assert not (pytester.path / "ex").exists() or not any((pytester.path / "ex").iterdir())
    (pytester.path / "file").write_text("")
    refused = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-examples=file")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*--advrobust-examples=file: * exists and is not a folder*"])
