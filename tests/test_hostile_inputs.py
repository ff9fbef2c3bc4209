"""Hostile and broken inputs (round 2): misbehaving models, damaged files, odd names and
values. Each ends in one short paragraph naming the culprit, never a traceback."""

from __future__ import annotations

import textwrap
import warnings

import numpy as np
import pytest
import torch

import pytest_advrobust
from conftest import LinearNet
from project import write_project
from pytest_advrobust.errors import AttackError, ModelLoadError


@pytest.fixture
def task():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 6)).astype(np.float32)
    x = rng.uniform(0, 1, size=(40, 6)).astype(np.float32)
    return w, x, (x @ w.T).argmax(1).astype(np.int64)


# -- a user's model raising anything, or giving no gradient ---------------------------------
class KeyErrorNet(LinearNet):
    def forward(self, x):
        return {"logits": self.linear(x)}["scores"]  # the user's bug, on this line


class Int64Net(LinearNet):
    def forward(self, x):
        return (self.linear(x) * 100).long()


class NoGradNet(LinearNet):
    def forward(self, x):
        with torch.no_grad():
            return self.linear(x)


class DetachingNet(LinearNet):
    def forward(self, x):
        return self.linear(torch.from_numpy(x.detach().numpy()))


def test_model_raising_anything_is_a_model_error_naming_the_users_line(task) -> None:
    w, x, y = task
    net = KeyErrorNet(w, np.zeros(3, np.float32))
    for attack, eps in (("clean", None), ("fgsm", 0.1)):
        with pytest.raises(ModelLoadError) as info:
            pytest_advrobust.attack(net, x, y, attack, eps=eps)
        message = str(info.value)
        line = KeyErrorNet.forward.__code__.co_firstlineno + 1
        assert "the model raised KeyError" in message and "key 'scores'" in message
        assert f"test_hostile_inputs.py:{line}" in message
        assert "site-packages" not in message and len(message) < 600


def test_integer_scores_are_refused_for_every_gate(task) -> None:
    w, x, y = task
    net = Int64Net(w, np.zeros(3, np.float32))
    for attack, eps in (("clean", None), ("fgsm", 0.1)):
        with pytest.raises(ModelLoadError, match=r"scores of dtype int64; class scores must be "
                                                 r"floating-point"):
            pytest_advrobust.attack(net, x, y, attack, eps=eps)


@pytest.mark.parametrize("forward, says", [
    (lambda net, x: torch.cat([net.linear(x), net.linear(x[:1])]), r"scores of shape \(41, 3\) for a batch of 40"),
    (lambda net, x: net.linear(x)[:20], r"scores of shape \(20, 3\) for a batch of 40 inputs; a classifier "
                                       r"must return one row of class scores per input"),
    (lambda net, x: net.linear(x).t(), r"scores of shape \(3, 40\) .* Check forward for a transpose"),
    (lambda net, x: net.linear(x)[:, :0], r"scores of shape \(40, 0\)"),
    (lambda net, x: net.linear(x).to_sparse(), r"scores as a sparse_coo tensor"),
    (lambda net, x: net.linear(x).to("meta"), r"on device 'meta'"),
    (lambda net, x: net.linear(x) > 0, r"scores of dtype bool"),
    (lambda net, x: net.linear(x).to(torch.complex64), r"scores of dtype complex64"),
    (lambda net, x: net.linear(x).detach().numpy(), r"returned ndarray, not a tensor"),
])
@pytest.mark.parametrize("attack", ["clean", "fgsm", "spsa"])
def test_scores_of_the_wrong_kind_are_a_model_error(task, forward, says, attack) -> None:
    w, x, y = task

    class Odd(LinearNet):
        def forward(self, batch):
            return forward(self, batch)

    with pytest.raises(ModelLoadError, match=says):
        pytest_advrobust.attack(Odd(w, np.zeros(3, np.float32)), x, y, attack,
                                eps=None if attack == "clean" else 0.1,
                                **({"queries": 10, "samples": 2} if attack == "spsa" else {}))


@pytest.mark.parametrize("net_class, says", [
    (NoGradNet, r"scores carry no gradient: its forward runs under torch.no_grad\(\)"),
    (DetachingNet, r"scores carry no gradient: .* detaches the input or output"),
])
def test_model_without_a_gradient_path_fails_gradient_gates_only(task, net_class, says) -> None:
    w, x, y = task
    net = net_class(w, np.zeros(3, np.float32))
    clean = pytest_advrobust.attack(net, x, y, "clean")
    assert clean.accuracy == 1.0 and clean.n == 40  # scoring still works
    with pytest.raises(AttackError, match=says) as info:
        pytest_advrobust.attack(net, x, y, "fgsm", eps=0.1)
    assert "Attacks that need no gradient of this model: noise" in str(info.value)
    assert pytest_advrobust.attack(net, x, y, "noise", eps=0.1).n == 40


def test_callable_whose_scores_bypass_the_input_says_so(task) -> None:
    w, x, y = task
    weight = torch.tensor(w, requires_grad=True)  # scores need a gradient, but not through x
    with pytest.raises(AttackError, match=r"do not depend on its input through autograd"):
        pytest_advrobust.attack(lambda batch: batch.detach() @ weight.T, x, y, "fgsm", eps=0.1)


class InPlaceNet(LinearNet):
    def forward(self, x):
        x.clamp_(0.45, 0.55)  # writes into the engine's batch
        return self.linear(x)


@pytest.mark.parametrize("attack", ["clean", "noise", "fgsm"])
def test_a_model_that_writes_into_its_input_is_a_model_error(task, attack) -> None:
    w, x, y = task
    with pytest.raises(ModelLoadError, match=r"the model modified its input in place .* later gates "
                                             r"would run on altered inputs"):
        pytest_advrobust.attack(InPlaceNet(w, np.zeros(3, np.float32)), x, y, attack,
                                eps=None if attack == "clean" else 0.1)
    normalised = pytest_advrobust.attack(InPlaceNet(w, np.zeros(3, np.float32)), x, y, "clean",
                                         normalize=([0.0], [1.0]))  # writes into a copy: harmless
    assert normalised.n == 40


def test_api_called_inside_inference_mode_or_no_grad_gives_the_same_numbers(task) -> None:
    w, x, y = task
    net = LinearNet(w, np.zeros(3, np.float32))
    plain = pytest_advrobust.attack(net, x, y, "fgsm", eps=0.2).accuracy
    assert plain < 1.0  # the attack bites, so equality below is not trivial
    with torch.inference_mode():
        assert pytest_advrobust.attack(net, x, y, "fgsm", eps=0.2).accuracy == plain
        assert pytest_advrobust.attack(net, x, y, "pgd", eps=0.2, steps=3).accuracy <= plain
    with torch.no_grad():
        assert pytest_advrobust.attack(net, x, y, "fgsm", eps=0.2).accuracy == plain


def test_weights_made_in_inference_mode_say_so(task) -> None:
    w, x, y = task
    with torch.inference_mode():
        net = LinearNet(w, np.zeros(3, np.float32))
    assert pytest_advrobust.attack(net, x, y, "clean").accuracy == 1.0
    with pytest.raises(AttackError, match=r"weights were created under torch.inference_mode\(\)"):
        pytest_advrobust.attack(net, x, y, "fgsm", eps=0.1)


RAISING_FACTORY = '''
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x):
        table = {"a": self.linear(x)}
        return table["b"]


def build():
    return Net()
'''


@pytest.mark.parametrize("spread", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_raising_model_in_a_pytest_run_is_one_paragraph(pytester: pytest.Pytester, blobs, spread) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, textwrap.dedent('''
        [[tool.advrobust.checks]]
        attack = "clean"
        min-accuracy = 0.5
        [[tool.advrobust.checks]]
        attack = "fgsm"
        eps = 0.1
        min-accuracy = 0.5
        '''))
    (pytester.path / "blobmodel.py").write_text(RAISING_FACTORY)
    (pytester.path / "pyproject.toml").write_text(
        (pytester.path / "pyproject.toml").read_text().replace('weights = "weights.pt"\n', ""))
    result = pytester.runpytest("-p", "no:cacheprovider", *spread)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*model error: blobmodel:build: the model raised KeyError on a batch "
                                 "of shape (64, 8) in */blobmodel.py:12: key 'b' Fix the model code*"])
    out = result.stdout.str()
    assert "Traceback" not in out and "site-packages" not in out and len(out.splitlines()) < 40


# -- damaged archives ---------------------------------------------------------------------
def _flip_member_bytes(path, member: str) -> None:
    """Invert 8 bytes of one stored member's data, leaving the zip structure intact (torch
    itself would load the file)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo(member).header_offset
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[offset + 26:offset + 30])
    start = offset + 30 + name_length + extra_length
    data[start:start + 8] = bytes(b ^ 0xFF for b in data[start:start + 8])
    path.write_bytes(bytes(data))


def _member(path, suffix: str) -> str:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return next(name for name in archive.namelist() if name.endswith(suffix))


def test_damaged_torchscript_and_state_dict_are_refused_naming_the_member(tmp_path, task) -> None:
    from project import gate_session, save_torchscript

    w, x, y = task
    net = LinearNet(w, np.zeros(3, np.float32))
    save_torchscript(net, tmp_path / "m.pt")
    member = _member(tmp_path / "m.pt", "data/0")
    _flip_member_bytes(tmp_path / "m.pt", member)
    with warnings.catch_warnings():  # torch deprecates TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        assert torch.jit.load(str(tmp_path / "m.pt")) is not None  # torch alone would run garbage
    with pytest.raises(ModelLoadError, match=rf"m.pt: is damaged: the archive member '{member}' "
                                             r"fails its CRC check"):
        gate_session(tmp_path, "m.pt", x, y).run_all()

    (tmp_path / "netmod.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Linear(6, 3))\n")
    torch.save(torch.nn.Sequential(torch.nn.Linear(6, 3)).state_dict(), tmp_path / "w.pt")
    member = _member(tmp_path / "w.pt", "data/0")
    _flip_member_bytes(tmp_path / "w.pt", member)
    with pytest.raises(ModelLoadError, match=rf"w.pt: is damaged: the archive member '{member}' "
                                             r".* the weights key"):
        gate_session(tmp_path, "netmod:build", x, y, extra='weights = "w.pt"\n').run_all()


def test_damaged_export_archive_is_refused(tmp_path, task) -> None:
    from project import gate_session

    w, x, y = task
    net = LinearNet(w, np.zeros(3, np.float32))
    torch.export.save(torch.export.export(net, (torch.zeros(1, 6),)), str(tmp_path / "m.pt2"))
    member = _member(tmp_path / "m.pt2", "weight_0")
    _flip_member_bytes(tmp_path / "m.pt2", member)
    with pytest.raises(ModelLoadError, match=rf"is damaged: the archive member '{member}'"):
        gate_session(tmp_path, "m.pt2", x, y).run_all()


@pytest.mark.parametrize("content", ["random", "zip"])
def test_unreadable_pt2_gives_only_our_message(tmp_path, task, capfd, caplog, content) -> None:
    import zipfile

    from project import gate_session

    w, x, y = task
    if content == "random":
        (tmp_path / "m.pt2").write_bytes(np.random.default_rng(0).bytes(3000))
    else:  # a sound zip that is not a torch.export archive
        with zipfile.ZipFile(tmp_path / "m.pt2", "w") as archive:
            archive.writestr("m/notes.txt", "hello")
    with pytest.raises(ModelLoadError, match=r"m.pt2: is not a torch.export archive"):
        gate_session(tmp_path, "m.pt2", x, y).run_all()
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert not [r for r in caplog.records if r.name.startswith("torch")]


# -- names --------------------------------------------------------------------------------
def _parse(table: dict):
    from pathlib import Path

    from pytest_advrobust.config import AttackOptions, parse_config

    attacks = {"clean": AttackOptions(uses_eps=False)}
    return parse_config({"data": "d.npz", "checks": [{"attack": "clean", "report-only": True}], **table},
                        path=Path("pyproject.toml"), attacks=attacks)


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", "a::b", "x[1]", "a b", "a/b",
                                  "..", "a..b", "-lead", ".hidden", "caf\u00e9", "x" * 101, "a\nb"])
def test_model_names_follow_one_rule_in_tables_and_name_keys(name) -> None:
    from pytest_advrobust.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[tool.advrobust.models.*\]: .* is not a usable model "
                                          r"name: .*Rename the table"):
        _parse({"models": {name: {"model": "m.onnx"}}})
    with pytest.raises(ConfigError, match=r"\[tool.advrobust\] name: .* is not a usable model "
                                          r"name: .*Set name = "):
        _parse({"model": "m.onnx", "name": name})


def test_good_names_pass_and_default_names_are_made_to_follow_the_rule() -> None:
    config = _parse({"models": {"mlp-torch": {"model": "m.onnx"}, "v1.2_b": {"model": "n.onnx"}}})
    assert config.model_names == ("mlp-torch", "v1.2_b")
    assert _parse({"model": "models/_my model..v2.onnx"}).model_names == ("my-model.v2",)
    assert _parse({"model": "pkg._mlp:build"}).model_names == ("mlp",)


def test_names_differing_only_in_case_are_refused() -> None:
    from pytest_advrobust.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'Mlp' and 'mlp' differ only in case"):
        _parse({"models": {"Mlp": {"model": "m.onnx"}, "mlp": {"model": "n.onnx"}}})


def test_escaping_table_name_stops_the_run_and_writes_nothing(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    write_project(pytester.path / ".", x, y, "")
    (pytester.path / "pyproject.toml").write_text(textwrap.dedent('''
        [tool.advrobust]
        data = "data.npz"
        [tool.advrobust.models."../../../escaped"]
        model = "blobmodel:build"
        weights = "weights.pt"
        [[tool.advrobust.models."../../../escaped".checks]]
        attack = "universal"
        eps = 0.1
        fit-samples = 20
        steps = 1
        '''))
    before = set(pytester.path.parent.parent.iterdir())
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*models.\"../../../escaped\"]: '../../../escaped' is not a usable "
                                 "model name*"])
    assert set(pytester.path.parent.parent.iterdir()) == before
    assert not (pytester.path / ".advrobust").exists()


def test_artifact_and_plot_file_names_never_leave_their_folder(tmp_path) -> None:
    from pytest_advrobust.report.artifacts import UnsafePath, inside
    from pytest_advrobust.report.plots import _safe

    (tmp_path / "out").mkdir()
    assert inside(tmp_path / "out", "m-universal-eps0.1.npy") == tmp_path / "out" / "m-universal-eps0.1.npy"
    (tmp_path / "out" / "link.npy").symlink_to(tmp_path / "elsewhere.npy")
    for bad in ("../x.npy", "a/b.npy", "..", "link.npy", str(tmp_path / "abs.npy")):
        with pytest.raises(UnsafePath, match=r"would be written outside"):
            inside(tmp_path / "out", bad)
    assert _safe("mlp-torch") == "mlp-torch"
    assert len({_safe("a b"), _safe("a_b"), _safe("a/b"), _safe("a:b")}) == 4
    assert all("/" not in _safe(n) and ".." not in _safe(n) for n in ("../../x", "a/../b"))


def test_two_fitted_checks_at_one_eps_keep_both_perturbations(tmp_path, task) -> None:
    from project import gate_session, save_torchscript

    w, x, y = task
    save_torchscript(LinearNet(w, np.zeros(3, np.float32)), tmp_path / "m.pt")
    checks = "".join(f'[[tool.advrobust.checks]]\nattack = "universal"\nreport-only = true\neps = 0.1\nfit-samples = 20\n'
                     f'steps = {steps}\n' for steps in (1, 3))
    results = gate_session(tmp_path, "m.pt", x, y, checks=checks).run_all()
    saved = sorted(p.name for p in (tmp_path / ".advrobust" / "universal").glob("*.npy"))
    assert saved == [f"m-universal-eps0.1-check{i}-fold{j}.npy" for i in (0, 1) for j in (1, 2)]
    assert [r.artifacts[0].endswith(f"-check{i}-fold1.npy") for i, r in enumerate(results)] == [True, True]


# -- files that are not UTF-8, baselines with wrong-typed fields ----------------------------
def test_config_that_is_not_utf8_is_a_usage_error_naming_the_file(pytester: pytest.Pytester) -> None:
    # (a non-UTF-8 pyproject.toml at or above the rootdir is parsed, and crashes, inside
    # pytest's own config discovery before any plugin runs; --advrobust-config and the API
    # read through our loader)
    (pytester.path / "gates").mkdir()
    (pytester.path / "gates" / "pyproject.toml").write_bytes(
        b'[tool.advrobust]\nmodel = "m.onnx"\ndata = "d.npz"\n# caf\xe9\n')
    result = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-config=gates/pyproject.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest-advrobust: */gates/pyproject.toml: is not UTF-8 text "
                                 "(byte 0xe9 on line 4); TOML files must be UTF-8.*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    with pytest.raises(pytest_advrobust.ConfigError, match=r"is not UTF-8 text \(byte 0xe9 on line 4\)"):
        pytest_advrobust.evaluate(pytester.path / "gates" / "pyproject.toml")


BASELINE_ENTRY = {"model": "m", "attack": "fgsm", "eps": 0.1, "accuracy": 0.5, "correct": 5,
                  "n": 10, "fingerprint": {"seed": 0}}


@pytest.mark.parametrize("field, value, says", [
    ("eps", "0.1", r"an invalid \"eps\": '0.1' \(it must be a number >= 0, or null for clean\)"),
    ("n", "ten", r"an invalid \"n\": 'ten' \(it must be a whole number >= 0\)"),
    ("n", 2.5, r"an invalid \"n\": 2.5"),
    ("fingerprint", [1, 2], r"an invalid \"fingerprint\": \[1, 2\] \(it must be an object\)"),
    ("correct", True, r"an invalid \"correct\": True"),
    ("accuracy", "0.5", r"no valid \"accuracy\" \(a number in \[0, 1\], not '0.5'\)"),
    ("accuracy", 1.5, r"no valid \"accuracy\" \(a number in \[0, 1\], not 1.5\)"),
])
def test_baseline_entry_with_a_wrong_typed_field_blames_that_field(tmp_path, field, value, says) -> None:
    import json

    from pytest_advrobust.report.baseline import BaselineError, load_baseline

    good = {"format": "pytest-advrobust-baseline", "version": 1, "results": {"k": BASELINE_ENTRY}}
    (tmp_path / "b.json").write_text(json.dumps(good))
    assert load_baseline(tmp_path / "b.json")["k"].accuracy == 0.5
    good["results"]["k"] = {**BASELINE_ENTRY, field: value}
    (tmp_path / "b.json").write_text(json.dumps(good))
    with pytest.raises(BaselineError, match=rf"b.json: the entry 'k' has {says}"):
        load_baseline(tmp_path / "b.json")


def test_baseline_that_is_not_utf8_names_the_file(tmp_path) -> None:
    from pytest_advrobust.report.baseline import BaselineError, load_baseline

    (tmp_path / "b.json").write_bytes(b'{"format": "pytest-advrobust-baseline",\n "x": "caf\xe9"}')
    with pytest.raises(BaselineError, match=r"b.json: is not UTF-8 text \(byte 0xe9 on line 2\)"):
        load_baseline(tmp_path / "b.json")


# -- loader return shapes -----------------------------------------------------------------
LOADERS = '''
import numpy as np
import torch

rng = np.random.default_rng(0)
X = rng.uniform(0, 1, size=(40, 6)).astype(np.float32)
W = rng.normal(size=(3, 6)).astype(np.float32)
Y = (X @ W.T).argmax(1).astype(np.int64)

def tuple_with_list():
    return X, [int(v) for v in Y]

def as_list():
    return [X, Y]

def as_dict():
    return {"x": torch.from_numpy(X), "y": Y}

def dict_batches():
    for i in range(0, 40, 16):
        yield {"x": X[i:i + 16], "y": Y[i:i + 16]}

def list_batches():
    return [[torch.from_numpy(X[i:i + 16]), torch.from_numpy(Y[i:i + 16])] for i in range(0, 40, 16)]

def three():
    return X, Y, np.ones(40)

def three_per_batch():
    yield X, Y, np.ones(40)

def only_x():
    return X

def other_keys():
    return {"inputs": X, "labels": Y}

def text():
    return "data.npz"
'''


@pytest.mark.parametrize("loader", ["tuple_with_list", "as_list", "as_dict", "dict_batches",
                                    "list_batches"])
def test_loader_pair_forms_are_accepted(tmp_path, task, loader) -> None:
    from project import gate_session, save_torchscript

    w, x, y = task
    (tmp_path / "shapes_a.py").write_text(LOADERS)
    import importlib.util
    spec = importlib.util.spec_from_file_location("shapes_probe", tmp_path / "shapes_a.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    save_torchscript(LinearNet(module.W, np.zeros(3, np.float32)), tmp_path / "m.pt")
    session = gate_session(tmp_path, "m.pt", x, y)
    object.__setattr__(session.spec(), "data", f"shapes_a:{loader}")
    (result,) = session.run_all()
    assert result.n == 40 and result.accuracy == 1.0  # labels line up with inputs


@pytest.mark.parametrize("loader, says", [
    ("three", r"the loader returned a tuple of 3 items \(a ndarray of shape \(40, 6\) and dtype "
              r"float32, .*\); it must return \(inputs, labels\), \[inputs, labels\] or "
              r"\{\"x\": inputs, \"y\": labels\}"),
    ("three_per_batch", r"batch 0 from the loader returned a tuple of 3 items"),
    ("only_x", r"the loader returned one array of shape \(40, 6\), not inputs and labels"),
    ("other_keys", r"returned a dict with keys \['inputs', 'labels'\]; a dict must hold the inputs "
                   r"under \"x\""),
    ("text", r"the loader returned a str; it must return \(inputs, labels\)"),
])
def test_loader_returning_something_else_says_what_and_what_is_expected(tmp_path, task, loader,
                                                                       says) -> None:
    from project import gate_session, save_torchscript
    from pytest_advrobust.errors import DataError

    w, x, y = task
    (tmp_path / "shapes_b.py").write_text(LOADERS)
    save_torchscript(LinearNet(w, np.zeros(3, np.float32)), tmp_path / "m.pt")
    session = gate_session(tmp_path, "m.pt", x, y)
    object.__setattr__(session.spec(), "data", f"shapes_b:{loader}")
    with pytest.raises(DataError, match=says) as info:
        session.run_all()
    assert "[tool.advrobust] data" in str(info.value)


# -- ONNX: every place a graph can name an external file ------------------------------------
def _external(tensor, location: str) -> None:
    import onnx

    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location


def _escaping_onnx(where: str, location: str):
    """A small valid-looking graph whose tensor at ``where`` names external data."""
    import onnx
    from onnx import TensorProto, helper

    def const(name):
        return helper.make_tensor(name, TensorProto.FLOAT, [1, 6], [0.5] * 6)

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 6])
    if where == "constant":
        node = helper.make_node("Constant", [], ["c"], name="the_constant", value=const("c"))
        _external(node.attribute[0].t, location)
        nodes, inits, sparse = [node, helper.make_node("Add", ["x", "c"], ["y"])], [], []
    elif where == "sparse":
        values = helper.make_tensor("s_values", TensorProto.FLOAT, [1], [1.0])
        _external(values, location)
        indices = helper.make_tensor("s_indices", TensorProto.INT64, [1], [0])
        sparse = [helper.make_sparse_tensor(values, indices, [1, 6])]
        nodes, inits = [helper.make_node("Add", ["x", "s_values"], ["y"])], []
    else:  # a Constant inside the then-branch of an If
        inner = helper.make_node("Constant", [], ["t"], name="inner", value=const("t"))
        _external(inner.attribute[0].t, location)
        branch = helper.make_graph([inner], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 6])])
        other = helper.make_graph([helper.make_node("Constant", [], ["e"], value=const("e"))], "else", [],
                                  [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 6])])
        cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
        nodes = [helper.make_node("If", ["cond"], ["c"], name="branch", then_branch=branch, else_branch=other),
                 helper.make_node("Add", ["x", "c"], ["y"])]
        inits, sparse = [cond], []
    graph = helper.make_graph(nodes, "g", [x], [out], initializer=inits, sparse_initializer=sparse)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("where, owner", [
    ("constant", r"node 'the_constant' \(Constant\) attribute 'value'"),
    ("sparse", r"sparse initializer 's_values'"),
    ("subgraph", r"node 'inner' \(Constant\) attribute 'value' \(in the subgraph 'then_branch' of node 'branch' \(If\)\)"),
])
@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd"])
def test_onnx_external_data_is_refused_wherever_the_graph_names_it(tmp_path, task, where, owner,
                                                                  location) -> None:
    from project import gate_session

    w, x, y = task
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.onnx").write_bytes(_escaping_onnx(where, location).SerializeToString())
    with pytest.raises(ModelLoadError, match=rf"m.onnx: {owner} points at external data "
                                             rf"'{location}', outside the model's folder. Refused"):
        gate_session(tmp_path, "models/m.onnx", x, y).run_all()


def test_onnx_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path, task) -> None:
    from project import gate_session

    w, x, y = task
    (tmp_path / "models").mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 24)
    (tmp_path / "models" / "weights.bin").symlink_to(tmp_path / "secret.bin")
    (tmp_path / "models" / "m.onnx").write_bytes(_escaping_onnx("constant", "weights.bin").SerializeToString())
    with pytest.raises(ModelLoadError, match=r"points at external data 'weights.bin', outside"):
        gate_session(tmp_path, "models/m.onnx", x, y).run_all()


# -- silently accepted before ---------------------------------------------------------------
def test_did_you_mean_ignores_case() -> None:
    from pathlib import Path

    from pytest_advrobust.config import AttackOptions, parse_config
    from pytest_advrobust.errors import ConfigError

    attacks = {"clean": AttackOptions(uses_eps=False), "fgsm": AttackOptions()}
    table = {"model": "m.onnx", "data": "d.npz", "checks": [{"attack": "FGSM", "eps": 0.1}]}
    with pytest.raises(ConfigError, match=r"checks\[0\] attack: unknown attack 'FGSM'. Did you mean "
                                          r"'fgsm'\? \(names are case-sensitive\)"):
        parse_config(table, path=Path("pyproject.toml"), attacks=attacks)
    table = {"model": "m.onnx", "data": "d.npz", "Batch-Size": 4, "checks": [{"attack": "clean", "report-only": True}]}
    with pytest.raises(ConfigError, match=r"Batch-Size: unknown key. Did you mean 'batch-size'\?"):
        parse_config(table, path=Path("pyproject.toml"), attacks=attacks)


def test_several_config_errors_are_reported_at_once(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(textwrap.dedent('''
        [tool.advrobust]
        data = "d.npz"
        [tool.advrobust.models.a]
        model = "m.onnx"
        [[tool.advrobust.models.a.checks]]
        attack = "FGSM"
        report-only = true
        eps = 0.1
        [[tool.advrobust.models.a.checks]]
        attack = "fgsm"
        report-only = true
        eps = -1
        [[tool.advrobust.models.a.checks]]
        attack = "clean"
        report-only = true
        [tool.advrobust.models.b]
        model = "m.h5"
        [[tool.advrobust.models.b.checks]]
        attack = "clean"
        report-only = true
        [tool.advrobust.models."c d"]
        model = "m.onnx"
        '''))
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "ERROR: pytest-advrobust: */pyproject.toml: 4 configuration errors:",
        "  1. [[]tool.advrobust.models.a[]] checks[[]0[]] attack: unknown attack 'FGSM'. Did you mean 'fgsm'?*",
        "  2. [[]tool.advrobust.models.a[]] checks[[]1[]] eps: -1 is negative*",
        "  3. [[]tool.advrobust.models.b[]] model: 'm.h5' is neither a model file*",
        "  4. [[]tool.advrobust.models.\"c d\"[]]: 'c d' is not a usable model name*",
    ])


def test_unknown_keys_do_not_hide_the_rest_of_the_table() -> None:
    from pytest_advrobust.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        _parse({"model": "m.onnx", "Batch-Size": 3, "seed": -1, "extra": 1,
                "models": {"b": {"model": "n.onnx", "Max-Samples": 2}}})
    message = str(info.value)
    assert message.startswith("pyproject.toml: 5 configuration errors:\n")
    for part in ("1. [tool.advrobust] Batch-Size: unknown key. Did you mean 'batch-size'?",
                 "2. [tool.advrobust] extra: unknown key.", "3. [tool.advrobust] seed: must be a whole number",
                 "4. [tool.advrobust.models.b] Max-Samples: unknown key. Did you mean 'max-samples'?",
                 "5. [tool.advrobust.models.b] seed: must be a whole number"):  # inherited
        assert part in message


def test_one_config_error_reads_as_before() -> None:
    from pathlib import Path

    from pytest_advrobust.config import AttackOptions, parse_config
    from pytest_advrobust.errors import ConfigError

    table = {"model": "m.onnx", "data": "d.npz", "checks": [{"attack": "clean", "report-only": True}, {"attack": "fgsn", "eps": 0.1,
                                                                                                  "min-accuracy": 0.5}]}
    with pytest.raises(ConfigError) as info:
        parse_config(table, path=Path("pyproject.toml"), attacks={"clean": AttackOptions(uses_eps=False),
                                                                 "fgsm": AttackOptions()})
    assert str(info.value).startswith("pyproject.toml: [tool.advrobust] checks[1] attack: unknown "
                                      "attack 'fgsn'. Did you mean 'fgsm'?")


def test_data_filling_a_tiny_part_of_input_range_warns_once_per_model(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, textwrap.dedent('''
        [[tool.advrobust.checks]]
        attack = "clean"
        report-only = true
        [[tool.advrobust.checks]]
        attack = "fgsm"
        report-only = true
        eps = [4, 8]
        '''), extra='input-range = [0, 255]\n')
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "always")
    result.assert_outcomes(passed=3)  # a warning, not an error
    out = result.stdout.str()
    assert out.count("AdvRobustWarning") == 1
    result.stdout.fnmatch_lines(["*pyproject.toml:2: AdvRobustWarning: pyproject.toml [[]tool.advrobust[]] "
                                 "data: the data ranges over [[]0.1*, 0.8*[]], 0.29% of input-range [[]0, 255[]] (key input-range of "
                                 "[[]tool.advrobust[]]). eps and clipping are in input-range units*"])


def test_narrow_data_warning_turned_into_an_error_is_a_data_error(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, '[[tool.advrobust.checks]]\nattack = "clean"\nreport-only = true\n',
                  extra='input-range = [0, 255]\n')
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["data error: pyproject.toml [[]tool.advrobust[]] data: the data ranges over *"
                                 "(AdvRobustWarning, turned into an error by a warnings filter)"])
    assert "Traceback" not in result.stdout.str()


def test_data_filling_input_range_does_not_warn(tmp_path, task, recwarn) -> None:
    from project import gate_session, save_torchscript

    w, x, y = task
    save_torchscript(LinearNet(w, np.zeros(3, np.float32)), tmp_path / "m.pt")
    gate_session(tmp_path, "m.pt", x, y).run_all()
    gate_session(tmp_path, "m.pt", x * 0.5, y).run_all()  # half the range: fine
    assert not [w for w in recwarn if "input-range" in str(w.message)]
    gate_session(tmp_path, "m.pt", x * 0.01, y).run_all()
    assert len([w for w in recwarn if "input-range" in str(w.message)]) == 1


# -- found while looking past the list --------------------------------------------------------
def test_unsigned_labels_beyond_int64_name_the_label(task) -> None:
    from pytest_advrobust.errors import DataError

    w, x, y = task
    labels = y.astype(np.uint64)
    labels[3] = np.iinfo(np.uint64).max  # was reported as "found -1" after the int64 cast
    with pytest.raises(DataError, match=r"a label in the loader's result is 18446744073709551615"):
        pytest_advrobust.attack(LinearNet(w, np.zeros(3, np.float32)), x, labels, "clean")


def test_inputs_too_large_for_the_models_dtype_say_so(task) -> None:
    from pytest_advrobust.errors import DataError

    w, x, y = task
    with pytest.raises(DataError, match=r"too large for the model's dtype float32 \(largest magnitude 1e\+300\)"):
        pytest_advrobust.attack(LinearNet(w, np.zeros(3, np.float32)), x.astype(np.float64) * 1e300
                                / x.max(), y, "clean")


class _Plugin:
    """A conftest-like plugin whose attacks are broken in the user's own code."""

    @staticmethod
    def pytest_advrobust_add_attacks(registry):
        @registry.attack("keyed")
        def keyed(x, eps):
            return {"x": x}["adversarial"]

        @registry.attack("unloadable", fit="no_such_module_adv:fit", options={"fit-samples": 5})
        def unloadable(x, state):
            return x


def test_a_users_attack_raising_is_an_attack_error_with_their_line(task) -> None:
    w, x, y = task
    net = LinearNet(w, np.zeros(3, np.float32))
    with pytest.raises(AttackError, match=r"keyed: the attack function raised KeyError in "
                                          r".*test_hostile_inputs.py:\d+: 'adversarial' Fix the attack"):
        pytest_advrobust.attack(net, x, y, "keyed", eps=0.1, plugins=[_Plugin])
    with pytest.raises(AttackError, match=r"cannot load the attack function 'no_such_module_adv:fit' "
                                          r"\(ModuleNotFoundError"):
        pytest_advrobust.attack(net, x, y, "unloadable", eps=0.1, plugins=[_Plugin])


def test_broken_attack_registration_is_a_configuration_error(tmp_path, task) -> None:
    from pytest_advrobust.errors import ConfigError

    class BadName:
        @staticmethod
        def pytest_advrobust_add_attacks(registry):
            registry.attack("../evil")(lambda x: x)

    class Raising:
        @staticmethod
        def pytest_advrobust_add_attacks(registry):
            raise RuntimeError("conftest bug")

    w, x, y = task
    net = LinearNet(w, np.zeros(3, np.float32))
    with pytest.raises(ConfigError, match=r"registry.attack\('../evil'\): an attack name becomes part of "
                                          r"test ids and file names"):
        pytest_advrobust.attack(net, x, y, "clean", plugins=[BadName])
    with pytest.raises(ConfigError, match=r"a pytest_advrobust_add_attacks hook raised RuntimeError in "
                                          r".*test_hostile_inputs.py:\d+: conftest bug"):
        pytest_advrobust.attack(net, x, y, "clean", plugins=[Raising])


def test_a_result_sink_that_raises_fails_the_gate_with_one_paragraph(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, '[[tool.advrobust.checks]]\nattack = "clean"\nmin-accuracy = 0.5\n')
    pytester.makeconftest("def pytest_advrobust_result(result):\n    raise OSError('dashboard down')\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["configuration error: pytest_advrobust_result: a pytest_advrobust_result "
                                 "hook raised OSError in */conftest.py:2: dashboard down"])
    assert "Traceback" not in result.stdout.str()


def test_raising_factory_loader_and_load_hook_name_the_users_line(tmp_path, task) -> None:
    from project import gate_session, save_torchscript
    from pytest_advrobust.errors import DataError

    w, x, y = task
    (tmp_path / "brokenparts.py").write_text(
        "def build():\n    raise ValueError('no net')\n\n"
        "def data():\n    raise OSError('disk gone')\n")
    session = gate_session(tmp_path, "brokenparts:build", x, y)
    with pytest.raises(ModelLoadError, match=r"the model factory raised ValueError: no net. "
                                             r"\(in .*brokenparts.py:2\)"):
        session.run_all()
    save_torchscript(LinearNet(w, np.zeros(3, np.float32)), tmp_path / "m.pt")
    session = gate_session(tmp_path, "m.pt", x, y)
    object.__setattr__(session.spec(), "data", "brokenparts:data")
    with pytest.raises(DataError, match=r"the data loader raised OSError: disk gone \(in .*brokenparts.py:5\)"):
        session.run_all()


def test_an_eps_too_large_for_the_seed_derivation_still_runs(task) -> None:
    """eps = 1e300 (valid with a huge input-range) overflowed int(round(eps * 1e9))."""
    w, x, y = task
    net = LinearNet(w, np.zeros(3, np.float32)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pytest_advrobust.errors.AdvRobustWarning)  # narrow data
        runs = [pytest_advrobust.attack(net, x.astype(np.float64), y, "noise", eps=1e300,
                                        input_range=(-1e300, 1e300)) for _ in range(2)]
    assert runs[0].n == 40 and runs[0].accuracy == runs[1].accuracy < 1.0


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "universal", "spsa"])
def test_an_input_range_beyond_the_models_dtype_is_a_model_error(task, attack) -> None:
    w, x, y = task
    with pytest.raises(ModelLoadError, match=r"input-range \[-1e\+39, 1e\+39\] does not fit the model's "
                                             r"dtype float32 \(largest value 3.403e\+38\)"):
        pytest_advrobust.attack(LinearNet(w, np.zeros(3, np.float32)), x, y, attack, eps=1e39,
                                input_range=(-1e39, 1e39))  # was torch's "cannot be converted ... overflow"


@pytest.mark.parametrize("content", [None, "[tool.other]\nx = 1\n"])
def test_an_explicit_config_that_is_missing_or_has_no_table_is_a_usage_error(pytester: pytest.Pytester,
                                                                            content) -> None:
    """Before, a typo in --advrobust-config ran no gate and passed: a false green."""
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    if content is not None:
        (pytester.path / "robust.toml").write_text(content)
    result = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-config=robust.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest-advrobust: --advrobust-config=robust.toml: */robust.toml "
                                 + ("does not exist.*" if content is None else
                                    "has no [[]tool.advrobust[]] table.*")])


def test_narrow_data_made_an_error_fails_every_later_pass_too(tmp_path, task) -> None:
    """Under xdist a worker runs one pass per check: each must fail, not only the first."""
    from project import gate_session, save_torchscript
    from pytest_advrobust.errors import AdvRobustWarning, DataError

    w, x, y = task
    save_torchscript(LinearNet(w, np.zeros(3, np.float32)), tmp_path / "m.pt")
    session = gate_session(tmp_path, "m.pt", x, y, extra="input-range = [0, 255]\n")
    data = session.engine.data(session.spec())
    with warnings.catch_warnings():
        warnings.simplefilter("error", AdvRobustWarning)
        for _ in range(2):
            with pytest.raises(DataError, match=r"turned into an error by a warnings filter"):
                list(data.batches(16, torch.float32))
