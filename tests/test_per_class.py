"""Per-class robust accuracy, exact, on a hand-made model: logits = the input itself (3
features, 3 classes). FGSM's gradient sign is then -1 on the true class's feature and +1 on
the others, so at eps (no clipping) a correctly classified sample flips exactly when its
margin over the runner-up is below 2 * eps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from project import gate_session, save_torchscript
from pytest_advrobust.report.markdown import to_markdown
from pytest_advrobust.report.pipeline import RunRecord

EPS = 0.1
#: per class: the margin of each sample's true feature over the others (None: the sample is
#: wrong when clean, another feature being 0.2 above it)
MARGINS = {0: [0.5, 0.1, 0.3, None], 1: [0.05, 0.15, 0.25], 2: [0.35, None, None]}
#: per class: [n, clean correct, correct under FGSM at EPS], counted by hand from MARGINS
EXPECTED = {0: [4, 3, 2], 1: [3, 3, 1], 2: [3, 1, 1]}
CHECKS = f'''
[[tool.advrobust.checks]]
attack = "clean"
report-only = true

[[tool.advrobust.checks]]
attack = "fgsm"
eps = {EPS}
report-only = true
'''


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def hand_made_data() -> tuple[np.ndarray, np.ndarray]:
    rows, labels = [], []
    for label, margins in MARGINS.items():
        for margin in margins:
            x = np.full(3, 0.4, np.float32)
            if margin is None:
                x[(label + 1) % 3] = 0.6
            else:
                x[label] += margin
            rows.append(x)
            labels.append(label)
    order = np.random.default_rng(0).permutation(len(rows))  # classes interleaved in the data
    return np.stack(rows)[order], np.array(labels, dtype=np.int64)[order]


def _per_class(rows: list[dict]) -> dict[int, list[int]]:
    return {row["label"]: [row["n"], row["clean_correct"], row["correct"]] for row in rows}


def test_per_class_counts_are_exact(tmp_path) -> None:
    x, y = hand_made_data()
    save_torchscript(Identity(), tmp_path / "ident.pt")
    results = gate_session(tmp_path, "ident.pt", x, y, checks=CHECKS).run_all()
    clean, fgsm = results
    assert _per_class(fgsm.per_class) == EXPECTED
    assert _per_class(clean.per_class) == {label: [n, ok, ok] for label, (n, ok, _) in EXPECTED.items()}
    assert (fgsm.n, fgsm.clean_correct, fgsm.correct) == (10, 7, 4)
    assert fgsm.to_dict()["per_class"][1] == {"label": 1, "n": 3, "clean_correct": 3, "correct": 1}


def test_markdown_names_the_classes_that_fall_most_and_tables_them(tmp_path) -> None:
    x, y = hand_made_data()
    save_torchscript(Identity(), tmp_path / "ident.pt")
    results = gate_session(tmp_path, "ident.pt", x, y, checks=CHECKS).run_all()
    text = to_markdown(RunRecord(results))
    # class 1 falls 1.000 -> 0.333, class 0 0.750 -> 0.500; class 2 does not fall
    assert "- `fgsm eps=0.1 on ident`: class 1 1.000 -> 0.333 (n=3); class 0 0.750 -> 0.500 (n=4)\n" in text
    table = text.split("<details><summary>Per-class accuracy under attack: ident</summary>", 1)[1]
    assert table.split("</details>")[0].strip().splitlines() == [
        "| class | n | clean | fgsm eps=0.1 |", "|---|---|---|---|",
        "| 0 | 4 | 0.750 | 0.500 |", "| 1 | 3 | 1.000 | 0.333 |", "| 2 | 3 | 0.333 | 0.333 |"]


def test_the_json_report_carries_per_class_counts(pytester: pytest.Pytester) -> None:
    x, y = hand_made_data()
    save_torchscript(Identity(), pytester.path / "ident.pt")
    np.savez(pytester.path / "data.npz", x=x, y=y)
    (pytester.path / "pyproject.toml").write_text(
        '[tool.advrobust]\nmodel = "ident.pt"\ndata = "data.npz"\nbatch-size = 3\n' + CHECKS)
    pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json=r.json", "--advrobust-markdown=r.md"
                       ).assert_outcomes(passed=2)
    fgsm = next(r for r in json.loads((pytester.path / "r.json").read_text())["results"] if r["attack"] == "fgsm")
    assert _per_class(fgsm["per_class"]) == EXPECTED
    assert "class 1 1.000 -> 0.333 (n=3)" in (pytester.path / "r.md").read_text()
