"""Random configs and arrays never produce anything but a clear error or a valid result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pytest_advrobust.config import MODEL_KEYS, AttackOptions, RobustnessConfig, parse_config
from pytest_advrobust.errors import ConfigError, DataError

ATTACKS = {"clean": AttackOptions(uses_eps=False), "fgsm": AttackOptions(),
           "universal": AttackOptions(options={"fit-samples": 256, "step-size": float})}
KEYS = sorted(MODEL_KEYS | {"models", "attack", "eps", "min-accuracy", "max-drop", "fit-samples",
                            "step-size", "mean", "std"})

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.floats(allow_nan=True),
                    st.sampled_from(["fgsm", "clean", "universal", "m.onnx", "pkg.mod:f", "d.npz", "auto",
                                     "logits", "", "x"]),
                    st.text(max_size=8))
toml_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)),
    max_leaves=20)


def plausible_table():
    check = st.fixed_dictionaries({"attack": st.sampled_from(["clean", "fgsm", "universal", "pgdx"])},
                                  optional={"eps": toml_values, "min-accuracy": toml_values,
                                            "max-drop": toml_values, "fit-samples": toml_values})
    return st.fixed_dictionaries(
        {"model": st.sampled_from(["m.onnx", "pkg.mod:build", "m.pt2", "m.h5", ""]),
         "data": st.sampled_from(["d.npz", "pkg.d:load", "d.csv"])},
        optional={"checks": st.lists(check, max_size=3), "input-range": toml_values,
                  "batch-size": toml_values, "normalize": toml_values, "seed": toml_values,
                  "models": st.dictionaries(st.sampled_from(["a", "b"]), toml_values, max_size=2),
                  "device": toml_values, "weights": toml_values})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(toml_values, plausible_table()))
def test_config_parser_gives_a_config_or_a_config_error(table) -> None:
    try:
        config = parse_config(table, path=Path("pyproject.toml"), attacks=ATTACKS)
    except ConfigError as exc:
        assert "pyproject.toml" in str(exc) and len(str(exc)) < 2000
    else:
        assert isinstance(config, RobustnessConfig) and config.models
        for spec in config.models:
            assert spec.checks and spec.input_range[0] < spec.input_range[1]
            for check in spec.checks:
                assert all(0 <= e <= spec.input_range[1] - spec.input_range[0] for e in check.eps)




@pytest.mark.filterwarnings("ignore::pytest_advrobust.errors.AdvRobustWarning")  # constant arrays
@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8]),
                    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)),
       y=hnp.arrays(dtype=st.sampled_from([np.int64, np.int32, np.float32, np.bool_]),
                    shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=5)),
       batch_size=st.integers(1, 4))
def test_data_loader_gives_batches_or_a_data_error(tmp_path_factory, x, y, batch_size) -> None:
    import torch

    from pytest_advrobust.config import ModelSpec
    from pytest_advrobust.data import EvalData

    folder = tmp_path_factory.mktemp("npz")
    np.savez(folder / "d.npz", x=x, y=y)
    spec = ModelSpec(name="m", model="m.onnx", data="d.npz", root=folder, source=folder / "pyproject.toml",
                     batch_size=batch_size)
    try:
        batches = list(EvalData(spec).batches(batch_size, torch.float32))
    except DataError as exc:
        assert "d.npz" in str(exc) or "data" in str(exc)
    else:
        assert sum(len(b.y) for b in batches) == len(y) > 0
        assert all(b.x.dtype == torch.float32 and b.y.dtype == torch.int64 for b in batches)
        # input-range is enforced with a tolerance of 1e-6 of its width, on both sides
        assert all(torch.isfinite(b.x).all() and b.x.min() >= -1e-6 and b.x.max() <= 1 + 1e-6 for b in batches)
