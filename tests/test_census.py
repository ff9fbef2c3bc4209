"""The data fingerprint's hashes (``data.Census``): large batches are hashed on a helper
thread while the batch is in use, and the digests must be exactly those of hashing every
byte in order, in the caller's thread, whatever the batch size, the shard, or a loader
that refills one buffer for every batch."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_advrobust.config import ModelSpec
from pytest_advrobust.data import Census, EvalData

SHAPE = (3, 32, 32)  # 12 KiB a sample: a batch of 128 is 1.5 MiB, hashed in the background
SAMPLES = 600


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((SAMPLES, *SHAPE), dtype=np.float32), rng.integers(0, 10, SAMPLES)


def _expected(x: np.ndarray, y: np.ndarray) -> str:
    """The digest computed here, independently: every input byte, then every label."""
    inputs = hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=8).hexdigest()
    labels = hashlib.sha256(np.asarray(y, dtype="<i8").tobytes()).hexdigest()[:16]
    return f"blake2b:{inputs}{labels}"


def _spec(root: Path, data: str, batch_size: int) -> ModelSpec:
    return ModelSpec(name="m", model="m.onnx", data=data, root=root, source=root / "pyproject.toml",
                     batch_size=batch_size)


@pytest.mark.parametrize("batch_size", [16, 128, 600])
def test_the_digest_is_every_byte_in_order_whatever_the_batch_size(tmp_path, batch_size) -> None:
    x, y = _data()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    census = Census()
    seen = [b.x.clone() for b in EvalData(_spec(tmp_path, "d.npz", batch_size)).batches(
        batch_size, torch.float32, census=census)]
    assert Census.BACKGROUND_BYTES <= 128 * x[0].nbytes  # the larger sizes take the thread
    assert census.digest() == _expected(x, y) and census.samples == SAMPLES
    assert torch.equal(torch.cat(seen), torch.from_numpy(x))


@pytest.mark.parametrize("chunk", [128, 100, 300])
def test_a_loader_that_refills_one_buffer_is_read_and_hashed_before_it_refills_it(
        tmp_path, monkeypatch, chunk) -> None:
    """The loader overwrites its buffer as soon as it is asked for the next batch: a hash
    still running then would read the next batch's bytes (or a mix of both), and samples
    kept for the next batch (chunks that do not match the batch size, the last partial
    batch) would change under the pass."""
    x, y = _data()
    (tmp_path / "refill.py").write_text(
        "import numpy as np\n"
        "def batches():\n"
        "    rng = np.random.default_rng(0)\n"
        f"    x = rng.random(({SAMPLES}, *{SHAPE!r}), dtype=np.float32)\n"
        f"    y = rng.integers(0, 10, {SAMPLES})\n"
        f"    buffer = np.empty(({chunk}, *x.shape[1:]), dtype=np.float32)\n"
        f"    for start in range(0, len(y), {chunk}):\n"
        f"        part = x[start:start + {chunk}]\n"
        "        buffer[:len(part)] = part\n"
        f"        yield buffer[:len(part)], y[start:start + {chunk}]\n"
        "        buffer[:] = -1.0  # refilled at once: a late hash would see this\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "refill", raising=False)
    census = Census()
    seen = [b.x.clone() for b in EvalData(_spec(tmp_path, "refill:batches", 128)).batches(
        128, torch.float32, census=census)]
    assert torch.equal(torch.cat(seen), torch.from_numpy(x))
    assert census.digest() == _expected(x, y)


def test_shards_hash_their_parts_as_the_unsharded_pass_does(tmp_path) -> None:
    """With shards each part's hash (labels, then inputs, per batch) is the same whichever
    shard computes it, and the whole stream's digest is the unsharded one."""
    x, y = _data()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    summaries, digests = [], []
    for index in (1, 2, 3):
        census = Census(parts=3)
        for _ in EvalData(_spec(tmp_path, "d.npz", 128)).batches(128, torch.float32, shard=(index, 3),
                                                                 census=census):
            pass
        summaries.append(census.summary())
        digests.append(census.digest())
    assert digests == [_expected(x, y)] * 3
    assert summaries[0] == summaries[1] == summaries[2]
    part = hashlib.blake2b(digest_size=8)  # part 2: batches 1 and 4 (samples 128-255, 512-599)
    for start in (128, 512):
        part.update(np.asarray(y[start:start + 128], dtype="<i8").tobytes())
        part.update(x[start:start + 128].tobytes())
    assert summaries[0]["parts"][1] == f"blake2b:{part.hexdigest()}"
