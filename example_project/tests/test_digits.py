"""Hand-written robustness tests next to the configured gates, through the fixture."""

import numpy as np
import pytest

from digits_demo import data


def test_evaluation_split_is_in_range():
    x, y = data.test_set()
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(np.unique(y)) == set(range(10))


def test_adversarial_directions_are_not_noise(advrobust):
    """The seed's point: the same L-inf budget hurts far more along sign(gradient)."""
    fgsm = advrobust.fgsm(eps=0.1)
    noise = advrobust.noise(eps=0.1)
    assert noise.accuracy - fgsm.accuracy > 0.3


@pytest.mark.advrobust(model="mlp-onnx")
def test_onnx_export_is_as_robust_as_the_torch_model(advrobust, request):
    onnx = advrobust.fgsm(eps=0.05)
    assert onnx.model == "mlp-onnx"
    assert abs(onnx.clean_accuracy - 0.97) < 0.03
