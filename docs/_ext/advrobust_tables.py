"""Reference tables generated from the code at build time, so the docs cannot drift from it.

Three directives for the Markdown pages (myst-parser), each rendering Markdown that the
page's own parser reads:

- ``advrobust-options``: every command-line option of the plugin, from
  ``plugin.pytest_addoption`` (its help texts, metavars, choices and defaults), recorded by
  a stand-in for pytest's parser; ``advrobust-merge-help``: the merge command's ``--help``.
- ``advrobust-config-keys``: the keys of a model table and of a check table, from the key
  sets of ``pytest_advrobust.config`` (``MODEL_KEYS``, ``INHERITED_KEYS``, ``CHECK_KEYS``)
  and the defaults of its ``ModelSpec`` / ``CheckSpec``; what each key means is written
  once, in :data:`KEY_MEANINGS` below (the code has no prose for them).
- ``advrobust-hooks``: every hook of ``pytest_advrobust.hookspecs``, with its parameters and
  its docstring.

A key or option added to the code appears in the next build by itself. A config key that
:data:`KEY_MEANINGS` does not describe is listed all the same and makes the build warn
(``make docs`` turns the warning into an error): add its one-line meaning there.
The functions ``*_markdown`` are what the directives render; tests/test_docs.py checks
them against the code.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import io
import os
import re
from typing import Any

#: what each config key means (model-table and check-table keys alike); the names, the
#: defaults and which keys named models inherit come from pytest_advrobust.config
KEY_MEANINGS: dict[str, str] = {
    "model": "`.onnx`, TorchScript `.pt`/`.pth`, `torch.export` `.pt2`, or `\"pkg.mod:factory\"` "
             "(a callable returning an `nn.Module`)",
    "weights": "with a factory: a `state_dict`, loaded with `torch.load(weights_only=True)`",
    "name": "the model's name in ids and reports (single-model form; default: the file stem, or "
            "the factory's module, `pkg.mlp:build` -> `mlp`); like a `models.NAME` key it must "
            "start with an ASCII letter or digit and hold only letters, digits, `_`, `-`, `.` "
            "(no `..`, at most 100 characters; names may not differ only in case)",
    "data": "`\"pkg.mod:callable\"` returning `(inputs, labels)`, `[inputs, labels]` or "
            "`{\"x\": inputs, \"y\": labels}` (numpy or torch; labels may be a list) or an "
            "iterable of such batches; or a `.npz` with `x`, `y`",
    "input-range": "adversarial inputs are clipped to this box; eps is in these units",
    "normalize": "`{ mean = [...], std = [...] }` per channel (dimension 1): the model expects "
                 "normalised inputs; applied inside, so data, eps and input-range stay raw",
    "batch-size": "samples per forward pass; data is streamed, memory does not grow with the dataset",
    "max-samples": "evaluate on the first N samples (default: all); from a `.npz` only those rows "
                   "are held in memory (the rest of each array is streamed through its CRC check)",
    "seed": "every random draw derives from it (noise, random starts, fits)",
    "output": "which output holds the class scores (default: the only float score-shaped "
              "output): a name or an index; ONNX graph outputs, or the dict key / tuple index "
              "of a torch model's return value (see [Models](models.md#heads-outputs-and-batch-layouts))",
    "output-kind": "`\"logits\"` or `\"probabilities\"`; auto = rows in [0, 1] summing to 1; for "
                   "a single-score binary head auto decides only when a score lies outside [0, 1] "
                   "(logits)",
    "device": "`\"cpu\"`, `\"cuda\"`, `\"cuda:N\"`; auto picks CUDA when torch sees one",
    "allow-pickle": "permit a whole pickled model (runs code from the file; warns)",
    "bpda": "a factory module's rounding, integer casts and quantisation get a straight-through "
            "gradient while attacks take it (ONNX, TorchScript and `torch.export` graphs always "
            "do; see [masking](masking.md#when-the-gate-says-masking-suspected))",
    "checks": "the model's checks, an array of tables (`[[tool.advrobust.checks]]`, keys below); "
              "top-level checks apply to every model that has none of its own",
    "models": "`[tool.advrobust.models.NAME]`: several models, each a table of the keys above",
    "max-regression": "with `--advrobust-baseline`: largest allowed fall below the baseline "
                      "(see [the regression rule](reports.md#the-regression-rule)); per check too",
    "max-read-bytes": "the most one `.npz`, state_dict, TorchScript or `.pt2` file may expand to "
                      "when read, by the uncompressed sizes its zip members declare (checked "
                      "before any is read): a larger file is refused as a likely zip bomb. The "
                      "compressed members of a torch archive may expand to 1/64 of it together "
                      "(64 MiB by default: `torch.save` and `torch.export` compress nothing, "
                      "TorchScript only its code). 4 GiB holds a ViT-H/14 state_dict (2.5 GB) or "
                      "CIFAR-10 at float32 (740 MB) and stays far below a 16 GB CI runner; raise "
                      "it for a larger genuine file",
    "masking-probe": "cross-check every `fgsm`, `pgd` and `apgd` gate (every per-sample gradient "
                     "attack) with a bounded black-box square attack on the same samples; `false` "
                     "turns it off (see [the masking probe]"
                     "(masking.md#the-masking-probe-a-black-box-attack-on-the-same-samples)); in a "
                     "check: that check's own setting, over its model's (an error on other attacks)",
    "masking-probe-samples": "how many of the evaluated samples the probe attacks (a random "
                             "subsample keyed by the seed and the model, the same at every eps, "
                             "batch size and shard; on a loader's stream of batches, its first ones)",
    "decide-early": "stop each gate as soon as its verdict is settled, on as few samples as that "
                    "needs (see [Deciding early](decide-early.md)); unset: off unless "
                    "`--advrobust-decide-early`; in a check: that check's own setting, over its "
                    "model's",
    "decide-early-error": "the most chance that a gate decided early gets another verdict than it "
                          "would on all its data, in (0, 0.1]; in a check: over its model's",
    "masking-probe-queries": "the probe's square budget per sample",
    "eot-samples": "a randomised model (noise inside `forward`) is attacked with gradients and "
                   "scores averaged over this many draws (EOT) and counts a sample correct only if "
                   "it is right in this many draws (see [randomised models](masking.md#randomised-models))",
    "attack": "the attack's name ([Attacks](attacks.md)), or one you registered "
              "([a custom attack](extending.md#a-custom-attack))",
    "eps": "a number or a list (one gate per value): the L-inf size of the perturbation, in "
           "`input-range` units; not for `clean`",
    "min-accuracy": "absolute floor: the gate fails below it",
    "max-drop": "clean accuracy minus attacked accuracy, at most",
    "report-only": "measure and show as `MEASURED`, never `PASS` (no threshold, no baseline rule)",
    "allow-masking": "true: a gradient gate whose gradients are masked reports it without "
                     "failing for it (see [when the gate says masking suspected]"
                     "(masking.md#when-the-gate-says-masking-suspected))",
}


def _code(text: str) -> str:
    return f"`{text}`"


def _cell(text: str) -> str:
    """Text for one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# -- command-line options --------------------------------------------------------------------
class RecordingParser:
    """Stands in for pytest's parser and its option group: records every ``addoption``."""

    def __init__(self) -> None:
        self.options: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def getgroup(self, *args: object, **kwargs: object) -> "RecordingParser":
        return self

    def addoption(self, *names: str, **attrs: Any) -> None:
        self.options.append((names, attrs))

    addini = None  # the plugin declares no ini options; one added later fails loudly here


def plugin_options() -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    from pytest_advrobust import plugin

    parser = RecordingParser()
    plugin.pytest_addoption(parser)  # type: ignore[arg-type]
    return parser.options


def options_markdown() -> str:
    rows = []
    for names, attrs in plugin_options():
        value = attrs.get("metavar") or ("{" + ",".join(attrs["choices"]) + "}" if attrs.get("choices") else "")
        shown = ", ".join(_code(f"{n}={value}" if value and n.startswith("--") else n) for n in names)
        default = attrs.get("default")
        rows.append([shown, "" if default in (None, False) else _code(str(default)),
                     attrs.get("help", "")])
    return _table(["option", "default", "what it does (its `--help` text)"], rows)


def merge_help() -> str:
    from pytest_advrobust.merge import main

    out = io.StringIO()
    width = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "90"  # argparse wraps to the terminal: the page must not depend on it
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main(["merge", "--help"])
    finally:
        if width is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = width
    return "```text\n" + out.getvalue().rstrip() + "\n```\n"


# -- config keys -----------------------------------------------------------------------------
def _defaults(cls: type) -> dict[str, Any]:
    found = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            found[f.name.replace("_", "-")] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            found[f.name.replace("_", "-")] = f.default_factory()  # type: ignore[misc]
    return found


def _shown(key: str, defaults: dict[str, Any]) -> str:
    if key not in defaults or defaults[key] in (None, (), {}):
        return "none"
    value = defaults[key]
    if isinstance(value, bool):
        return _code(str(value).lower())
    if isinstance(value, tuple):
        return _code("[" + ", ".join(repr(v) for v in value) + "]")
    if isinstance(value, str):
        return _code(f'"{value}"')
    if isinstance(value, int) and value >= 2**30 and value % 2**30 == 0:
        return f"{_code(str(value))} ({value // 2**30} GiB)"
    return _code(str(value))


def undescribed_keys() -> list[str]:
    from pytest_advrobust import config

    return sorted((config.MODEL_KEYS | config.TOP_ONLY_KEYS | config.CHECK_KEYS) - KEY_MEANINGS.keys())


def _meaning(key: str) -> str:
    return KEY_MEANINGS.get(key, "(not described yet: add it to KEY_MEANINGS in docs/_ext/advrobust_tables.py)")


def config_keys_markdown(which: str) -> str:
    from pytest_advrobust import config

    if which == "model":
        defaults = _defaults(config.ModelSpec)
        required = {"model", "data"}
        first = ["model", "data", "weights", "name"]
        keys = sorted(config.MODEL_KEYS | config.TOP_ONLY_KEYS,
                      key=lambda k: (first.index(k) if k in first else len(first), k in ("checks", "models"), k))
        rows = [[_code(k), "required" if k in required else _shown(k, defaults),
                 "yes" if k in config.INHERITED_KEYS else "", _meaning(k)] for k in keys]
        return _table(["key", "default", "inherited by named models", "meaning"], rows)
    if which == "check":
        defaults = _defaults(config.CheckSpec)
        order = ["attack", "eps", "min-accuracy", "max-drop"]
        keys = sorted(config.CHECK_KEYS, key=lambda k: (order.index(k) if k in order else len(order), k))
        model_keys = config.MODEL_KEYS
        # a key of both tables whose check default is None falls back to its model's value
        rows = [[_code(k), "required" if k == "attack" else
                 ("the model's" if k in model_keys and defaults.get(k) is None else _shown(k, defaults)),
                 _meaning(k)] for k in keys]
        return _table(["key", "default", "meaning"], rows)
    raise ValueError(f"advrobust-config-keys takes 'model' or 'check', not {which!r}")


# -- hooks -----------------------------------------------------------------------------------
def hooks() -> list[tuple[str, Any]]:
    from pytest_advrobust import hookspecs

    return [(name, getattr(hookspecs, name)) for name in sorted(vars(hookspecs))
            if name.startswith("pytest_advrobust_") and callable(getattr(hookspecs, name))]


def _docstring(text: str) -> str:
    text = inspect.cleandoc(text)
    text = re.sub(r":(?:func|class|mod|data|meth|attr):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def hooks_markdown() -> str:
    parts = []
    for name, function in hooks():
        parameters = ", ".join(inspect.signature(function).parameters)
        spec = getattr(function, "pytest_spec", {}) or {}
        first = " The first answer that is not `None` wins (`firstresult`)." if spec.get("firstresult") else ""
        parts.append(f"**`{name}({parameters})`**{first}\n\n{_docstring(function.__doc__ or '')}\n")
    return "\n".join(parts)


# -- Sphinx ----------------------------------------------------------------------------------
def setup(app: Any) -> dict[str, Any]:
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util import logging
    from sphinx.util.docutils import SphinxDirective

    logger = logging.getLogger(__name__)

    class Generated(SphinxDirective):
        optional_arguments = 1

        def text(self) -> str:
            raise NotImplementedError

        def run(self) -> list[Any]:
            container = nodes.container()
            self.state.nested_parse(StringList(self.text().splitlines(), source=self.get_source_info()[0]),
                                    self.content_offset, container)
            return container.children

    class Options(Generated):
        def text(self) -> str:
            return options_markdown()

    class MergeHelp(Generated):
        def text(self) -> str:
            return merge_help()

    class ConfigKeys(Generated):
        required_arguments = 1
        optional_arguments = 0

        def text(self) -> str:
            for key in undescribed_keys():
                logger.warning(f"config key {key!r} has no meaning in KEY_MEANINGS "
                               "(docs/_ext/advrobust_tables.py): add one line",
                               location=self.get_location())
            return config_keys_markdown(self.arguments[0])

    class Hooks(Generated):
        def text(self) -> str:
            return hooks_markdown()

    app.add_directive("advrobust-options", Options)
    app.add_directive("advrobust-merge-help", MergeHelp)
    app.add_directive("advrobust-config-keys", ConfigKeys)
    app.add_directive("advrobust-hooks", Hooks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
