"""Peak memory of a gate run whose data or weights are zip bombs (issue 19, item 10):
small files whose members declare (and deflate to) hundreds of megabytes of zeros.

    python benchmarks/bench_bounded_reading.py          # about a minute on 2 cores

Each case is one whole ``pytest`` run in a fresh process on a throwaway project, next to
the same project with honest (small) files; the figure is the run's peak RSS (ru_maxrss of
the child) and its excess over the honest run's. Cases:

- ``npz, max-samples = 10``: ``data.npz`` of 1.2 MB whose ``x.npy`` member deflates to
  1.46 GB of float32 zeros; ``max-samples = 10``.
- ``state_dict, 600 MB member``: ``weights.pt`` (torch.save of a Linear(250, 2)) whose
  ``data/0`` storage is replaced by a deflated member of 600 MB of zeros.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np

ROWS, WIDTH = 1_460_000, 250  # 1.46 GB of float32
STATE_BYTES = 600_000_000
CHUNK = bytes(1 << 24)

MODEL = "import torch\n\ndef build():\n    return torch.nn.Linear(%d, 2)\n" % WIDTH


def write_zeros(out, size: int) -> None:
    while size:
        n = min(size, len(CHUNK))
        out.write(CHUNK[:n] if n < len(CHUNK) else CHUNK)
        size -= n


def deflated_npz(path: Path, rows: int, width: int) -> None:
    """``x`` float32 zeros ``(rows, width)`` and ``y`` int64 zeros, deflated, streamed."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, shape, dtype in (("x", (rows, width), "<f4"), ("y", (rows,), "<i8")):
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": dtype, "fortran_order": False, "shape": shape})
            with archive.open(f"{name}.npy", "w", force_zip64=True) as out:
                out.write(header.getvalue())
                write_zeros(out, int(np.prod(shape)) * np.dtype(dtype).itemsize)


def deflated_member(source: Path, target: Path, suffix: str, size: int) -> None:
    """``source`` (a torch archive) copied to ``target``, the member ending with ``suffix``
    replaced by ``size`` zero bytes, deflated."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith(suffix):
                member = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                member.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(member, "w", force_zip64=True) as out:
                    write_zeros(out, size)
            else:
                zout.writestr(info, zin.read(info))


def project(root: Path, *, npz_bomb: bool, state_bomb: bool) -> Path:
    import torch

    root.mkdir()
    (root / "bombmodel.py").write_text(MODEL)
    torch.save(torch.nn.Linear(WIDTH, 2).state_dict(), root / "honest.pt")
    if state_bomb:
        deflated_member(root / "honest.pt", root / "weights.pt", "/data/0", STATE_BYTES)
    else:
        (root / "honest.pt").rename(root / "weights.pt")
    if npz_bomb:
        deflated_npz(root / "data.npz", ROWS, WIDTH)
    else:
        np.savez_compressed(root / "data.npz", x=np.zeros((10, WIDTH), np.float32),
                            y=np.zeros(10, np.int64))
    (root / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.advrobust]
        model = "bombmodel:build"
        weights = "weights.pt"
        data = "data.npz"
        max-samples = 10
        [[tool.advrobust.checks]]
        attack = "clean"
        report-only = true
        """))
    return root


def peak_rss(root: Path) -> tuple[int, str]:
    """Peak RSS (bytes) of one ``pytest`` run in ``root``, and its last output line."""
    script = ("import resource, subprocess, sys\n"
              "done = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',"
              " '-p', 'no:randomly', 'pyproject.toml'], capture_output=True, text=True)\n"
              "lines = [l for l in done.stdout.splitlines() if 'error' in l.lower() or 'passed' in l]\n"
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
              "print((lines or ['?'])[-1][:300])\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    return int(out[0]) * 1024, out[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        cases = {
            "honest files": project(base / "honest", npz_bomb=False, state_bomb=False),
            "npz, max-samples = 10": project(base / "npz", npz_bomb=True, state_bomb=False),
            "state_dict, 600 MB member": project(base / "state", npz_bomb=False, state_bomb=True),
        }
        honest = None
        for name, root in cases.items():
            sizes = {f: (root / f).stat().st_size for f in ("data.npz", "weights.pt")}
            rss, line = peak_rss(root)
            honest = rss if honest is None else honest
            print(f"{name:28s} data.npz {sizes['data.npz'] / 1e6:6.2f} MB, weights.pt "
                  f"{sizes['weights.pt'] / 1e6:6.2f} MB: peak RSS {rss / 1e6:7.0f} MB "
                  f"(+{(rss - honest) / 1e6:.0f} MB over honest files)\n    {line}")


if __name__ == "__main__":
    main()
