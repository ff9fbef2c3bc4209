"""``[tool.advrobust]`` -> frozen dataclasses. Every validation error about keys lives here.

Nothing in this module imports torch: a configuration is read and checked in full before
any model loads, so a typo costs a second, not a model load.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .archives import DEFAULT_MAX_READ_BYTES
from .errors import ConfigError
from .gate import DECIDE_EARLY_ERROR, MAX_DECIDE_EARLY_ERROR
from .results import format_eps

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "AttackOptions",
    "Choice",
    "CheckSpec",
    "ModelSpec",
    "Normalize",
    "RobustnessConfig",
    "load_config",
    "masking_probe",
    "parse_config",
]

SECTION = "tool.advrobust"

#: Keys that describe one model; at the top level they also set defaults for named models.
MODEL_KEYS = {
    "name", "model", "weights", "data", "input-range", "normalize", "batch-size",
    "max-samples", "seed", "output", "output-kind", "device", "allow-pickle", "bpda", "checks",
    "max-regression", "max-read-bytes", "masking-probe", "masking-probe-samples",
    "masking-probe-queries", "eot-samples", "decide-early", "decide-early-error",
}
#: Model keys that named models inherit from the top level when they do not set them.
INHERITED_KEYS = {
    "data", "input-range", "normalize", "batch-size", "max-samples", "seed", "device",
    "output-kind", "allow-pickle", "bpda", "checks", "max-regression", "max-read-bytes",
    "masking-probe", "masking-probe-samples", "masking-probe-queries", "eot-samples",
    "decide-early", "decide-early-error",
}
TOP_ONLY_KEYS = {"models"}
#: how many configuration errors one message lists (the rest are counted)
MAX_LISTED = 10
CHECK_KEYS = {"attack", "eps", "min-accuracy", "max-drop", "max-regression", "report-only",
              "allow-masking", "masking-probe", "masking-probe-samples", "masking-probe-queries",
              "decide-early", "decide-early-error"}
#: the check keys of the masking probe, which a check may set to override its model's
PROBE_KEYS = ("masking-probe", "masking-probe-samples", "masking-probe-queries")
#: the masking probe's defaults: every per-sample gradient gate is cross-checked by a
#: square attack of at most this many queries on this many of the samples it evaluates
#: (a random subsample, see engine.py); see
#: docs: "Masking", section "The masking probe: a black-box attack on the same samples"
MASKING_PROBE_SAMPLES = 100
MASKING_PROBE_QUERIES = 50
#: a randomised model's gradients are averaged over this many draws (EOT), and each
#: figure counts a sample correct only if it is correct in this many draws
EOT_SAMPLES = 8

_CALLABLE_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
#: the one rule for model names (they become test ids and file names): an ASCII letter or
#: digit, then letters, digits, '_', '-', '.'; no '..'; at most 100 characters
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_MODEL_SUFFIXES = {".onnx": "onnx", ".pt2": "export", ".pt": "torchscript", ".pth": "torchscript",
                   ".ts": "torchscript", ".jit": "torchscript"}


class Choice(str):
    """An attack option's declared default (a string, and equal to it) whose value must be
    one of ``values``: checked when the config is read, like every other option type."""

    values: tuple[str, ...]

    def __new__(cls, default: str, values: Sequence[str]) -> "Choice":
        if default not in values:
            raise ValueError(f"the default {default!r} is not one of {tuple(values)!r}")
        choice = super().__new__(cls, default)
        choice.values = tuple(values)
        return choice

    @property
    def default(self) -> str:
        return str(self)


@dataclass(frozen=True)
class AttackOptions:
    """What the config layer needs to know about an attack to validate a check."""

    uses_eps: bool = True
    #: extra check keys the attack accepts, with their defaults: the type of a non-None
    #: default is enforced (ints are accepted where a float is expected); a type such as
    #: ``float`` declares a typed option with no default; None accepts any value
    options: Mapping[str, Any] = field(default_factory=dict)
    #: numeric options that must be > 0 (a zero would quietly turn the attack into another)
    positive: frozenset[str] = frozenset()
    #: ``validate(options) -> message or None``: rules across options (checked with defaults)
    validate: Any = None
    #: the option naming other models of the config to craft inputs on (transfer attacks)
    surrogate_key: str | None = None
    #: its gates are cross-checked by the black-box masking probe (per-sample gradient
    #: attacks), so the check may set the ``masking-probe`` keys
    cross_checked: bool = False


@dataclass(frozen=True)
class Normalize:
    """Per-channel normalisation the model expects: ``(x - mean) / std``, applied inside."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class CheckSpec:
    """One ``[[checks]]`` entry: an attack, its epsilons and its thresholds."""

    attack: str
    eps: tuple[float, ...]
    min_accuracy: float | None = None
    max_drop: float | None = None
    max_regression: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    index: int = 0
    #: figures only, no verdict (``report-only = true``): shown as MEASURED, never PASS
    report_only: bool = False
    #: ``allow-masking = true``: a gradient gate whose gradients are masked reports it but
    #: does not fail for it (see docs: "Masking", section "When the gate says masking suspected")
    allow_masking: bool = False
    #: the check's own ``masking-probe`` keys (None: its model's; see :func:`masking_probe`)
    masking_probe: bool | None = None
    masking_probe_samples: int | None = None
    masking_probe_queries: int | None = None
    #: ``decide-early`` / ``decide-early-error`` of this check (None: its model's)
    decide_early: bool | None = None
    decide_early_error: float | None = None

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass(frozen=True)
class ModelSpec:
    """One model under test, its data, its input space and its checks."""

    name: str
    model: str
    data: str
    root: Path
    source: Path
    weights: str | None = None
    input_range: tuple[float, float] = (0.0, 1.0)
    normalize: Normalize | None = None
    batch_size: int = 256
    max_samples: int | None = None
    seed: int = 0
    output: str | int | None = None  # a name, or an index into a tuple of outputs
    output_kind: str = "auto"
    device: str = "auto"
    allow_pickle: bool = False
    #: straight-through (BPDA) gradients through a plain module's rounding, integer casts
    #: and quantisation (ONNX, TorchScript and torch.export graphs get them always)
    bpda: bool = False
    max_regression: float | None = None
    #: the most bytes one data or model archive may expand to when read (see archives.py)
    max_read_bytes: int = DEFAULT_MAX_READ_BYTES
    #: the black-box cross-check of gradient gates (see :func:`masking_probe`)
    masking_probe: bool = True
    masking_probe_samples: int = MASKING_PROBE_SAMPLES
    masking_probe_queries: int = MASKING_PROBE_QUERIES
    #: draws a randomised model's gradients are averaged over and its figures counted on
    eot_samples: int = EOT_SAMPLES
    #: ``decide-early``: stop each gate once its verdict is settled (None: not said, so the
    #: command line decides; see ``gate.decide_early_error``), at most this chance of error
    decide_early: bool | None = None
    decide_early_error: float = DECIDE_EARLY_ERROR
    checks: tuple[CheckSpec, ...] = ()
    #: the TOML table this model was read from, for error messages
    table: str = SECTION

    @property
    def model_format(self) -> str:
        """``onnx``, ``export``, ``torchscript``, ``factory``, or ``unknown`` (left to a
        ``pytest_advrobust_load_model`` hook)."""
        return model_format(self.model)

    def resolve(self, ref: str) -> Path:
        """A path from the config, relative to the directory of the file that holds it."""
        path = Path(ref)
        return path if path.is_absolute() else self.root / path

    def key(self, name: str) -> str:
        """How a person finds this model's ``name`` key in the file."""
        return f"{self.source.name} [{self.table}] {name}"


@dataclass(frozen=True)
class RobustnessConfig:
    """Everything ``[tool.advrobust]`` says, validated."""

    path: Path
    models: tuple[ModelSpec, ...]

    def model(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.models)


def masking_probe(spec: ModelSpec, check: CheckSpec) -> tuple[int, int] | None:
    """``(samples, queries)`` of the masking probe of ``check`` (its own keys, else its
    model's), or None when ``masking-probe = false`` turns it off."""
    def own(value: Any, inherited: Any) -> Any:
        return inherited if value is None else value

    if not own(check.masking_probe, spec.masking_probe):
        return None
    return (own(check.masking_probe_samples, spec.masking_probe_samples),
            own(check.masking_probe_queries, spec.masking_probe_queries))


def model_format(ref: str) -> str:
    suffix = Path(ref).suffix.lower()
    if suffix in _MODEL_SUFFIXES:
        return _MODEL_SUFFIXES[suffix]
    if _CALLABLE_REF.match(ref):
        return "factory"
    return "unknown"


def load_config(path: Path, attacks: Mapping[str, AttackOptions], *, custom_models: bool = False,
                custom_data: bool = False) -> RobustnessConfig | None:
    """Read ``[tool.advrobust]`` from a pyproject.toml; ``None`` when the file has none.

    ``custom_models`` / ``custom_data``: a ``pytest_advrobust_load_model`` /
    ``load_data`` hook is implemented, so references the built-ins do not know are let
    through for it to claim."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the file ({exc.strerror}).", where=str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); TOML "
                          "files must be UTF-8. Re-save the file as UTF-8 in your editor.",
                          where=str(path)) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"is not valid TOML ({exc}). Fix the syntax error it names.",
                          where=str(path)) from None
    section = document.get("tool", {}).get("advrobust")
    if section is None:
        return None
    return parse_config(section, path=path, attacks=attacks, custom_models=custom_models,
                        custom_data=custom_data)


def parse_config(section: Any, *, path: Path, attacks: Mapping[str, AttackOptions],
                 others: Sequence[ModelSpec] = (), custom_models: bool = False,
                 custom_data: bool = False) -> RobustnessConfig:
    """Validate a ``[tool.advrobust]`` table (already parsed from TOML); ``others`` are
    models defined elsewhere that a check's ``surrogate`` may also name; ``custom_models`` /
    ``custom_data`` let references through that a user's loader hook will claim."""
    reader = _Reader(path, attacks, custom_models=custom_models, custom_data=custom_data)
    config = reader.config(section)
    reader.surrogates(config.models, others)
    return config


class _Reader:
    """Walks the table once, naming the exact key of every mistake it finds."""

    def __init__(self, path: Path, attacks: Mapping[str, AttackOptions], *,
                 custom_models: bool = False, custom_data: bool = False) -> None:
        self.path = path
        self.attacks = attacks
        self.custom_models = custom_models
        self.custom_data = custom_data

    def fail(self, key: str, message: str) -> ConfigError:
        error = ConfigError(f"{key}: {message}", where=str(self.path))
        error.detail = f"{key}: {message}"  # type: ignore[attr-defined]  (for a list of several)
        return error

    def several(self, errors: list[ConfigError]) -> ConfigError:
        """One error for all the mistakes found (each model table and each check is read
        even after an error elsewhere, so a run reports them all at once)."""
        if len(errors) == 1:
            return errors[0]
        listed = [getattr(e, "detail", str(e)) for e in errors]
        shown = "\n".join(f"  {i}. {text}" for i, text in enumerate(listed[:MAX_LISTED], 1))
        more = f"\n  ... and {len(listed) - MAX_LISTED} more" if len(listed) > MAX_LISTED else ""
        error = ConfigError(f"{len(errors)} configuration errors:\n{shown}{more}", where=str(self.path))
        error.errors = errors  # type: ignore[attr-defined]
        return error

    # -- top level ------------------------------------------------------------------------
    def config(self, section: Any) -> RobustnessConfig:
        if not isinstance(section, dict):
            raise self.fail(f"[{SECTION}]", "must be a table.")
        models: list[ModelSpec] = []
        errors: list[ConfigError] = []
        section = self.known(section, MODEL_KEYS | TOP_ONLY_KEYS, f"[{SECTION}]", errors)
        if "model" in section:
            try:
                models.append(self.model(section, {}, name=None))
            except ConfigError as exc:
                errors.extend(getattr(exc, "errors", [exc]))
        elif "weights" in section or "name" in section or "output" in section:
            errors.append(self.fail(f"[{SECTION}]", "sets 'weights', 'name' or 'output' without 'model'. "
                            "Add model = \"path/to/model.onnx\" (or \"pkg.mod:factory\"), or move "
                            f"these keys into a [{SECTION}.models.NAME] table."))
        named = section.get("models", {})
        if not isinstance(named, dict):
            raise self.fail(f"[{SECTION}] models", "must be a table of tables, "
                            f"one per model: [{SECTION}.models.NAME].")
        defaults = {key: value for key, value in section.items() if key in INHERITED_KEYS}
        for name, table in named.items():
            try:
                if isinstance(table, dict):
                    table = self.known(table, MODEL_KEYS - {"name"}, f"[{SECTION}.models.{name}]", errors)
                models.append(self.named_model(name, table, defaults, models))
            except ConfigError as exc:
                errors.extend(getattr(exc, "errors", [exc]))
        if errors:
            raise self.several(errors)
        if not models:
            raise self.fail(f"[{SECTION}]", "names no model. Add model = \"path/to/model.onnx\" "
                            f"(or \"pkg.mod:factory\"), or one [{SECTION}.models.NAME] table per model.")
        return RobustnessConfig(path=self.path, models=tuple(models))

    def named_model(self, name: str, table: Any, defaults: dict, models: list[ModelSpec]) -> ModelSpec:
        """A ``[tool.advrobust.models.NAME]`` table (``models``: those read before it)."""
        self.model_name(name, f"[{SECTION}.models.{_toml_key(name)}]", table=True)
        if not isinstance(table, dict):
            raise self.fail(f"[{SECTION}.models] {name}", "must be a table.")
        clash = next((spec.name for spec in models if spec.name.lower() == name.lower()), None)
        if clash == name:
            raise self.fail(f"[{SECTION}.models.{name}]", f"the model name {name!r} is used "
                            "twice (the top-level model has it too). Give the top-level model "
                            "another name = \"...\" or rename the table.")
        if clash is not None:
            raise self.fail(f"[{SECTION}.models.{name}]", f"the model names {clash!r} and "
                            f"{name!r} differ only in case: their report and plot files would "
                            "overwrite each other on macOS and Windows. Rename one.")
        return self.model(table, defaults, name=name)

    # -- one model ------------------------------------------------------------------------
    def model(self, table: dict, defaults: dict, *, name: str | None) -> ModelSpec:
        where = f"[{SECTION}]" if name is None else f"[{SECTION}.models.{name}]"
        allowed = MODEL_KEYS | TOP_ONLY_KEYS if name is None else MODEL_KEYS - {"name"}
        self.unknown_keys(table, allowed, where)
        merged = {**defaults, **table}

        ref = self.string(merged, "model", where, required=True)
        fmt = model_format(ref)
        if fmt == "unknown" and not self.custom_models:
            raise self.fail(f"{where} model", f"{ref!r} is neither a model file (.onnx, TorchScript "
                            ".pt/.pth, torch.export .pt2) nor a factory \"pkg.module:callable\".")
        weights = self.string(merged, "weights", where)
        if weights is not None and fmt not in ("factory", "unknown"):
            raise self.fail(f"{where} weights", f"only applies to a factory model "
                            f"(\"pkg.module:callable\"); {ref!r} is a {fmt} file that carries its "
                            "own weights. Remove weights.")
        if name is None:
            name = self.string(merged, "name", where) or _default_name(ref)
            self.model_name(name, f"{where} name")
        data = self.string(merged, "data", where, required=True)
        if not (data.lower().endswith(".npz") or _CALLABLE_REF.match(data) or self.custom_data):
            raise self.fail(f"{where} data", f"{data!r} is neither a .npz file (with arrays x "
                            "and y) nor a loader \"pkg.module:callable\".")
        low, high = self.input_range(merged, where)
        output_kind = self.choice(merged, "output-kind", where, ("auto", "logits", "probabilities"), "auto")
        device = self.string(merged, "device", where) or "auto"
        if not re.match(r"^(auto|cpu|cuda(:\d+)?)$", device):
            raise self.fail(f"{where} device", f"{device!r} is not one of \"auto\", \"cpu\", \"cuda\" "
                            "or \"cuda:N\".")
        spec = ModelSpec(
            name=name,
            model=ref,
            data=data,
            root=self.path.parent,
            source=self.path,
            weights=weights,
            input_range=(low, high),
            normalize=self.normalize(merged, where),
            batch_size=self.integer(merged, "batch-size", where, 256, minimum=1),
            max_samples=self.integer(merged, "max-samples", where, None, minimum=1),
            seed=self.integer(merged, "seed", where, 0, minimum=0),
            output=(self.integer(merged, "output", where, None, minimum=0)
                    if isinstance(merged.get("output"), int) else self.string(merged, "output", where)),
            output_kind=output_kind,
            device=device,
            allow_pickle=self.boolean(merged, "allow-pickle", where, False),
            bpda=self.boolean(merged, "bpda", where, False),
            max_regression=self.fraction(merged, "max-regression", where),
            max_read_bytes=self.integer(merged, "max-read-bytes", where, DEFAULT_MAX_READ_BYTES,
                                        minimum=1),
            masking_probe=self.boolean(merged, "masking-probe", where, True),
            masking_probe_samples=self.integer(merged, "masking-probe-samples", where,
                                               MASKING_PROBE_SAMPLES, minimum=1),
            masking_probe_queries=self.integer(merged, "masking-probe-queries", where,
                                               MASKING_PROBE_QUERIES, minimum=1),
            eot_samples=self.integer(merged, "eot-samples", where, EOT_SAMPLES, minimum=1),
            decide_early=self.boolean(merged, "decide-early", where, None),
            decide_early_error=self.error_rate(merged, where) or DECIDE_EARLY_ERROR,
            checks=self.checks(merged.get("checks"), where, (low, high)),
            table=where.strip("[]"),
        )
        return spec

    def checks(self, raw: Any, where: str, bounds: tuple[float, float]) -> tuple[CheckSpec, ...]:
        if raw is None:
            raise self.fail(where, "has no checks. Add at least one [[...checks]] table, e.g.\n"
                            "  [[tool.advrobust.checks]]\n  attack = \"fgsm\"\n  eps = 0.1\n"
                            "  min-accuracy = 0.5")
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            raise self.fail(f"{where} checks", "must be an array of tables ([[...checks]]).")
        if not raw:
            raise self.fail(f"{where} checks", "is empty; add at least one check.")
        seen: dict[tuple, int] = {}
        out = []
        errors: list[ConfigError] = []
        for index, table in enumerate(raw):
            try:
                check = self.check(table, f"{where} checks[{index}]", bounds, index)
            except ConfigError as exc:
                errors.extend(getattr(exc, "errors", [exc]))
                continue
            for eps in check.eps:
                signature = (check.attack, eps, tuple(sorted(check.options.items(), key=str)))
                if signature in seen:
                    raise self.fail(f"{where} checks[{index}]", f"repeats {check.attack} at eps={format_eps(eps)} "
                                    f"from checks[{seen[signature]}]. Merge the two checks.")
                seen[signature] = index
            out.append(check)
        if errors:
            raise self.several(errors)
        return tuple(out)

    def check(self, table: dict, where: str, bounds: tuple[float, float], index: int) -> CheckSpec:
        """One ``[[...checks]]`` table. Every mistake in it is reported together: an unknown
        attack does not hide a misspelt key or a bad threshold of the same check."""
        errors: list[ConfigError] = []

        def read(how: Callable[[], Any], default: Any = None) -> Any:
            try:
                return how()
            except ConfigError as exc:
                errors.extend(getattr(exc, "errors", [exc]))
                return default

        attack = read(lambda: self.string(table, "attack", where, required=True))
        info = self.attacks.get(attack) if attack is not None else None
        if attack is not None and info is None:
            errors.append(self.fail(f"{where} attack", f"unknown attack {attack!r}."
                                    f"{_did_you_mean(attack, self.attacks)} Known attacks: "
                                    f"{', '.join(sorted(self.attacks))}."))
        if info is not None:
            allowed = CHECK_KEYS | set(info.options)
            self.known(table, allowed, where, errors, first=f" (attack {attack!r} accepts: "
                                                         f"{', '.join(sorted(allowed))})")
        else:  # which attack was meant is unknown: only keys that no attack takes are wrong
            self.known(table, CHECK_KEYS.union(*(o.options for o in self.attacks.values())),
                       where, errors)
        eps: tuple[float, ...] = (0.0,)
        if info is None or info.uses_eps:
            if "eps" in table or info is not None:
                eps = read(lambda: self.eps(table, where, bounds), (0.0,))
        elif "eps" in table:
            errors.append(self.fail(f"{where} eps", f"attack {attack!r} takes no eps. Remove it."))
        options = self.check_options(table, where, attack, info, errors) if info is not None else {}
        thresholds = {key: read(lambda key=key: self.fraction(table, key, where))
                      for key in ("min-accuracy", "max-drop", "max-regression")}
        report_only = read(lambda: self.boolean(table, "report-only", where, False), False)
        allow_masking = read(lambda: self.boolean(table, "allow-masking", where, False), False)
        if report_only and any(key in table for key in thresholds):
            given = ", ".join(key for key in thresholds if key in table)
            errors.append(self.fail(f"{where} report-only", f"is true but the check also sets "
                                    f"{given}; a report-only check is measured, never judged. "
                                    "Remove one or the other."))
        if not report_only and "min-accuracy" not in table and "max-drop" not in table:
            errors.append(self.fail(where, f"{attack or 'the check'} has no threshold, so it could "
                                    "never fail. Add min-accuracy (a floor) and/or max-drop (the "
                                    "largest fall from clean accuracy), or report-only = true to "
                                    "measure it without a verdict."))
        probe = read(lambda: self.probe(table, where, attack, info), {}) if info is not None else {}
        decide_early = read(lambda: self.boolean(table, "decide-early", where, None))
        decide_early_error = read(lambda: self.error_rate(table, where))
        if errors:
            raise self.several(errors)
        return CheckSpec(
            attack=attack,
            eps=eps,
            min_accuracy=thresholds["min-accuracy"],
            max_drop=thresholds["max-drop"],
            max_regression=thresholds["max-regression"],
            options=options,
            index=index,
            report_only=report_only,
            allow_masking=allow_masking,
            decide_early=decide_early,
            decide_early_error=decide_early_error,
            **probe,
        )

    def check_options(self, table: dict, where: str, attack: str, info: AttackOptions,
                      errors: list[ConfigError]) -> dict[str, Any]:
        """A check's attack options, typed; each bad one adds its error to ``errors``. The
        attack's own ``validate`` sees them only when each is valid alone."""
        options: dict[str, Any] = {}
        before = len(errors)
        for key, default in info.options.items():
            if key not in table:
                continue
            try:
                options[key] = self.option(table[key], default, f"{where} {key}")
            except ConfigError as exc:
                errors.append(exc)
                continue
            if key in info.positive and isinstance(options[key], (int, float)) \
                    and not isinstance(options[key], bool) and options[key] <= 0:
                errors.append(self.fail(f"{where} {key}", f"must be > 0, not {table[key]!r}: with "
                                        f"{key} = {table[key]!r} attack {attack!r} would not run as "
                                        "configured (and could report another attack's figure). "
                                        "Remove the key for its default or give a positive value."))
        if info.validate is not None and len(errors) == before:
            declared = {k: v for k, v in info.options.items()
                        if v is not None and not isinstance(v, type)}
            problem = info.validate({**declared, **options})
            if problem:
                errors.append(self.fail(where, problem))
        return options

    def probe(self, table: dict, where: str, attack: str, info: AttackOptions) -> dict[str, Any]:
        """A check's own ``masking-probe`` keys (None where it leaves them to its model)."""
        given = [key for key in PROBE_KEYS if key in table]
        if given and not info.cross_checked:
            raise self.fail(f"{where} {given[0]}", f"attack {attack!r} is not cross-checked by the "
                            "masking probe, which checks per-sample gradient attacks (fgsm, pgd, apgd "
                            "and custom attacks that need the model's gradient) against a black-box "
                            "square attack. Remove the key.")
        return {"masking_probe": None if "masking-probe" not in table
                else self.boolean(table, "masking-probe", where, True),
                **{f"masking_probe_{name}": self.integer(table, f"masking-probe-{name}", where, None,
                                                         minimum=1) for name in ("samples", "queries")}}

    # -- across models --------------------------------------------------------------------
    def surrogates(self, models: Sequence[ModelSpec], others: Sequence[ModelSpec]) -> None:
        """A check's ``surrogate`` (transfer attacks) names other models of the config that
        take the same raw inputs; checked here, before any model loads."""
        pool = {spec.name: spec for spec in others}
        pool.update({spec.name: spec for spec in models})
        for spec in models:
            for check in spec.checks:
                option = self.attacks[check.attack].surrogate_key
                if option is None:
                    continue
                key = f"[{spec.table}] checks[{check.index}] {option}"
                if option not in check.options:
                    raise self.fail(key, f"is required by attack {check.attack!r}: the name of "
                                    "another model of this config to craft the inputs on, or "
                                    f"a list of names (an ensemble), e.g. {option} = \"mlp-torch\".")
                value = check.options[option]
                names = (value,) if isinstance(value, str) else value
                if not isinstance(names, tuple) or not names or not all(
                        isinstance(name, str) and name for name in names):
                    raise self.fail(key, f"must be a model name or a non-empty list of names, "
                                    f"not {value!r}.")
                for name in names:
                    if name == spec.name:
                        raise self.fail(key, f"names {name!r}, the model under test itself; a "
                                        "transfer attack crafts its inputs on another model. Name "
                                        f"another model ({', '.join(sorted(set(pool) - {name})) or 'none defined'}) "
                                        "or use fgsm/pgd on this one.")
                    if name not in pool:
                        raise self.fail(key, f"no model named {name!r}.{_did_you_mean(name, pool)} "
                                        f"Models of this config: {', '.join(sorted(pool))}.")
                    if pool[name].input_range != spec.input_range:
                        raise self.fail(key, f"{name!r} takes input-range "
                                        f"{list(pool[name].input_range)} but {spec.name!r} takes "
                                        f"{list(spec.input_range)}; a transferred input must be "
                                        "valid for both. Give both the same input-range (put what "
                                        "differs in normalize).")

    def model_name(self, name: str, key: str, *, table: bool = False) -> None:
        """The one rule for model names (:data:`MODEL_NAME`): they become test ids
        (``pyproject.toml::NAME::fgsm[eps=0.1]``) and file names (artifacts, plots)."""
        if MODEL_NAME.match(name) and ".." not in name:
            return
        fix = (f"Rename the table, e.g. [{SECTION}.models.{_suggest_name(name)}]" if table
               else f"Set name = \"{_suggest_name(name)}\", say")
        raise self.fail(key, f"{name!r} is not a usable model name: a name becomes part of test "
                        "ids and of file names, so it must start with an ASCII letter or digit "
                        "and hold only letters, digits, '_', '-' and '.' (no '..', no '/', ':' "
                        f"or '[', at most 100 characters). {fix}.")

    # -- typed readers --------------------------------------------------------------------
    def known(self, table: dict, allowed: set[str], where: str, errors: list[ConfigError],
              first: str = "") -> dict:
        """``table`` without its unknown keys, each of which adds an error to ``errors`` (so
        the rest of the table is still read and its mistakes reported in the same run);
        ``first``: how the first error lists the allowed keys (default: all of them)."""
        listed = False
        for key in table:
            if key not in allowed:
                try:  # the allowed keys are listed once per table, not once per mistake
                    self.unknown_keys({key: None}, allowed, where,
                                      extra=" (allowed keys: as above)" if listed else first)
                except ConfigError as exc:
                    errors.append(exc)
                listed = True
        return {key: value for key, value in table.items() if key in allowed}

    def unknown_keys(self, table: dict, allowed: set[str], where: str, extra: str = "") -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(f"{where} {key}", f"unknown key.{_did_you_mean(key, allowed)}"
                                f"{extra or ' Allowed keys: ' + ', '.join(sorted(allowed)) + '.'}")

    def string(self, table: dict, key: str, where: str, *, required: bool = False) -> str | None:
        if key not in table:
            if required:
                raise self.fail(f"{where} {key}", "is required.")
            return None
        value = table[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{where} {key}", f"must be a non-empty string, not {value!r}.")
        return value

    def choice(self, table: dict, key: str, where: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(table, key, where) or default
        if value not in choices:
            raise self.fail(f"{where} {key}", f"{value!r} is not one of {', '.join(map(repr, choices))}.")
        return value

    def boolean(self, table: dict, key: str, where: str, default: bool | None) -> bool | None:
        if key not in table:
            return default
        value = table[key]
        if not isinstance(value, bool):
            raise self.fail(f"{where} {key}", f"must be true or false, not {value!r}.")
        return value

    def error_rate(self, table: dict, where: str) -> float | None:
        """``decide-early-error``: the most chance that a verdict decided early differs from
        the verdict on all the data, in (0, MAX_DECIDE_EARLY_ERROR]."""
        key = "decide-early-error"
        if key not in table:
            return None
        value = self.number(table[key], f"{where} {key}")
        if not 0 < value <= MAX_DECIDE_EARLY_ERROR:
            raise self.fail(f"{where} {key}", f"{value:g} is outside (0, {MAX_DECIDE_EARLY_ERROR:g}]: "
                            "it is the most chance that a gate decided early gets another verdict "
                            f"than on all its data (default {DECIDE_EARLY_ERROR:g}).")
        return value

    def integer(self, table: dict, key: str, where: str, default: int | None, *, minimum: int) -> int | None:
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(f"{where} {key}", f"must be a whole number >= {minimum}, not {value!r}.")
        return value

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, not {value!r}.")
        return float(value)

    def fraction(self, table: dict, key: str, where: str) -> float | None:
        if key not in table:
            return None
        value = self.number(table[key], f"{where} {key}") + 0.0  # -0.0 is 0
        if not 0.0 <= value <= 1.0:
            raise self.fail(f"{where} {key}", f"{value:g} is outside [0, 1]; accuracies are "
                            "fractions (write 0.9 for 90%).")
        return value

    def eps(self, table: dict, where: str, bounds: tuple[float, float]) -> tuple[float, ...]:
        if "eps" not in table:
            raise self.fail(f"{where} eps", "is required: one number or a list, in input units "
                            "(e.g. eps = [0.05, 0.1]).")
        raw = table["eps"]
        values = raw if isinstance(raw, list) else [raw]
        if not values:
            raise self.fail(f"{where} eps", "is an empty list; give at least one value.")
        out = []
        width = bounds[1] - bounds[0]
        resolution = float_resolution(bounds)
        for value in values:
            number = self.number(value, f"{where} eps") + 0.0  # -0.0 is 0
            if number < 0:
                raise self.fail(f"{where} eps", f"{number:g} is negative; eps is the L-inf size "
                                "of the perturbation and must be >= 0.")
            if 0 < number < resolution:
                raise self.fail(f"{where} eps", f"{number:g} is below the float32 resolution of "
                                f"input-range [{bounds[0]:g}, {bounds[1]:g}] ({resolution:.3g}, "
                                "the step between neighbouring float32 values at its edge): "
                                "x + eps rounds back to x there, so the attack would not move "
                                "those inputs. eps is in input units: give a larger eps (or 0 to "
                                "measure clean accuracy).")
            if number > width:
                raise self.fail(f"{where} eps", f"{number:g} is larger than the whole input-range "
                                f"(width {width:g}); such a perturbation can replace the input "
                                "entirely. eps is in input units: check input-range.")
            out.append(number)
        if len(set(out)) != len(out):
            raise self.fail(f"{where} eps", f"lists a value twice: {values!r}.")
        return tuple(out)

    def input_range(self, table: dict, where: str) -> tuple[float, float]:
        raw = table.get("input-range", [0.0, 1.0])
        if not isinstance(raw, list) or len(raw) != 2:
            raise self.fail(f"{where} input-range", f"must be [low, high], not {raw!r}.")
        low, high = (self.number(v, f"{where} input-range") for v in raw)
        if not low < high:
            raise self.fail(f"{where} input-range", f"low {low:g} must be below high {high:g}.")
        return low, high

    def normalize(self, table: dict, where: str) -> Normalize | None:
        if "normalize" not in table:
            return None
        raw = table["normalize"]
        key = f"{where} normalize"
        if not isinstance(raw, dict) or set(raw) != {"mean", "std"}:
            raise self.fail(key, "must be { mean = [...], std = [...] } (one value per channel).")
        mean, std = [], []
        for name, out in (("mean", mean), ("std", std)):
            values = raw[name] if isinstance(raw[name], list) else [raw[name]]
            if not values:
                raise self.fail(f"{key}.{name}", "is empty.")
            out.extend(self.number(v, f"{key}.{name}") for v in values)
        if len(mean) != len(std):
            raise self.fail(key, f"mean has {len(mean)} values and std {len(std)}; give one of "
                            "each per channel.")
        if any(s <= 0 for s in std):
            raise self.fail(f"{key}.std", "values must be > 0.")
        return Normalize(tuple(mean), tuple(std))

    def option(self, value: Any, default: Any, key: str) -> Any:
        if isinstance(default, Choice):
            if value not in default.values:
                raise self.fail(key, f"{value!r} is not one of {', '.join(map(repr, default.values))}.")
            return value
        if default is None:  # any value; lists become tuples so a check stays hashable
            return tuple(value) if isinstance(value, list) else value
        if isinstance(default, type):  # a typed option without a default value
            default = default()
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise self.fail(key, f"must be true or false, not {value!r}.")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(key, f"must be a whole number, not {value!r}.")
            if value < 0:
                raise self.fail(key, f"must be >= 0, not {value!r}.")
        elif isinstance(default, float):
            value = self.number(value, key)
            if value < 0:
                raise self.fail(key, f"must be >= 0, not {value!r}.")
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise self.fail(key, f"must be a string, not {value!r}.")
        if isinstance(value, list):
            value = tuple(value)
        return value


def float_resolution(bounds: tuple[float, float]) -> float:
    """The gap between neighbouring float32 values at the edge of ``bounds`` farthest from
    0: an eps below it leaves inputs there unchanged (``x + eps == x``)."""
    import struct

    edge = max(abs(bounds[0]), abs(bounds[1]))
    if edge == 0:
        return 0.0
    try:
        bits = struct.unpack("<I", struct.pack("<f", edge))[0]
    except OverflowError:  # beyond float32: every eps that fits is below its resolution there
        return 0.0
    above = struct.unpack("<f", struct.pack("<I", bits + 1))[0]
    return above - struct.unpack("<f", struct.pack("<I", bits))[0]


def _default_name(ref: str) -> str:
    """A model's name when the config gives none: a file's stem (``models/digits.onnx`` ->
    ``digits``), a factory's module, last component (``digits_demo.mlp:build`` -> ``mlp``):
    factories are mostly called ``build`` or ``make``, their modules say what they make."""
    if model_format(ref) == "factory":
        return _suggest_name(ref.rsplit(":", 1)[0].rsplit(".", 1)[-1])
    return _suggest_name(Path(ref).stem)


def _suggest_name(name: str) -> str:
    """The closest name that follows :data:`MODEL_NAME`."""
    safe = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.-]+", "-", name))
    return re.sub(r"^[^A-Za-z0-9]+", "", safe)[:100].rstrip(".-") or "model"


def _toml_key(name: str) -> str:
    """``name`` as it is written in a table header (quoted unless it is a bare key)."""
    return name if re.match(r"^[A-Za-z0-9_-]+$", name) else json.dumps(name)


def _did_you_mean(word: str, choices: Any) -> str:
    """A suggestion for a misspelt name, case-insensitively (``FGSM`` -> ``fgsm``)."""
    lowered = {choice.lower(): choice for choice in sorted(map(str, choices))}
    if word.lower() in lowered:
        return f" Did you mean {lowered[word.lower()]!r}? (names are case-sensitive)"
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" Did you mean {lowered[close[0]]!r}?" if close else ""
