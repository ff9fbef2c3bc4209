"""The distributions: the wheel holds the package and nothing else, with the metadata an
index and pytest read (version, classifiers, the pytest11 entry point).

The wheel is built from a copy of the tree with setuptools' PEP 517 backend in a
subprocess, without build isolation (no download; a few seconds). ``make dist`` runs the
full ``python -m build`` (sdist + wheel, isolated) and ``twine check`` on top.
"""

from __future__ import annotations

import email
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import pytest_advrobust
from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "pytest_advrobust", source / "pytest_advrobust",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = source / "dist"
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta as backend; "
         "print(backend.build_wheel(sys.argv[1]))", str(out)],
        cwd=source, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


def test_the_wheel_holds_only_the_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"pytest_advrobust", f"pytest_advrobust-{pytest_advrobust.__version__}.dist-info"}
    shipped = {name for name in names if name.endswith(".py")}
    expected = {path.relative_to(ROOT).as_posix() for path in (ROOT / "pytest_advrobust").rglob("*.py")}
    assert shipped == expected  # every module and subpackage, nothing more


def test_the_wheel_metadata_names_the_version_classifiers_and_entry_point(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    info = f"pytest_advrobust-{pytest_advrobust.__version__}.dist-info"
    metadata = email.message_from_bytes(archive.read(f"{info}/METADATA"))
    assert metadata["Name"] == "pytest-advrobust"
    assert metadata["Version"] == pytest_advrobust.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", pytest_advrobust.__version__)
    assert "Framework :: Pytest" in metadata.get_all("Classifier")
    assert metadata["Requires-Python"] == ">=3.10"
    assert metadata["Description-Content-Type"] == "text/markdown"
    required = " ".join(metadata.get_all("Requires-Dist"))
    assert "torch" in required and "pytest-xdist" in required  # xdist only as an extra:
    assert all("extra ==" in r for r in metadata.get_all("Requires-Dist") if "xdist" in r)
    entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert re.search(r"^\[pytest11\]\s*\nadvrobust = pytest_advrobust\.plugin\s*$", entry_points, re.M)


def test_pytest_lists_the_plugin_with_its_version(pytester: pytest.Pytester) -> None:
    """``pytest -VV`` names each plugin's distribution and version (when installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("pytest-advrobust")
    except PackageNotFoundError:
        pytest.skip("pytest-advrobust is not installed (only on the path)")
    assert installed == pytest_advrobust.__version__, "the installed metadata is of another version"
    result = pytester.runpytest_subprocess("-VV")
    result.stdout.fnmatch_lines([f"*pytest-advrobust-{installed} at *plugin.py"])
