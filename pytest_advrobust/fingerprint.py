"""What a result was measured on, so a baseline is only compared with a like measurement.

A fingerprint is a small JSON-able dict: the model (file content hash, or factory and
weights hash), the data (source, content hash of a .npz, and the number of samples),
the attack, eps, its options, the seed and the input space. Two results with the same key
whose fingerprints differ in how they were measured (data, n, options, seed, input space)
are "changed config, not compared"; a different model (retrained weights) is compared, and
reported as "model changed since baseline".
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import CheckSpec, ModelSpec

__all__ = ["IDENTITY_FIELDS", "config_fingerprint", "fingerprint", "file_hash", "differences"]

_HASHES: dict[tuple[str, int, int], str] = {}


def file_hash(path: Path) -> str:
    """``sha256:`` and the first 16 hex digits of a file's content (cached by size+mtime);
    ``missing`` when the file cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    slot = (str(path), stat.st_size, stat.st_mtime_ns)
    if slot not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _HASHES[slot] = "sha256:" + digest.hexdigest()[:16]
    return _HASHES[slot]


#: fields that say what is under test, not how it was measured: a baseline is compared
#: across them (a retrained model is exactly what a regression gate must compare)
IDENTITY_FIELDS = ("model",)


def fingerprint(spec: "ModelSpec", check: "CheckSpec", eps: float | None, n: int,
                attack: Any = None, data_digest: str | None = None) -> dict[str, Any]:
    """The measurement's identity beyond its key (model, attack, eps, options). The seed is
    part of it only for an attack that draws random numbers (``attack`` takes ``rng``).
    ``data_digest``: a hash of the samples the pass read (so changed data behind the same
    loader is seen); without it, a ``.npz`` file's content hash."""
    if spec.model_format == "factory":
        model = spec.model + (f" + {file_hash(spec.resolve(spec.weights))}" if spec.weights else "")
    else:
        model = file_hash(spec.resolve(spec.model))
    data = spec.data
    if data.lower().endswith(".npz"):
        data = Path(data).name + ("" if data_digest else f" {file_hash(spec.resolve(data))}")
    if data_digest:
        data = f"{data} {data_digest}"
    return {
        "model": model,
        "data": data,
        "n": n,
        "attack": check.attack,
        "eps": eps,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(check.options.items())},
        "seed": spec.seed if attack is None or _draws_random(attack) else None,
        "input_range": list(spec.input_range),
        "normalize": None if spec.normalize is None else
        {"mean": list(spec.normalize.mean), "std": list(spec.normalize.std)},
    }


def differences(old: dict[str, Any], new: dict[str, Any], *, measurement: bool = False) -> list[str]:
    """The fingerprint fields that differ, by name (empty when either side has none); with
    ``measurement``, only those that change what was measured (not the model's identity)."""
    if not old or not new:
        return []
    fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return [k for k in fields if k not in IDENTITY_FIELDS] if measurement else fields


def _draws_random(attack: Any) -> bool:
    from .attacks import _accepts

    functions = [attack.perturb_function()] + ([attack.fit_function()] if attack.fit is not None else [])
    return any(_accepts(function, "rng") for function in functions)


def config_fingerprint(path: Path) -> str:
    """The identity of a whole ``[tool.advrobust]`` table (and the plugin version), so the
    shards of one evaluation can be told apart from runs of another config. Paths stay as
    written (relative), so runners that check the project out elsewhere agree."""
    import json

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    from . import __version__

    try:
        section = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("tool", {}).get("advrobust")
    except (OSError, ValueError):
        section = None
    text = json.dumps({"advrobust": section, "version": __version__}, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
