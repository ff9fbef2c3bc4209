"""Zip bombs in data and model files: a member is checked against the size it declares
before it is read, and ``max-samples`` reads only the rows it needs from a .npz.

The bombs are built here, streamed (never held in memory): deflated zeros declaring
hundreds of megabytes in a file of about a megabyte. Memory is measured with tracemalloc
(numpy's and Python's allocations) in this process, and as the peak RSS of a child process
where torch's own reader would do the allocating.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_advrobust.archives import COMPRESSED_SHARE, DEFAULT_MAX_READ_BYTES, ReadLimit
from pytest_advrobust.errors import ConfigError, DataError, ModelLoadError

MB = 10**6
BOMB = 300 * MB  # what a bomb expands to
ROWS, WIDTH = BOMB // (4 * 250), 250  # float32 rows of the .npz bomb
CHUNK = bytes(1 << 24)


# -- building bombs -----------------------------------------------------------------------
def write_zeros(out, size: int) -> None:
    while size:
        n = min(size, len(CHUNK))
        out.write(CHUNK if n == len(CHUNK) else CHUNK[:n])
        size -= n


def deflated_npz(path: Path, rows: int, width: int) -> Path:
    """``x``: float32 zeros ``(rows, width)``, ``y``: int64 zeros, deflated (level 1: quick)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, shape, dtype in (("x", (rows, width), "<f4"), ("y", (rows,), "<i8")):
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": dtype, "fortran_order": False, "shape": shape})
            with archive.open(f"{name}.npy", "w", force_zip64=True) as out:
                out.write(header.getvalue())
                write_zeros(out, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return path


def deflated_member(source: Path, target: Path, suffix: str, size: int) -> str:
    """``source`` (a torch archive) copied to ``target`` with the member ending in ``suffix``
    replaced by ``size`` zero bytes, deflated; the member's name."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", compresslevel=1) as zout:
        for info in zin.infolist():
            if info.filename.endswith(suffix):
                name = info.filename
                member = zipfile.ZipInfo(name, date_time=info.date_time)
                member.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(member, "w", force_zip64=size > 2**31) as out:
                    write_zeros(out, size)
            else:
                zout.writestr(info, zin.read(info))
    return name


def declare(path: Path, name: str, size: int) -> None:
    """Make member ``name`` declare ``size`` bytes (and the CRC of that many zeros) in its
    local header and the central directory, whatever its stream holds (32-bit fields)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info, start = archive.getinfo(name), archive.start_dir
    crc = zlib.crc32(bytes(size))
    struct.pack_into("<II", data, info.header_offset + 14, crc, info.compress_size)
    struct.pack_into("<I", data, info.header_offset + 22, size)
    entry = data.find(b"PK\x01\x02", start)
    while data[entry + 46:entry + 46 + struct.unpack_from("<H", data, entry + 28)[0]] != name.encode():
        entry = data.find(b"PK\x01\x02", entry + 46)
    struct.pack_into("<I", data, entry + 16, crc)
    struct.pack_into("<I", data, entry + 24, size)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def npz_bomb(tmp_path_factory) -> Path:
    """A .npz of about 1.3 MB whose ``x.npy`` deflates to 300 MB of float32 zeros."""
    return deflated_npz(tmp_path_factory.mktemp("bomb") / "data.npz", ROWS, WIDTH)


def spec_for(root: Path, **table):
    from pytest_advrobust.config import AttackOptions, parse_config

    section = {"model": "m.onnx", "data": "data.npz",
               "checks": [{"attack": "clean", "report-only": True}], **table}
    return parse_config(section, path=root / "pyproject.toml",
                        attacks={"clean": AttackOptions(uses_eps=False)}).models[0]


def read_all(root: Path, **table) -> tuple[np.ndarray, np.ndarray, int]:
    """Every batch a pass over ``root/data.npz`` gives, and the peak of numpy's and Python's
    allocations while reading it (tracemalloc)."""
    from pytest_advrobust.data import EvalData

    data = EvalData(spec_for(root, **table))
    tracemalloc.start()
    try:
        xs, ys = [], []
        for batch in data.batches(64, torch.float32):
            xs.append(batch.x.numpy().copy())
            ys.append(batch.y.numpy().copy())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return np.concatenate(xs), np.concatenate(ys), peak


def peak_rss_delta(code: str) -> tuple[int, str]:
    """Run ``code`` in a child Python that has imported torch and the loaders: its peak RSS
    growth (bytes) over the peak after those imports, and how ``code`` ended."""
    script = textwrap.dedent("""
        import resource, sys, warnings
        import torch
        from pathlib import Path
        from pytest_advrobust.archives import ReadLimit
        from pytest_advrobust.models.torch_models import load_state_dict, load_torch_module
        warnings.simplefilter("ignore")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            exec(sys.argv[1])
            outcome = "loaded"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        print(outcome)
        """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, code], capture_output=True, text=True,
                          env=env, check=True)
    grown, outcome = done.stdout.split("\n", 1)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return int(grown) * scale, outcome.strip()


# -- the premise: a member's declared size bounds what either reader takes from it ----------
def test_zipfile_never_returns_more_than_a_members_declared_size(tmp_path) -> None:
    path = tmp_path / "lie.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a", bytes(10 * MB))
    declare(path, "a", 1000)
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("a").file_size == 1000
        assert len(archive.read("a")) == 1000  # the CRC of 1000 zeros matches: no error
        with archive.open("a") as stream:
            assert sum(len(chunk) for chunk in iter(lambda: stream.read(64), b"")) == 1000


@pytest.mark.e2e
def test_torch_reads_no_more_than_a_members_declared_size(tmp_path) -> None:
    torch.save({"w": torch.zeros(4, 4)}, tmp_path / "small.pt")
    name = deflated_member(tmp_path / "small.pt", tmp_path / "lie.pt", "/data/0", BOMB)
    declare(tmp_path / "lie.pt", name, 64)  # the stream still inflates to 300 MB
    grown, outcome = peak_rss_delta(
        f"state = torch.load({str(tmp_path / 'lie.pt')!r}, weights_only=True)\n"
        "assert state['w'].shape == (4, 4) and not state['w'].any()")
    assert outcome == "loaded"
    assert grown < 100 * MB, f"torch read past the declared size: RSS grew by {grown / MB:.0f} MB"


# -- .npz data ----------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::pytest_advrobust.errors.AdvRobustWarning")  # zeros: narrow data
def test_max_samples_reads_only_the_rows_it_needs(npz_bomb) -> None:
    x, y, peak = read_all(npz_bomb.parent, **{"max-samples": 10})
    assert x.shape == (10, WIDTH) and not x.any()
    assert y.shape == (10,) and not y.any()
    assert peak < 30 * MB, f"reading 10 rows allocated {peak / MB:.0f} MB of a {BOMB / MB:.0f} MB member"


def test_members_declaring_more_than_max_read_bytes_are_refused_unread(npz_bomb) -> None:
    from pytest_advrobust.data import EvalData

    data = EvalData(spec_for(npz_bomb.parent, **{"max-read-bytes": 100 * MB}))
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            next(data.batches(64, torch.float32))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert message.startswith(f"{npz_bomb}: the archive member 'x.npy' declares 300 MB "
                              "uncompressed (from ")
    assert "more than pyproject.toml [tool.advrobust] max-read-bytes = 100000000 (100 MB)" in message
    assert "zip bomb" in message and "Nothing was read" in message
    assert "raise pyproject.toml [tool.advrobust] max-read-bytes (to 1073741824, say)" in message
    assert "\n" not in message and len(message) < 700
    assert peak < 5 * MB


def test_a_header_claiming_more_data_than_its_member_holds_is_refused_unallocated(tmp_path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (100, 10**9)})  # 400 GB
    with zipfile.ZipFile(tmp_path / "data.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", header.getvalue() + bytes(4000))
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(100, np.int64))
        archive.writestr("y.npy", buffer.getvalue())
    tracemalloc.start()
    try:
        for table in ({}, {"max-samples": 10}):
            with pytest.raises(DataError, match=r"data.npz: cannot be read as a .npz archive without "
                                                r"pickle \(EOF: the member 'x.npy' declares "
                                                r"100000000000 values of float32 in its .npy header "
                                                r"\(400000000000 bytes\) but holds 4000 bytes"):
                read_all(tmp_path, **table)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * MB


ARRAYS = {
    "float32": (np.random.default_rng(0).uniform(size=(100, 3, 4)).astype(np.float32),
                np.random.default_rng(1).integers(0, 5, size=100)),
    "fortran, float64, uint16": (np.asfortranarray(np.random.default_rng(2).uniform(size=(100, 7))),
                                 np.random.default_rng(3).integers(0, 5, size=100).astype(np.uint16)),
}


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("kind", ARRAYS)
@pytest.mark.parametrize("max_samples", [None, 1, 37, 100, 500])
def test_npz_files_give_exactly_the_arrays_numpy_gives(tmp_path, save, kind, max_samples) -> None:
    x, y = ARRAYS[kind]
    save(tmp_path / "data.npz", x=x, y=y)
    with np.load(tmp_path / "data.npz") as archive:  # numpy itself, reading everything
        expected_x, expected_y = archive["x"][:max_samples], archive["y"][:max_samples]
    table = {} if max_samples is None else {"max-samples": max_samples}
    got_x, got_y, _ = read_all(tmp_path, **table)
    assert np.array_equal(got_x, torch.tensor(expected_x, dtype=torch.float32).numpy())
    assert np.array_equal(got_y, expected_y.astype(np.int64))


def test_npz_arrays_are_those_of_the_file_before_batching(tmp_path) -> None:
    """The arrays EvalData keeps: numpy's own, dtype included."""
    from pytest_advrobust.data import EvalData

    x, y = ARRAYS["fortran, float64, uint16"]
    np.savez_compressed(tmp_path / "data.npz", x=x, y=y)
    for max_samples in (None, 30):
        data = EvalData(spec_for(tmp_path, **({} if max_samples is None else {"max-samples": max_samples})))
        kept_x, kept_y = next(data._chunks())
        assert kept_x.dtype == x.dtype and kept_y.dtype == y.dtype
        assert np.array_equal(kept_x, x[:max_samples]) and np.array_equal(kept_y, y[:max_samples])
        assert data.size == len(x[:max_samples])


def test_a_flipped_byte_beyond_the_rows_read_still_fails_the_crc(tmp_path) -> None:
    x, y = ARRAYS["float32"]
    np.savez(tmp_path / "data.npz", x=x, y=y)  # stored: the data lies in the file as it is
    raw = bytearray((tmp_path / "data.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "data.npz") as archive:
        info = archive.getinfo("x.npy")
    end = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size
    raw[end - 5] ^= 0xFF  # in the last sample's values
    (tmp_path / "data.npz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"data.npz: cannot be read as a .npz archive without "
                                        r"pickle \(Bad CRC-32 for file 'x.npy'\)"):
        read_all(tmp_path, **{"max-samples": 10})


def test_layout_errors_name_the_whole_arrays_when_max_samples_cuts_them(tmp_path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.uniform(size=(40, 6)).astype(np.float32),
             y=np.zeros(30, np.int64))
    with pytest.raises(DataError, match=r"data: the archive has 40 inputs but 30 labels\.$"):
        read_all(tmp_path, **{"max-samples": 5})
    np.savez(tmp_path / "data.npz", x=rng.uniform(size=(40, 6)).astype(np.float32),
             y=np.eye(3, dtype=np.int64)[np.zeros(40, int)])
    with pytest.raises(DataError, match=r"labels in the archive have shape \(40, 3\) and dtype int64"):
        read_all(tmp_path, **{"max-samples": 5})
    np.savez(tmp_path / "data.npz", x=np.zeros((40, 0), np.float32), y=np.zeros(40, np.int64))
    with pytest.raises(DataError, match=r"inputs in the archive have shape \(40, 0\): samples"):
        read_all(tmp_path, **{"max-samples": 5})
    np.savez(tmp_path / "data.npz", x=np.array([None] * 40, dtype=object), y=np.zeros(40, np.int64))
    with pytest.raises(DataError, match=r"cannot be read as a .npz archive without pickle \(Object "
                                        r"arrays cannot be loaded when allow_pickle=False\)"):
        read_all(tmp_path, **{"max-samples": 5})


# -- torch archives -----------------------------------------------------------------------
def _torchscript(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(6, 3)), str(path))
    return path


def _export(path: Path) -> Path:
    program = torch.export.export(torch.nn.Linear(6, 3), (torch.zeros(1, 6),))
    torch.export.save(program, str(path))
    return path


@pytest.mark.e2e
@pytest.mark.parametrize("form", ["state_dict", "torchscript", "export"])
def test_a_torch_archive_with_a_large_compressed_member_is_refused_before_torch_reads_it(
        tmp_path, form) -> None:
    if form == "state_dict":
        torch.save(torch.nn.Linear(6, 3).state_dict(), tmp_path / "honest.pt")
        call = "load_state_dict(Path({path!r}))"
    elif form == "torchscript":
        _torchscript(tmp_path / "honest.pt")
        call = "load_torch_module('torchscript', Path({path!r}), device=torch.device('cpu'))"
    else:
        _export(tmp_path / "honest.pt")
        call = "load_torch_module('export', Path({path!r}), device=torch.device('cpu'))"
    suffix = {"export": "weight_0"}.get(form, "data/0")
    target = tmp_path / ("bomb.pt2" if form == "export" else "bomb.pt")
    name = deflated_member(tmp_path / "honest.pt", target, suffix, BOMB)
    assert target.stat().st_size < 2 * MB
    grown, outcome = peak_rss_delta(call.format(path=str(target)))
    assert outcome.startswith(f"ModelLoadError: {target}: the archive member {name!r} is compressed "
                              "and declares 300 MB uncompressed (from ")
    assert (f"more than 1/{COMPRESSED_SHARE} of [tool.advrobust] max-read-bytes (67.1 MB)"
            in outcome), outcome
    assert "zip bomb" in outcome and "torch.save" in outcome
    assert grown < 100 * MB, f"refusing the file cost {grown / MB:.0f} MB"


def test_a_stored_member_above_max_read_bytes_names_the_key_of_its_table(tmp_path) -> None:
    from project import gate_session

    (tmp_path / "netmod.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Linear(2000, 2000)\n")
    torch.save(torch.nn.Linear(2000, 2000).state_dict(), tmp_path / "w.pt")  # 16 MB, stored
    x, y = np.random.default_rng(0).uniform(size=(4, 2000)).astype(np.float32), np.zeros(4, np.int64)
    with pytest.raises(ModelLoadError) as info:
        gate_session(tmp_path, "netmod:build", x, y,
                     extra='weights = "w.pt"\nmax-read-bytes = 10_000_000\n').run_all()
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'w.pt'}: the archive member 'w/data/0' declares 16 MB "
                              "uncompressed (stored uncompressed); the 8 members read expand to ")
    assert "more than pyproject.toml [tool.advrobust] max-read-bytes = 10000000 (10 MB)" in message
    assert "(to 1073741824, say)" in message
    session = gate_session(tmp_path, "netmod:build", x, y,
                           extra='weights = "w.pt"\nmax-read-bytes = 17_000_000\n')
    session.run_all()  # the same file loads under a limit it fits


def test_honest_torch_archives_load_as_torch_loads_them(tmp_path) -> None:
    from pytest_advrobust.models.torch_models import load_state_dict, load_torch_module

    module = torch.nn.Linear(6, 3)
    torch.save(module.state_dict(), tmp_path / "w.pt")
    state = load_state_dict(tmp_path / "w.pt", ReadLimit(2000))  # 72 + 12 bytes of tensors
    assert state.keys() == module.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())
    scripted = load_torch_module("torchscript", _torchscript(tmp_path / "m.pt"),
                                 device=torch.device("cpu"))
    with zipfile.ZipFile(tmp_path / "m.pt") as archive:  # TorchScript deflates its code
        assert any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist())
    assert scripted(torch.ones(2, 6)).shape == (2, 3)
    exported = load_torch_module("export", _export(tmp_path / "m.pt2"), device=torch.device("cpu"))
    assert exported(torch.ones(1, 6)).shape == (1, 3)


# -- the key ------------------------------------------------------------------------------
def test_max_read_bytes_is_a_model_key_inherited_by_named_models(tmp_path) -> None:
    from pytest_advrobust.config import AttackOptions, parse_config

    assert spec_for(tmp_path).max_read_bytes == DEFAULT_MAX_READ_BYTES == 4 * 2**30
    assert spec_for(tmp_path, **{"max-read-bytes": 123}).max_read_bytes == 123
    checks = [{"attack": "clean", "report-only": True}]
    config = parse_config({"data": "d.npz", "checks": checks, "max-read-bytes": 5000,
                           "models": {"a": {"model": "a.onnx"},
                                      "b": {"model": "b.onnx", "max-read-bytes": 7000}}},
                          path=tmp_path / "pyproject.toml",
                          attacks={"clean": AttackOptions(uses_eps=False)})
    assert [spec.max_read_bytes for spec in config.models] == [5000, 7000]
    for bad in (0, "4 GiB", True, 1.5):
        with pytest.raises(ConfigError, match=r"\[tool.advrobust\] max-read-bytes: must be a whole "
                                              r"number >= 1"):
            spec_for(tmp_path, **{"max-read-bytes": bad})
