"""The judge's words: a passing gate says which bound it kept, with the comparison it made."""

from __future__ import annotations

from pytest_advrobust.gate import judge
from pytest_advrobust.results import AttackResult


def test_a_passing_message_says_greater_or_equal_not_within() -> None:
    result = AttackResult(model="mlp", attack="fgsm", eps=0.1, correct=861, clean_correct=950,
                          n=1000, min_accuracy=0.3, max_drop=0.2)
    verdict = judge(result)
    assert verdict.passed
    assert verdict.message.startswith("fgsm eps=0.1 on mlp: accuracy 0.861 >= min-accuracy 0.300, "
                                      "drop 0.089 <= max-drop 0.200 (n=1000, clean 0.950")
    assert "within" not in verdict.message
