"""Read and run the shipped CI recipes without a CI runner (and without PyYAML).

``parse_yaml`` reads the subset of YAML the recipes use: block mappings and lists, ``|``
block scalars, quoted and plain scalars, ``[a, b]`` flow lists and comments.
``GitHubRun`` executes a GitHub Actions job the way a runner does: ``run:`` steps in bash
(``-eo pipefail``) with the runner's variables (``GITHUB_STEP_SUMMARY``, ``GITHUB_PATH``,
``GITHUB_EVENT_NAME``, ``GITHUB_REF``), ``if:`` conditions, and the ``uses:`` steps the
recipe needs simulated: caches (a dict standing for GitHub's cache store), artifact
uploads (which record the paths they would upload and, given an ``artifacts`` folder, keep a
copy there, standing for GitHub's artifact store) and downloads from that store. A matrix
job runs once per ``matrix`` given (``${{ matrix.NAME }}``); ``needs:`` is the caller's
order of runs.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


# -- a small YAML reader ----------------------------------------------------------------
def parse_yaml(text: str) -> Any:
    lines = text.splitlines()
    start = _skip(lines, 0)
    value, end = _node(lines, start, _indent(lines[start]))
    if _skip(lines, end) < len(lines):
        raise ValueError(f"unparsed YAML from line {end + 1}: {lines[end]!r}")
    return value


def _skip(lines: list[str], i: int) -> int:
    while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
        i += 1
    return i


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_item(line: str) -> bool:
    stripped = line.lstrip()
    return stripped == "-" or stripped.startswith("- ")


def _node(lines: list[str], i: int, indent: int) -> tuple[Any, int]:
    return _list(lines, i, indent) if _is_item(lines[i]) else _mapping(lines, i, indent)


def _list(lines: list[str], i: int, indent: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    while True:
        i = _skip(lines, i)
        if i >= len(lines) or _indent(lines[i]) != indent or not _is_item(lines[i]):
            return out, i
        text = lines[i].strip()[1:].strip()
        if re.match(r"^[\w.\-]+:(\s|$)", text):  # "- key: value": a mapping item
            item, i = _mapping(lines, i + 1, indent + 2, first=text)
            out.append(item)
        else:
            out.append(_scalar(text))
            i += 1


def _mapping(lines: list[str], i: int, indent: int, first: str | None = None) -> tuple[dict, int]:
    out: dict[str, Any] = {}
    pending = [first] if first is not None else []
    while True:
        if pending:
            text = pending.pop()
        else:
            i = _skip(lines, i)
            if i >= len(lines) or _indent(lines[i]) != indent or _is_item(lines[i]):
                if i < len(lines) and _indent(lines[i]) > indent:
                    raise ValueError(f"unexpected indentation at line {i + 1}: {lines[i]!r}")
                return out, i
            text = lines[i].strip()
            i += 1
        key, colon, rest = text.partition(":")
        if not colon:
            raise ValueError(f"expected 'key: value', got {text!r}")
        rest = _uncomment(rest.strip())
        if rest in ("|", "|-"):
            out[key], i = _block(lines, i, indent, keep_final_newline=rest == "|")
        elif rest:
            out[key] = _scalar(rest)
        else:
            j = _skip(lines, i)
            if j < len(lines) and (_indent(lines[j]) > indent
                                   or (_indent(lines[j]) == indent and _is_item(lines[j]))):
                out[key], i = _node(lines, j, _indent(lines[j]))
            else:
                out[key] = None


def _block(lines: list[str], i: int, indent: int, keep_final_newline: bool) -> tuple[str, int]:
    body: list[str] = []
    block_indent = None
    while i < len(lines):
        line = lines[i]
        if line.strip():
            if _indent(line) <= indent:
                break
            block_indent = _indent(line) if block_indent is None else block_indent
            body.append(line[block_indent:])
        else:
            body.append("")
        i += 1
    while body and not body[-1]:
        body.pop()
    return "\n".join(body) + ("\n" if keep_final_newline else ""), i


def _uncomment(text: str) -> str:
    if text.startswith(("'", '"')):
        return text
    return re.split(r"\s#", text, maxsplit=1)[0].strip()


def _scalar(text: str) -> Any:
    text = _uncomment(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(part.strip()) for part in text[1:-1].split(",") if part.strip()]
    return text


# -- a small GitHub Actions runner ------------------------------------------------------
@dataclass
class StepResult:
    name: str
    ran: bool
    returncode: int = 0
    output: str = ""


@dataclass
class GitHubRun:
    """One job of a workflow, run in ``workspace`` as if for ``event`` on ``ref``."""

    workflow: dict
    workspace: Path
    event: str
    ref: str
    env: dict[str, str]
    caches: dict[str, Path] = field(default_factory=dict)  # key -> saved copy
    uploaded: dict[str, list[Path]] = field(default_factory=dict)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    steps: list[StepResult] = field(default_factory=list)
    cache_root: Path | None = None
    skip: set[str] = field(default_factory=set)  # step names the test has done already
    matrix: dict[str, str] = field(default_factory=dict)  # this run's matrix values
    artifacts: Path | None = None  # the artifact store shared by the jobs of one workflow run

    def run(self, job: str) -> bool:
        """Run every step of ``job``; whether the job succeeded."""
        summary = self.workspace / "_step_summary.md"
        github_path = self.workspace / "_github_path"
        summary.touch()
        github_path.touch()
        failed = False
        for step in self.workflow["jobs"][job]["steps"]:
            name = step.get("name") or step.get("uses") or step.get("run", "").splitlines()[0]
            condition = step.get("if")
            wants = self._condition(condition) if condition else True
            if (failed and "always()" not in (condition or "")) or not wants or name in self.skip:
                self.steps.append(StepResult(name, ran=False))
                continue
            if "run" in step:
                result = self._shell(name, step["run"], summary, github_path)
            else:
                result = self._action(name, step)
            self.steps.append(result)
            failed = failed or result.returncode != 0
        return not failed

    @property
    def summary(self) -> str:
        return (self.workspace / "_step_summary.md").read_text()

    def step(self, name: str) -> StepResult:
        return next(s for s in self.steps if s.name == name)

    # -- expressions ----------------------------------------------------------------------
    def _context(self, name: str) -> str:
        if name == "github.event_name":
            return self.event
        if name == "github.ref":
            return self.ref
        if name == "github.sha":
            return "0123abc"
        if name == "runner.os":
            return "Linux"
        if name.startswith("matrix.") and name[len("matrix."):] in self.matrix:
            return self.matrix[name[len("matrix."):]]
        match = re.fullmatch(r"steps\.([\w\-]+)\.outputs\.([\w\-]+)", name)
        if match:
            return self.outputs.get(match.group(1), {}).get(match.group(2), "")
        raise ValueError(f"the test runner does not know the context {name!r}")

    def _condition(self, expression: str) -> bool:
        expression = expression.strip()
        if expression == "always()":
            return True
        match = re.fullmatch(r"([\w.\-]+) (==|!=) '([^']*)'", expression)
        if not match:
            raise ValueError(f"the test runner cannot evaluate if: {expression!r}")
        equal = self._context(match.group(1)) == match.group(3)
        return equal if match.group(2) == "==" else not equal

    def _substitute(self, text: str) -> str:
        def value(match: re.Match) -> str:
            inner = match.group(1).strip()
            return "hash" if inner.startswith("hashFiles(") else self._context(inner)

        return re.sub(r"\$\{\{(.*?)\}\}", value, text)

    # -- steps ----------------------------------------------------------------------------
    def _shell(self, name: str, script: str, summary: Path, github_path: Path) -> StepResult:
        added = [line for line in github_path.read_text().splitlines() if line]
        env = {**self.env, **{k: str(v) for k, v in (self.workflow.get("env") or {}).items()},
               "GITHUB_ACTIONS": "true", "CI": "true", "GITHUB_EVENT_NAME": self.event,
               "GITHUB_REF": self.ref, "GITHUB_STEP_SUMMARY": str(summary),
               "GITHUB_PATH": str(github_path), "GITHUB_WORKSPACE": str(self.workspace)}
        env["PATH"] = os.pathsep.join([*reversed(added), env.get("PATH", "")])
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                               self._substitute(script)],
                              cwd=self.workspace, env=env, capture_output=True, text=True,
                              timeout=600)
        return StepResult(name, ran=True, returncode=done.returncode,
                          output=done.stdout + done.stderr)

    def _action(self, name: str, step: dict) -> StepResult:
        uses, given = step["uses"], {k: self._substitute(str(v)) for k, v in (step.get("with") or {}).items()}
        action = uses.split("@")[0]
        if action in ("actions/checkout", "actions/setup-python"):
            return StepResult(name, ran=True)  # the workspace and python are given
        if action == "actions/cache" and given.get("path") == ".venv":
            # the test provides the environment: a hit, as on every run after the first
            self.outputs[step.get("id", "")] = {"cache-hit": "true"}
            return StepResult(name, ran=True)
        if action == "actions/cache/restore":
            keys = [given["key"]] + [k for k in given.get("restore-keys", "").splitlines() if k]
            for key in keys:
                hits = sorted(k for k in self.caches if k == key or k.startswith(key))
                if hits:
                    shutil.copytree(self.caches[hits[-1]], self.workspace / given["path"],
                                    dirs_exist_ok=True)
                    self.outputs[step.get("id", "")] = {"cache-hit": str(hits[-1] == given["key"]).lower()}
                    break
            return StepResult(name, ran=True)
        if action == "actions/cache/save":
            source = self.workspace / given["path"]
            if not source.exists():
                return StepResult(name, ran=True, returncode=1, output=f"nothing at {source}")
            assert self.cache_root is not None
            copy = self.cache_root / given["key"]
            shutil.copytree(source, copy, dirs_exist_ok=True)
            self.caches[given["key"]] = copy
            return StepResult(name, ran=True)
        if action == "actions/upload-artifact":
            paths = [self.workspace / p for p in given["path"].splitlines() if p.strip()]
            missing = [str(p) for p in paths if not p.exists()]
            self.uploaded[given["name"]] = paths
            if missing and given.get("if-no-files-found", "warn") == "error":
                return StepResult(name, ran=True, returncode=1, output=f"missing: {missing}")
            if self.artifacts is not None:
                store = self.artifacts / given["name"]
                for path in (p for p in paths if p.exists()):
                    copy = store / path.relative_to(self.workspace)
                    if path.is_dir():
                        shutil.copytree(path, copy, dirs_exist_ok=True)
                    else:
                        copy.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, copy)
            return StepResult(name, ran=True, output=f"missing: {missing}" if missing else "")
        if action == "actions/download-artifact":
            return self._download(name, given)
        raise ValueError(f"the test runner does not simulate {uses!r}; extend tests/workflow.py")

    def _download(self, name: str, given: dict[str, str]) -> StepResult:
        """``pattern`` + ``merge-multiple: true`` (every matching artifact's files into the
        workspace), as the sharded recipe uses it; an artifact's files keep the paths they
        were uploaded from, relative to the workspace (GitHub strips the common folder of a
        multi-path upload; each shard uploads one file at the root, where both agree)."""
        assert self.artifacts is not None, "give the run an artifact store to download from"
        if given.get("merge-multiple") != "true" or "pattern" not in given:
            raise ValueError("the test runner downloads only pattern + merge-multiple: true")
        found = sorted(p for p in self.artifacts.iterdir() if fnmatch.fnmatchcase(p.name, given["pattern"]))
        for artifact in found:
            shutil.copytree(artifact, self.workspace, dirs_exist_ok=True)
        return StepResult(name, ran=True, output=f"downloaded {[p.name for p in found]}")
