"""The documentation: its generated tables cover the code, the attacks page's option tables
agree with the registry, the sections the plugin's own messages cite exist, and its code
examples run.

Every fenced ``python`` and ``toml`` block of README.md and docs/*.md is found here and
run by one of the tests below (``test_every_code_block_is_run`` fails for a block none of
them runs): TOML blocks are read by the plugin's own config reader, next to the hooks the
page defines; Python blocks run against a small project (a conftest in a ``pytest`` run,
the Python API in-process, the hand-written tests in a copy of the example project).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from project import train_blob_model, write_project

DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
import advrobust_tables  # noqa: E402

PAGES = sorted(DOCS.glob("*.md"))


# -- the code blocks ------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} ({self.language})"


def blocks() -> list[Block]:
    found = []
    for path in [ROOT / "README.md", *PAGES]:
        text = path.read_text()
        for match in re.finditer(r"^```(python|toml)\n(.*?)^```", text, re.M | re.S):
            found.append(Block(path, text[:match.start()].count("\n") + 1, match.group(1), match.group(2)))
    return found


def block(page: str, starts: str, language: str = "python") -> Block:
    """The one block of ``page`` whose text starts with ``starts``."""
    (found,) = [b for b in blocks() if b.path.name == page and b.language == language
                and b.text.startswith(starts)]
    return found


#: the blocks each test runs, as (page, first characters, language)
RUN = {
    "conftest": [("extending.md", "# conftest.py\ndef pytest_advrobust_add_attacks", "python"),
                 ("extending.md", "[[tool.advrobust.checks]]\nattack = \"shift\"", "toml"),
                 ("extending.md", "# conftest.py: one JSON line per result", "python")],
    "options": [("extending.md", "def pytest_advrobust_add_attacks(registry):\n    @registry.attack(\"blur\"", "python")],
    "loader": [("extending.md", "[tool.advrobust]\nmodel = \"keras://digits\"", "toml"),
               ("extending.md", "# conftest.py\ndef pytest_advrobust_load_model", "python")],
    "data": [("extending.md", "def pytest_advrobust_load_data", "python")],
    "hypothesis": [("extending.md", "import numpy as np\nimport torch\nfrom hypothesis", "python")],
    "api": [("extending.md", "result = pytest_advrobust.attack(", "python")],
    "example": [("extending.md", "import pytest_advrobust\n\nresults = ", "python"),
                ("extending.md", "import pytest\n\ndef test_fgsm_hurts_more_than_noise", "python")],
}
# every TOML block is read by test_every_config_block_is_valid


def _claimed() -> set[Block]:
    return {block(page, starts, language) for runs in RUN.values() for page, starts, language in runs}


def test_every_code_block_is_run() -> None:
    every = blocks()
    assert len(every) >= 15, every  # the pages are there, and the pattern finds them
    unclaimed = [str(b) for b in every if b not in _claimed() and b.language == "python"]
    assert not unclaimed, f"code blocks no test runs (add them to RUN in tests/test_docs.py): {unclaimed}"


# -- TOML: read by the plugin's config reader --------------------------------------------
#: what a fragment of checks or named models needs around it to be a whole config
SINGLE = 'model = "model.onnx"\ndata = "data.npz"\n'
NAMED = "".join(f'[tool.advrobust.models.{name}]\nmodel = "{name}.onnx"\n'
                f'[[tool.advrobust.models.{name}.checks]]\nattack = "clean"\nmin-accuracy = 0.9\n'
                for name in ("mlp-torch", "logistic-torch"))


def _exec(text: str, name: str = "docs_example") -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(text, f"<{name}>", "exec"), module.__dict__)
    return module


def _config(root: Path, text: str, plugins: list = ()):
    from pytest_advrobust import open_session

    if text.lstrip().startswith("[[tool.advrobust.checks]]"):
        text = "[tool.advrobust]\n" + SINGLE + text
    elif re.match(r"\s*\[tool\.advrobust\.models\.", text):
        text = '[tool.advrobust]\ndata = "data.npz"\n' + NAMED + text
    if text.startswith("[tool.advrobust]\n") and "\nmodel = " not in text:  # settings alone
        text = "[tool.advrobust]\n" + SINGLE + text[len("[tool.advrobust]\n"):]
    if "checks]]" not in text:  # a model table alone (a loader's example)
        text += '[[tool.advrobust.checks]]\nattack = "clean"\nmin-accuracy = 0.9\n'
    (root / "pyproject.toml").write_text(text.split("# pyproject.toml\n")[-1])
    return open_session(root / "pyproject.toml", plugins=plugins, conftest=False).config


def test_every_config_block_is_valid(tmp_path: Path) -> None:
    """Every TOML block is a valid config (a fragment of checks or models inside a minimal
    one), read with the hooks of the page's conftest blocks where it uses them."""
    attacks = _exec(block("extending.md", "# conftest.py\ndef pytest_advrobust_add_attacks").text, "docs_attacks")
    loader = _exec(block("extending.md", "# conftest.py\ndef pytest_advrobust_load_model").text, "docs_loader")
    read = 0
    for found in (b for b in blocks() if b.language == "toml"):
        config = _config(tmp_path, found.text, plugins=[attacks, loader])
        assert config is not None and config.models, found
        checks = [c for m in config.models for c in m.checks]
        attacks_named = re.findall(r'^attack = "(\w+)"', found.text, re.M)
        assert {c.attack for c in checks} >= set(attacks_named), found
        read += 1
    assert read >= 7


# -- Python: the cookbook's conftest hooks in a pytest run ---------------------------------
def test_the_custom_attack_and_result_sink_run_as_a_conftest(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    attack, check, sink = (block(page, starts, language) for page, starts, language in RUN["conftest"])
    write_project(pytester.path, x, y, check.text)
    pytester.makeconftest(attack.text + "\n" + sink.text)
    result = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json=r.json")
    report = json.loads((pytester.path / "r.json").read_text())
    shift = [r for r in report["results"] if r["attack"] == "shift"]
    assert [r["eps"] for r in shift] == [0.1, 0.2] and all(r["status"] in ("passed", "failed") for r in shift)
    result.stdout.fnmatch_lines(["*shift*0.1*", "*shift*0.2*"])
    lines = [json.loads(line) for line in (pytester.path / "robustness.jsonl").read_text().splitlines()]
    assert [(r["attack"], r["eps"]) for r in lines] == [("shift", 0.1), ("shift", 0.2)]
    assert {r["accuracy"] for r in lines} == {r["accuracy"] for r in shift}


def test_declared_options_reach_the_registry() -> None:
    from pytest_advrobust.attacks import AttackRegistry

    registry = AttackRegistry()
    _exec(block(*RUN["options"][0]).text).pytest_advrobust_add_attacks(registry)
    options = registry.config_options()["blur"].options
    assert dict(options) == {"kernel-size": 3, "mode": "box"}


def test_the_model_loader_claims_its_references(pytester: pytest.Pytester, monkeypatch) -> None:
    """The keras:// loader of the cookbook, with ``mypkg.convert.keras_to_torch`` a stand-in
    (a linear model on the example project's 64-pixel digits)."""
    config, loader = (block(page, starts, language) for page, starts, language in RUN["loader"])
    monkeypatch.syspath_prepend(str(ROOT / "example_project"))
    package = pytester.mkpydir("mypkg")
    (package / "convert.py").write_text(textwrap.dedent('''
        import torch

        def keras_to_torch(path):
            assert path.name == "digits.keras"
            torch.manual_seed(0)
            return torch.nn.Linear(64, 10)
        '''))
    monkeypatch.syspath_prepend(str(pytester.path))
    pytester.makepyprojecttoml(config.text + '\n[[tool.advrobust.checks]]\nattack = "clean"\nreport-only = true\n')
    pytester.makeconftest(loader.text)
    pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json=r.json")
    (clean,) = json.loads((pytester.path / "r.json").read_text())["results"]
    assert clean["status"] == "measured" and clean["n"] == 540, clean


def test_the_data_loader_answers_only_for_its_source() -> None:
    arrays = (np.zeros((2, 3), np.float32), np.zeros(2, np.int64))
    module = types.ModuleType("docs_example")
    module.fetch_arrays = lambda name: arrays if name == "digits-test" else None
    exec(compile(block(*RUN["data"][0]).text, "<docs_example>", "exec"), module.__dict__)
    spec = types.SimpleNamespace(data="warehouse://digits-test")
    assert module.pytest_advrobust_load_data(spec, None) is arrays
    assert module.pytest_advrobust_load_data(types.SimpleNamespace(data="data.npz"), None) is None


def test_the_hypothesis_property_test_runs(pytester: pytest.Pytester, blobs, monkeypatch) -> None:
    """The cookbook's property test, with ``mypkg`` giving the blob model and data."""
    x, y = blobs
    torch.save(train_blob_model(x, y).state_dict(), pytester.path / "weights.pt")
    np.savez(pytester.path / "blobs.npz", x=x, y=y)
    pytester.mkpydir("mypkg").joinpath("__init__.py").write_text(textwrap.dedent('''
        import numpy as np
        import torch

        def load_model():
            model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
            model.load_state_dict(torch.load("weights.pt", weights_only=True))
            return model

        def load_test_set():
            data = np.load("blobs.npz")
            return data["x"], data["y"]
        '''))
    monkeypatch.syspath_prepend(str(pytester.path))
    pytester.makepyfile(test_property=block(*RUN["hypothesis"][0]).text)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:advrobust", "test_property.py")
    result.assert_outcomes(passed=1)


def test_attacking_a_model_in_memory(blobs) -> None:
    """The Python API's in-memory calls, on the blob model."""
    import pytest_advrobust

    x, y = blobs
    names = {"pytest_advrobust": pytest_advrobust, "model": train_blob_model(x, y), "x_test": x, "y_test": y}
    module = types.ModuleType("docs_example")
    module.__dict__.update(names)
    exec(compile(block(*RUN["api"][0]).text, "<docs_example>", "exec"), module.__dict__)
    result = module.result
    assert result.attack == "fgsm" and result.n == len(x) and result.accuracy <= result.clean_accuracy


@pytest.mark.e2e
def test_the_api_and_the_hand_written_tests_run_in_the_example_project(tmp_path: Path) -> None:
    """``evaluate()`` and the fixture's hand-written tests, on the example project's models
    (trained here, seconds): the blocks name its models (``mlp-torch``, ``mlp-onnx``)."""
    api, tests = (block(page, starts, language) for page, starts, language in RUN["example"])
    project = tmp_path / "example"
    shutil.copytree(ROOT / "example_project", project,
                    ignore=shutil.ignore_patterns("models", ".advrobust", "__pycache__", "reports"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER",
                                                              "PYTEST_XDIST_WORKER_COUNT")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(project)])
    done = subprocess.run([sys.executable, "-m", "digits_demo.train"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    done = subprocess.run([sys.executable, "-c", api.text], cwd=project, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line.split() for line in done.stdout.splitlines()]
    assert len(printed) == 17 and any(row[0] == "fgsm" and row[-1] == "True" for row in printed), printed

    (project / "tests" / "test_from_docs.py").write_text(tests.text)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "tests/test_from_docs.py"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-3000:]


# -- the generated reference tables ---------------------------------------------------------
def test_the_option_table_lists_every_option_with_its_help() -> None:
    text = advrobust_tables.options_markdown()
    options = advrobust_tables.plugin_options()
    assert len(options) >= 12
    for names, attrs in options:
        for name in names:
            assert f"`{name}" in text, name
        assert " ".join(attrs["help"].split()).replace("|", "\\|") in text, names


def test_the_config_tables_list_every_key_with_a_meaning() -> None:
    from pytest_advrobust import config

    model, check = (advrobust_tables.config_keys_markdown(which) for which in ("model", "check"))
    for key in config.MODEL_KEYS | config.TOP_ONLY_KEYS:
        assert f"| `{key}` |" in model, key
    for key in config.CHECK_KEYS:
        assert f"| `{key}` |" in check, key
    assert "| `batch-size` | `256` | yes |" in model  # the default read from ModelSpec
    # a key the code knows and the docs do not describe fails `make docs` (and this test)
    assert advrobust_tables.undescribed_keys() == []
    assert not set(advrobust_tables.KEY_MEANINGS) - (config.MODEL_KEYS | config.TOP_ONLY_KEYS | config.CHECK_KEYS)


def test_the_hooks_reference_lists_every_hook_spec() -> None:
    from pytest_advrobust import hookspecs
    from pytest_advrobust.session import plugin_manager

    text = advrobust_tables.hooks_markdown()
    specs = [name for name in plugin_manager().hook.__dict__ if name.startswith("pytest_advrobust_")]
    assert len(specs) >= 4
    for name in specs:
        parameters = ", ".join(getattr(hookspecs, name).__code__.co_varnames[
            :getattr(hookspecs, name).__code__.co_argcount])
        assert f"**`{name}({parameters})`**" in text, name
    assert "(`firstresult`)" in text.split("pytest_advrobust_load_model")[1]


def test_the_merge_help_is_the_commands_own() -> None:
    text = advrobust_tables.merge_help()
    assert "usage: python -m pytest_advrobust merge" in text and "--save-baseline" in text


@pytest.mark.e2e
def test_the_site_builds_without_warnings_and_shows_the_generated_tables(tmp_path: Path) -> None:
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
                           str(DOCS), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    configuration = (tmp_path / "configuration.html").read_text()
    for names, _ in advrobust_tables.plugin_options():
        assert names[0] in configuration, names
    from pytest_advrobust import config

    for key in config.MODEL_KEYS | config.CHECK_KEYS:
        assert f"<code class=\"docutils literal notranslate\"><span class=\"pre\">{key}</span></code>" in configuration, key
    extending = (tmp_path / "extending.html").read_text()
    for name, _ in advrobust_tables.hooks():
        assert name in extending, name


# -- the sections messages cite -------------------------------------------------------------
#: how the plugin's help texts and messages cite the docs: (docs: "PAGE", section "SECTION")
#: and (README, "SECTION"); quotes may be escaped in the source
DOCS_CITATION = re.compile(r'docs: \\?"([^"\\]+)\\?", section \\?"([^"\\]+)\\?"')
README_CITATION = re.compile(r'README, \\?"([^"\\]+)\\?"')


def _headings(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return [line.lstrip("#").strip() for line in text.splitlines() if re.match(r"#{1,6} ", line)]


def test_every_section_the_plugin_cites_exists() -> None:
    from test_help import _option_helps

    texts = [path.read_text() for path in (ROOT / "pytest_advrobust").rglob("*.py")]
    texts += list(_option_helps().values()) + [advrobust_tables.merge_help()]
    titles = {_headings(path)[0]: path for path in PAGES}
    cited = 0
    for text in texts:
        for page, section in DOCS_CITATION.findall(text):
            assert page in titles, f"docs page {page!r} (page titles: {sorted(titles)})"
            assert section in _headings(titles[page]), f"{page!r} has no section {section!r}"
            cited += 1
        for section in README_CITATION.findall(text):
            assert section in _headings(ROOT / "README.md"), f"README has no section {section!r}"
            cited += 1
    assert cited >= 3  # the baseline option's help, the masking message, the missing-table error


# -- the attacks page's option tables against the registry ----------------------------------
def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _attack_tables() -> dict[str, dict[str, str]]:
    """Each attack section's option table of docs/attacks.md: key -> default cell."""
    text = (DOCS / "attacks.md").read_text()
    tables: dict[str, dict[str, str]] = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        name = re.match(r"`(\w+)`\n", section)
        if name and "\n| key" in section:
            rows = re.findall(r"^\| `([\w-]+)` +\| ([^|]+)\|", section, re.M)
            tables[name.group(1)] = {key: cell.strip() for key, cell in rows}
    return tables


def test_every_attacks_options_table_matches_the_registry() -> None:
    """An option a built-in attack declares is in its table, with the default the code
    uses (computed defaults, declared by their type, are described in words)."""
    from pytest_advrobust.attacks import AttackRegistry
    from pytest_advrobust.session import plugin_manager

    registry = AttackRegistry()
    plugin_manager().hook.pytest_advrobust_add_attacks(registry=registry)
    declared = {name: dict(info.options) for name, info in registry.config_options().items()}
    tables = _attack_tables()
    assert len(tables) >= 8, sorted(tables)
    for name, options in declared.items():
        if name == "hypothesis":  # documented with its example check in extending.md
            example = block("extending.md", "[[tool.advrobust.checks]]\nattack = \"hypothesis\"", "toml").text
            for key, default in options.items():
                assert re.search(rf"^{key} = .*default {default}$", example, re.M), key
            continue
        table = tables.get(name, {})
        assert set(table) == set(options), (name, sorted(table), sorted(options))
        for key, default in options.items():
            if default is None or isinstance(default, type):
                continue
            shown = table[key].strip("`").split(" ")[0].strip("`")
            assert shown == _toml_value(default), (name, key, table[key], default)
