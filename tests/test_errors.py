"""Every bad input gets a one-paragraph error naming the file or key and the fix."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from conftest import LinearNet, export_onnx
from project import gate_session, save_torchscript, train_blob_model, write_project
from pytest_advrobust.errors import DataError, ModelLoadError


@pytest.fixture
def task():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 6)).astype(np.float32)
    x = rng.uniform(0, 1, size=(50, 6)).astype(np.float32)
    return w, x, (x @ w.T).argmax(1).astype(np.int64)


def run(session):
    return session.run_all()


class Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_missing_model_file(tmp_path, task) -> None:
    w, x, y = task
    with pytest.raises(ModelLoadError, match=r"absent.pt: file not found. Check the model key"):
        run(gate_session(tmp_path, "absent.pt", x, y))


@pytest.mark.parametrize("suffix", [".pt", ".onnx", ".pt2"])
def test_corrupt_model_file(tmp_path, task, suffix) -> None:
    w, x, y = task
    (tmp_path / f"broken{suffix}").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match=rf"broken\{suffix}: .*(not a TorchScript|not a readable ONNX|not a torch.export)"):
        run(gate_session(tmp_path, f"broken{suffix}", x, y))


def test_onnx_failing_the_checker(tmp_path, task) -> None:
    import onnx
    from onnx import TensorProto, helper

    w, x, y = task
    node = helper.make_node("Relu", ["undefined_input"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "bad.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match=r"bad.onnx: fails onnx.checker"):
        run(gate_session(tmp_path, "bad.onnx", x, y))


def test_onnx_external_data_outside_the_model_folder_is_refused(tmp_path, task) -> None:
    import onnx

    w, x, y = task
    (tmp_path / "models").mkdir()
    export_onnx(LinearNet(w, np.zeros(3, np.float32)), torch.zeros(1, 6), tmp_path / "models" / "m.onnx")
    proto = onnx.load(tmp_path / "models" / "m.onnx")
    tensor = proto.graph.initializer[0]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    (tmp_path / "models" / "m.onnx").write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match=r"outside the model's folder"):
        run(gate_session(tmp_path, "models/m.onnx", x, y))


def test_pickle_payload_in_weights_never_runs(tmp_path, task) -> None:
    w, x, y = task
    marker = tmp_path / "pwned"
    (tmp_path / "evilmodel.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(6, 3)\n")
    with open(tmp_path / "weights.pt", "wb") as handle:
        pickle.dump({"weight": Payload(marker)}, handle)
    with pytest.raises(ModelLoadError, match=r"weights_only=True"):
        run(gate_session(tmp_path, "evilmodel:build", x, y, extra='weights = "weights.pt"\n'))
    torch.save({"model": Payload(marker)}, tmp_path / "whole.pt")
    with pytest.raises(ModelLoadError, match=r"refused by default.*allow-pickle = true"):
        run(gate_session(tmp_path, "whole.pt", x, y))
    assert not marker.exists()


def test_wrong_input_shape_names_the_shapes(tmp_path, task) -> None:
    w, x, y = task
    save_torchscript(LinearNet(w, np.zeros(3, np.float32)), tmp_path / "m.pt")
    with pytest.raises(ModelLoadError, match=r"rejected a batch of shape \(50, 4\)"):
        run(gate_session(tmp_path, "m.pt", x[:, :4], y))
    export_onnx(LinearNet(w, np.zeros(3, np.float32)), torch.zeros(1, 6), tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match=r"onnxruntime rejected a batch of shape \(50, 4\)"):
        run(gate_session(tmp_path, "m.onnx", x[:, :4], y))


@pytest.mark.parametrize("mutate, message", [
    (lambda x, y: (x, y + 5), r"label is [5-7] .* model scores 3 classes"),
    (lambda x, y: (x, -y - 1), r"labels must be class indices >= 0"),
    (lambda x, y: (x, y.astype(np.float32)), r"1-D integer array"),
    (lambda x, y: (x, np.eye(3)[y].astype(np.int64)), r"1-D integer array .*not one-hot"),
    (lambda x, y: ((x * 255).astype(np.uint8), y), r"dtype uint8; they must be floats"),
    (lambda x, y: (x[:0], y[:0]), r"the data is empty"),
    (lambda x, y: (x, y[:10]), r"has 50 inputs but 10 labels"),
    (lambda x, y: (np.where(np.arange(6) == 2, np.nan, x).astype(np.float32), y), r"inputs hold NaN or inf \(50 samples"),
    (lambda x, y: (x * 2, y), r"inputs range over \[0.*, 1.99.*\] .* but input-range is \[0, 1\]\. eps "
                              r"and clipping act in input-range units.*give eps in those units too"),
    (lambda x, y: (np.round(x * 255).astype(np.float32), y),
     r"input-range is \[0, 1\]\. The data looks like 8-bit pixel values \(0-255\): divide by 255 in "
     r"the loader .*eps = 0\.1 is 25\.5 of 255 grey levels\)\. Setting input-range = \[0, 255\] "
     r"instead would make eps = 0\.1 a tenth of one grey level"),
])
def test_bad_data(tmp_path, task, mutate, message) -> None:
    w, x, y = task
    save_torchscript(LinearNet(w, np.zeros(3, np.float32)), tmp_path / "m.pt")
    bad_x, bad_y = mutate(x, y)
    with pytest.raises(DataError, match=message) as info:
        run(gate_session(tmp_path, "m.pt", bad_x, bad_y))
    assert "data" in str(info.value)


def test_nan_outputs(tmp_path, task) -> None:
    w, x, y = task
    save_torchscript(LinearNet(np.full_like(w, np.nan), np.zeros(3, np.float32)), tmp_path / "m.pt")
    with pytest.raises(ModelLoadError, match=r"NaN or inf scores for 50 of 50 inputs"):
        run(gate_session(tmp_path, "m.pt", x, y))


def test_loader_missing_or_raising(tmp_path, task) -> None:
    w, x, y = task
    save_torchscript(LinearNet(w, np.zeros(3, np.float32)), tmp_path / "m.pt")
    (tmp_path / "loaders_a.py").write_text("def broken():\n    raise IOError('disk gone')\n")
    cases = {"loaders_a:broken": r"the data loader raised OSError: disk gone",
             "loaders_a:absent": r"module 'loaders_a' has no attribute 'absent'",
             "no_such_module_xyz:load": r"cannot import module 'no_such_module_xyz'"}
    for ref, message in cases.items():
        session = gate_session(tmp_path, "m.pt", x, y)
        object.__setattr__(session.spec(), "data", ref)
        with pytest.raises(DataError, match=message):
            run(session)


def test_gate_errors_have_no_traceback(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    write_project(pytester.path, x, (y + 10).astype(np.int64),
                  '[[tool.advrobust.checks]]\nattack = "fgsm"\nreport-only = true\neps = 0.1\n', model=train_blob_model(x, y))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["data error: pyproject.toml [[]tool.advrobust[]] data: a label is 1[0-3] but the model scores 4 classes*"])
    assert "Traceback" not in result.stdout.str() and "site-packages/torch" not in result.stdout.str()


def test_model_state_is_restored_exactly(tmp_path, task) -> None:
    """Train mode and requires_grad flags come back as they were; parameters untouched."""
    from pytest_advrobust.models.torch_models import TorchClassifier

    w, x, y = task
    net = torch.nn.Sequential(LinearNet(w, np.zeros(3, np.float32)), torch.nn.Dropout(0.0))
    net.train()
    net[0].linear.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = TorchClassifier(net, name="m", input_range=(0, 1))
    x_t = torch.from_numpy(x)
    x_copy = x_t.clone()
    with model.session():
        assert not net.training
        model.loss_gradient(x_t, torch.from_numpy(y))
    assert net.training and net[1].training
    assert net[0].linear.weight.requires_grad and not net[0].linear.bias.requires_grad
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(x_t, x_copy)


def test_batches_of_different_shapes_from_a_loader(tmp_path, task) -> None:
    w, x, y = task
    save_torchscript(LinearNet(w, np.zeros(3, np.float32)), tmp_path / "m.pt")
    (tmp_path / "loaders_b.py").write_text(
        "import numpy as np\n"
        "def batches():\n"
        "    yield np.zeros((4, 6), np.float32), np.zeros(4, np.int64)\n"
        "    yield np.zeros((4, 5), np.float32), np.zeros(4, np.int64)\n")
    session = gate_session(tmp_path, "m.pt", x, y)
    object.__setattr__(session.spec(), "data", "loaders_b:batches")
    with pytest.raises(DataError, match=r"batch 1 holds inputs of shape \(5,\) but earlier batches \(6,\)"):
        run(session)


def test_allow_pickle_loads_a_whole_model_with_a_warning(tmp_path, task) -> None:
    w, x, y = task
    torch.save(LinearNet(w, np.zeros(3, np.float32)), tmp_path / "whole.pt")
    session = gate_session(tmp_path, "whole.pt", x, y, extra="allow-pickle = true\n")
    with pytest.warns(UserWarning, match=r"unpickling a whole torch model \(allow-pickle = true\) runs code"):
        (result,) = run(session)
    assert result.accuracy == 1.0 and result.n == 50
