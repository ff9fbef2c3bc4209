"""pytest hooks only: options, markers, collection of gate items, fixtures, summary.

Heavy imports (torch, onnxruntime, matplotlib) happen when a gate runs, never here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest

from .errors import AdvRobustError, ConfigError
from .progress import Progress

if TYPE_CHECKING:  # the engine side loads only in a project that configures gates
    from .config import ModelSpec
    from .engine import Request
    from .results import AttackResult
    from .session import Probe, RobustnessSession

__all__ = ["GateItem", "GateFailed"]

SESSION_KEY = pytest.StashKey["RobustnessPlugin"]()


class GateFailed(Exception):
    """A gate's accuracy fell below its thresholds; the message is the whole report."""


# -- options and set-up --------------------------------------------------------------------
def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("advrobust", "adversarial robustness gates (pytest-advrobust)")
    group.addoption("--advrobust-config", metavar="PATH", default=None,
                    help="pyproject.toml holding [tool.advrobust] (default: the one at the rootdir).")
    group.addoption("--advrobust-json", metavar="PATH", default=None,
                    help="write every gate's result as JSON ({\"version\": 1, \"results\": [...]}).")
    group.addoption("--advrobust-artifacts", metavar="DIR", default=None,
                    help="where fitted perturbations are saved (default: .advrobust/ at the rootdir).")
    group.addoption("--advrobust-markdown", metavar="PATH", default=None,
                    help="write the summary as a Markdown table (also appended to "
                         "$GITHUB_STEP_SUMMARY whenever that variable is set).")
    group.addoption("--advrobust-save-baseline", metavar="PATH", default=None,
                    help="save this run's results as a baseline file (JSON, written atomically).")
    group.addoption("--advrobust-baseline", metavar="PATH", default=None,
                    help="compare against a saved baseline: a gate whose accuracy fell fails "
                         "as a regression (rule: max-regression, see docs/reports.md).")
    group.addoption("--advrobust-plots", metavar="DIR", default=None,
                    help="write PNG plots (robustness curves, universal perturbations, "
                         "linearity); needs pip install pytest-advrobust[plots].")
    group.addoption("--advrobust-shard", metavar="K/N", default=None,
                    help="measure every gate on shard K of N of each model's evaluation data "
                         "(batch-aligned); results are partial, gated once the shards' JSON "
                         "reports are merged: python -m pytest_advrobust merge shard-*.json.")
    _add_run_options(group)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "advrobust(model=None): an adversarial robustness gate; on a hand-written test, "
        "`model` picks which configured model the `advrobust` fixture attacks.")
    _share_threads(config, gated=_may_configure_gates(_config_path(config)))
    _register_xdist_group(config)
    plugin = RobustnessPlugin(config)
    config.stash[SESSION_KEY] = plugin
    config.pluginmanager.register(plugin, "advrobust-session")


# -- threads, marks and progress (how a run behaves, not what it gates) -------------------
def _add_run_options(group: Any) -> None:
    group.addoption("--advrobust-threads", metavar="N", default=None,
                    help="threads for torch and onnxruntime in each pytest process (each xdist "
                         "worker); 0 keeps the libraries' defaults. Default: "
                         "$PYTEST_ADVROBUST_THREADS, else $OMP_NUM_THREADS, else cores // workers "
                         "on an xdist worker, else the libraries' defaults.")
    group.addoption("--advrobust-progress", choices=("auto", "on", "off"), default="auto",
                    help="progress of the gates' passes (model, gates, batch k/n): auto = one "
                         "live line on a terminal, nothing in a CI log; on = plain lines where "
                         "the output is not a terminal; off. The pytest_advrobust logger always "
                         "has it (--log-cli-level=INFO).")


def _share_threads(config: pytest.Config, *, gated: bool) -> None:
    """Give this process its thread count (an xdist worker: its share of the cores), before
    any gate starts torch; see :mod:`pytest_advrobust.threads`. A project without gates is
    left alone unless the user asked for a count."""
    from . import threads

    explicit = config.getoption("advrobust_threads") is not None or os.environ.get(threads.ENV, "").strip()
    if not (gated or explicit):
        return
    workerinput = getattr(config, "workerinput", None)
    workers = None
    if workerinput is not None:
        workers = int(workerinput.get("workercount") or os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    try:
        choice = threads.choose(config.getoption("advrobust_threads"), os.environ, workers=workers,
                                cores=threads.available_cores())
    except ValueError as exc:
        raise pytest.UsageError(f"pytest-advrobust: {exc}") from None
    if choice.threads is not None:
        threads.apply(choice.threads)


def _register_xdist_group(config: pytest.Config) -> None:
    """Gate items carry ``xdist_group`` (for ``--dist loadgroup``); without pytest-xdist the
    mark is unknown, so register it: a user's run must not warn because of the plugin."""
    if not config.pluginmanager.hasplugin("xdist"):
        config.addinivalue_line("markers", "xdist_group(name): used by pytest-xdist's "
                                "--dist loadgroup (registered by pytest-advrobust, xdist absent).")


def _may_configure_gates(path: Path) -> bool:
    """Cheap test before any import: a pyproject.toml that never says ``advrobust`` has no
    [tool.advrobust] table (a file that does is parsed, and validated, in full)."""
    try:
        return b"advrobust" in path.read_bytes()
    except OSError:
        return False


def _config_path(config: pytest.Config) -> Path:
    option = config.getoption("advrobust_config")
    if option:
        return _given_config(option)
    if config.inipath is not None and config.inipath.name == "pyproject.toml":
        return config.inipath
    return config.rootpath / "pyproject.toml"


def _given_config(option: str) -> Path:
    """``--advrobust-config PATH``: a file that exists, can be read and has gates. Anything
    else is a usage error, never a run with every gate silently off."""
    path = Path(option).resolve()
    problem = ""
    if not path.exists():
        problem = "does not exist"
    elif path.is_dir():
        problem = "is a directory, not a file"
    else:
        try:
            text = path.read_bytes()
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror})"
        else:
            if b"advrobust" not in text:
                problem = "has no [tool.advrobust] table"
    if problem:
        raise pytest.UsageError(
            f"pytest-advrobust: --advrobust-config={option}: {path} {problem}. Point it at the "
            "pyproject.toml (or other TOML file) that holds [tool.advrobust], or drop the option "
            "to use the rootdir's pyproject.toml.")
    return path


#: report options that name a file, and the one that names a folder
FILE_OPTIONS = ("advrobust_json", "advrobust_markdown", "advrobust_save_baseline")
FOLDER_OPTIONS = ("advrobust_plots", "advrobust_artifacts")


def _check_report_paths(config: pytest.Config) -> None:
    """Every path a report will be written to, checked before any model loads: a problem
    found after an hour of attacks would lose the run's reports."""
    targets = [(f"--{name.replace('_', '-')}", config.getoption(name), False) for name in FILE_OPTIONS]
    targets += [(f"--{name.replace('_', '-')}", config.getoption(name), True) for name in FOLDER_OPTIONS]
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        targets.append(("$GITHUB_STEP_SUMMARY", summary, False))
    for option, value, folder in targets:
        if not value:
            continue
        problem = _unwritable(Path(value).resolve(), folder)
        if problem:
            raise pytest.UsageError(f"pytest-advrobust: {option}={value}: {problem}. Give a "
                                    f"{'folder' if folder else 'file'} path this run can write.")


def _unwritable(path: Path, folder: bool) -> str:
    """Why ``path`` cannot be written (empty when it can): the path itself, then its
    nearest existing parent, which must be a writable folder."""
    if path.exists():
        if folder and not path.is_dir():
            return f"{path} exists and is not a folder"
        if not folder and path.is_dir():
            return f"{path} is a folder, not a file"
        if not os.access(path, os.W_OK):
            return f"{path} is not writable"
        if folder:
            return ""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, so {path} cannot be created under it"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the folder {parent} is not writable"
    return ""


class RobustnessPlugin:
    """Per-run state, registered as a plugin (style of pytest's own cacheprovider)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        path = _config_path(config)
        self.shard = _shard_option(config)
        self.baseline = _load_baseline(config)
        if config.getoption("advrobust_plots"):
            _require_matplotlib()
        self.path = path
        self.current = ""  # the gate running now
        self.progress = Progress(config)  # the live line / log lines of long passes
        self.notes: list[str] = []  # files written, plot problems: shown in the summary
        self.problems: list[str] = []  # reports that could not be written: the run fails
        self.results: list[dict[str, Any]] = []
        #: every gate this run selected (key -> label), on this process or its workers
        self.selected: dict[str, dict[str, Any]] = {}
        #: gates deselected (-k, --lf, --deselect): a baseline save then merges
        self.deselected = 0
        self.interrupted = False
        #: model -> linearity curves (or the error) computed on an xdist worker
        self.linearity: dict[str, dict[str, Any]] = {}
        self._session: RobustnessSession | None = None
        if not hasattr(config, "workerinput"):
            _check_report_paths(config)
        if not _may_configure_gates(path):  # nothing to gate: pay for nothing (no engine import)
            return
        try:
            self._session = self._build_session()
        except ConfigError as exc:
            raise pytest.UsageError(f"pytest-advrobust: {exc}") from None
        if self._session.config is None and config.getoption("advrobust_config"):
            raise pytest.UsageError(f"pytest-advrobust: --advrobust-config={config.getoption('advrobust_config')}: "
                                    f"{path} has no [tool.advrobust] table (it mentions advrobust "
                                    "elsewhere). Point the option at the file that holds the table.")
        if self.session.config is not None and config.args_source != pytest.Config.ArgsSource.ARGS:
            if str(path) not in config.args:  # gates run with every bare `pytest`
                config.args.append(str(path))

    @property
    def session(self) -> "RobustnessSession":
        """The run's session; built on first use where no [tool.advrobust] was seen (the
        ``advrobust`` fixture then reports the missing table)."""
        if self._session is None:
            self._session = self._build_session()
        return self._session

    def _build_session(self) -> "RobustnessSession":
        from .session import RobustnessSession, register_builtins

        register_builtins(self.config.pluginmanager)
        artifacts = self.config.getoption("advrobust_artifacts")
        session = RobustnessSession(self.config.hook, self.path, pytest_config=self.config,
                                    artifacts=Path(artifacts).resolve() if artifacts else None,
                                    baseline=self.baseline, progress=self.progress)
        session.engine.shard = self.shard
        return session

    # -- collection -------------------------------------------------------------------------
    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        if self._session is None or self.session.config is None or file_path != self.path:
            return None
        return GateFile.from_parent(parent, path=file_path)

    # -- results ----------------------------------------------------------------------------
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """The gates this run will compute (after -k, --lf and --deselect)."""
        if self.config.option.collectonly:
            return
        for item in session.items:
            if isinstance(item, GateItem):
                self.selected[item.key] = item.describe()

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += sum(isinstance(item, GateItem) for item in items)

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        self.interrupted = True

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist: results computed on a worker travel up in its workeroutput."""
        output = getattr(node, "workeroutput", {})
        if output.get("advrobust"):
            self.results.extend(json.loads(output["advrobust"]))
        if output.get("advrobust_selected"):
            self.selected.update(json.loads(output["advrobust_selected"]))
        self.deselected = max(self.deselected, int(output.get("advrobust_deselected", 0)))
        self._receive_linearity(output)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        own = [r.to_dict() for r in self._session.engine.results] if self._session else []
        if hasattr(self.config, "workerinput"):
            self.config.workeroutput["advrobust"] = json.dumps(own)  # type: ignore[attr-defined]
            self.config.workeroutput["advrobust_selected"] = json.dumps(self.selected)  # type: ignore[attr-defined]
            self.config.workeroutput["advrobust_deselected"] = self.deselected  # type: ignore[attr-defined]
            self._send_linearity()
            return
        self.results.extend(own)
        self.interrupted = self.interrupted or exitstatus == pytest.ExitCode.INTERRUPTED
        results = self.all_results()
        if results or (self._session and self._session.config is not None):
            self._write("JSON report", "advrobust_json", lambda path: self._write_json(path, results))
        if results:
            self._write_reports(results)
        if self.problems and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _write_json(self, path: Path, results: list[AttackResult]) -> str:
        from .report.json_report import write_json

        return str(write_json(path, results, interrupted=self.interrupted,
                              complete=self.complete(results), **self.shard_fields()))

    def _write(self, what: str, option: str | None, write: Any, path: Path | None = None) -> None:
        """Write one report; a failure is said in the summary and fails the run, and the
        other reports are still written."""
        target = path if path is not None else (self.config.getoption(option) if option else None)
        if not target:
            return
        try:
            written = write(Path(target))
        except (OSError, AdvRobustError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self.problems.append(f"could not write the {what} to {target}: {reason}")
            return
        if written:
            self.notes.append(f"{what}: {written}")

    def complete(self, results: list[AttackResult]) -> bool:
        """Every gate of the config ran to a figure: nothing deselected, errored, or left
        out by an interrupted run."""
        return not self.interrupted and not self.deselected and all(r.measured for r in results)

    def _write_reports(self, results: list[AttackResult]) -> None:
        """Markdown (and GitHub's step summary), the baseline file and the plots."""
        option = self.config.getoption
        if option("advrobust_markdown") or os.environ.get("GITHUB_STEP_SUMMARY"):
            from .report.markdown import append_markdown, to_markdown, write_markdown

            text = to_markdown(results, self.comparison(results), interrupted=self.interrupted)
            self._write("markdown", "advrobust_markdown", lambda path: write_markdown(path, text))
            self._write("step summary", None, lambda path: append_markdown(path, text),
                        path=os.environ.get("GITHUB_STEP_SUMMARY") or None)
        if option("advrobust_save_baseline"):
            self._save_baseline(Path(option("advrobust_save_baseline")), results)
        if option("advrobust_plots") and any(r.measured for r in results):
            from .linearity import model_curves
            from .report.plots import write_plots

            session = self.session

            def linearity(name: str) -> Any:
                if name in self.linearity:  # computed on the xdist worker that had the model
                    return _shipped_curves(self.linearity[name])
                return model_curves(session.engine, session.spec(name))  # the cached classifier

            try:
                written, problems = write_plots([r for r in results if r.measured],
                                                Path(option("advrobust_plots")), linearity=linearity)
            except OSError as exc:
                self.problems.append(f"could not write the plots to {option('advrobust_plots')}: "
                                     f"{exc.strerror or exc}")
            else:
                self.notes.append(f"plots: {len(written)} PNGs in {option('advrobust_plots')}")
                self.notes.extend(f"plot skipped: {problem}" for problem in problems)

    def _save_baseline(self, path: Path, results: list[AttackResult]) -> None:
        """A complete run replaces the baseline; a partial one (deselected, errored or not
        run gates) merges its measured gates into it; an interrupted one writes nothing."""
        from .report.baseline import write_baseline

        if self.interrupted:
            self.problems.append(f"baseline not saved to {path}: the run was interrupted, and a "
                                 "partial run must not replace it. Rerun to completion.")
            return
        measured = [r for r in results if r.measured]
        merge = not self.complete(results)
        self._write("baseline saved" + (" (merged: this run's measured gates replaced, the "
                                         "others kept)" if merge else ""), None,
                    lambda target: write_baseline(target, measured, merge=merge), path=path)

    def shard_fields(self) -> dict[str, Any]:
        """A shard run's JSON says which shard it is and of which config (for the merge)."""
        if self.shard is None:
            return {}
        from .fingerprint import config_fingerprint

        return {"shard": {"index": self.shard[0], "count": self.shard[1]},
                "config": config_fingerprint(self.path), "gates": sorted(self.selected)}

    # -- the linearity plot under xdist: drawn by the controller, computed where the model is
    def _send_linearity(self) -> None:
        """On a worker: the linearity curves of the models this worker loaded for its gates,
        so the controller draws the plot without loading any model again."""
        if not self.config.getoption("advrobust_plots") or self._session is None:
            return
        from .errors import AdvRobustError
        from .linearity import model_curves

        shipped: dict[str, Any] = {}
        for name in sorted({r.model for r in self._session.engine.results}):
            try:
                shipped[name] = model_curves(self._session.engine, self._session.spec(name)).to_dict()
            except AdvRobustError as exc:
                shipped[name] = {"error": str(exc), "kind": exc.kind}
        self.config.workeroutput["advrobust-linearity"] = json.dumps(shipped)  # type: ignore[attr-defined]

    def _receive_linearity(self, workeroutput: dict) -> None:
        payload = workeroutput.get("advrobust-linearity")
        if payload:
            for name, curves in json.loads(payload).items():
                self.linearity.setdefault(name, curves)

    def comparison(self, results: list[AttackResult]) -> Any:
        """How the run relates to ``--advrobust-baseline`` (None without one)."""
        if self.baseline is None:
            return None
        from .report.baseline import compare

        return compare(self.baseline, results)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """The live progress line goes before pytest writes the test's outcome."""
        self.progress.clear()

    def all_results(self) -> list["AttackResult"]:
        """Every selected gate once: its result, its error, or a "not run" entry."""
        from .results import AttackResult

        unique = {r["key"]: r for r in self.results}
        out = [AttackResult.from_dict(r) for r in unique.values()]
        why = ("the run was interrupted before it" if self.interrupted else
               "the run stopped early (-x or --maxfail) before it")
        for key, gate in self.selected.items():
            if key not in unique:
                label = gate["label"]
                out.append(AttackResult(
                    model=gate["model"], attack=gate["attack"], eps=gate["eps"], correct=0,
                    clean_correct=0, n=0, min_accuracy=gate["min_accuracy"],
                    max_drop=gate["max_drop"], passed=False, check=gate["check"],
                    options=gate["options"], report_only=gate["report_only"],
                    not_run=f"{label}: not run: {why} reached this gate",
                    message=f"{label}: not run: {why} reached this gate"))
        return out

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(self.config, "workerinput") or not (self.results or self.selected):
            return
        from .report.terminal import format_table, headers, ordered, summary_rows, verdict_line

        results = self.all_results()
        verbose = self.config.get_verbosity() > 0
        comparison = self.comparison(results)
        terminalreporter.section("advrobust")
        rows = summary_rows(results, verbose=verbose, comparison=comparison)
        for line in format_table(rows, headers(verbose, comparison is not None)):
            terminalreporter.write_line(line)
        terminalreporter.write_line(verdict_line(results, interrupted=self.interrupted))
        if verbose:  # how each model was run and what the attacks found, in words
            for result in ordered(results):
                if result.details:
                    terminalreporter.write_line(f"{result.label}: {result.details}")
        for note in self.notes:
            if verbose or note.startswith("plot skipped"):
                terminalreporter.write_line(note)
        for problem in self.problems:
            terminalreporter.write_line(f"ERROR: {problem}", red=True)
        if comparison is not None:
            from .report.baseline import comparison_lines

            terminalreporter.section("advrobust baseline", sep="-")
            for line in comparison_lines(comparison, results):
                terminalreporter.write_line(line)

    # -- tests that run gates ---------------------------------------------------------------
    def pending(self, item: "GateItem") -> list[Request]:
        """The model's other selected gates, computed in the same pass over the data (on an
        xdist worker only the same check's, since other gates may run elsewhere, plus clean
        checks, which ride along for free: every pass computes the clean scores anyway)."""
        on_worker = hasattr(self.config, "workerinput")
        return [other.request for other in item.session.items
                if isinstance(other, GateItem) and other.spec.name == item.spec.name
                and (not on_worker or other.request.check.index == item.request.check.index
                     or other.request.check.attack == "clean")]


def _shard_option(config: pytest.Config) -> tuple[int, int] | None:
    """``--advrobust-shard=K/N`` as ``(K, N)``; a malformed value, or a report option that
    must not see a shard's partial figures, is a usage error saying what to do."""
    option = config.getoption("advrobust_shard")
    if option is None:
        return None
    from .merge import parse_shard

    try:
        shard = parse_shard(option)
    except ValueError as exc:
        raise pytest.UsageError(f"pytest-advrobust --advrobust-shard: {exc}") from None
    if not config.getoption("advrobust_json"):
        raise pytest.UsageError(
            f"pytest-advrobust: --advrobust-shard={option} needs --advrobust-json=PATH: a shard's "
            "counts are only gated once the merge reads every shard's JSON report "
            "(python -m pytest_advrobust merge shard-*.json).")
    for name, instead in (("baseline", "--baseline=PATH"), ("save_baseline", "--save-baseline=PATH"),
                          ("plots", None)):
        if config.getoption(f"advrobust_{name}"):
            flag = f"--advrobust-{name.replace('_', '-')}"
            where = (f"give {instead} to the merge (python -m pytest_advrobust merge shard-*.json "
                     f"{instead}) instead" if instead else "make plots from an unsharded run")
            raise pytest.UsageError(
                f"pytest-advrobust: {flag} cannot be used with --advrobust-shard={option}: a "
                f"shard measures part of the data, so its figures are partial; {where}.")
    return shard


def _shipped_curves(shipped: dict[str, Any]) -> Any:
    """A worker's linearity curves, or its reason for having none (raised, as locally)."""
    from .errors import AttackError
    from .linearity import LinearityCurves

    if "error" in shipped:
        raise AttackError(shipped["error"])
    return LinearityCurves.from_dict(shipped)


def _load_baseline(config: pytest.Config) -> Any:
    """``--advrobust-baseline``'s entries (key -> BaselineEntry), or None; a bad file is a
    usage error naming it, before any model loads."""
    option = config.getoption("advrobust_baseline")
    if not option:
        return None
    from .report.baseline import BaselineError, load_baseline

    try:
        return load_baseline(Path(option).resolve())
    except BaselineError as exc:
        raise pytest.UsageError(f"pytest-advrobust --advrobust-baseline: {exc}") from None


def _require_matplotlib() -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise pytest.UsageError("pytest-advrobust: --advrobust-plots needs matplotlib, which is "
                                "not installed. Install the extra: pip install pytest-advrobust[plots]")


# -- collected nodes ----------------------------------------------------------------------
class GateFile(pytest.File):
    """The pyproject.toml: one child per model."""

    def collect(self) -> Iterator[pytest.Collector]:
        plugin = self.config.stash[SESSION_KEY]
        for spec in plugin.session.spec_list():
            yield ModelGates.from_parent(self, name=spec.name, spec=spec)


class ModelGates(pytest.Collector):
    """One model's gates: one item per (check, eps)."""

    def __init__(self, *, spec: ModelSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec

    def collect(self) -> Iterator["GateItem"]:
        plugin = self.config.stash[SESSION_KEY]
        counts: dict[str, int] = {}
        for request in plugin.session.requests(self.spec):
            counts[_item_name(request)] = counts.get(_item_name(request), 0) + 1
        for request in plugin.session.requests(self.spec):
            name = _item_name(request, indexed=counts[_item_name(request)] > 1)
            # the id is given as a string so pytest parses it as it parses ids read back
            # from its --lf cache (the "[eps=...]" part as parameters): they then match
            yield GateItem.from_parent(self, name=name, nodeid=f"{self.nodeid}::{name}",
                                       spec=self.spec, request=request)


def _item_name(request: Request, indexed: bool = False) -> str:
    from .results import format_eps

    check = request.check
    label = f"{check.attack}#{check.index}" if indexed else check.attack
    if check.eps == (0.0,) and check.attack == "clean":
        return label
    return f"{label}[eps={format_eps(request.eps)}]"


class GateItem(pytest.Item):
    """One robustness gate; its figures go into ``user_properties`` (JUnit properties)."""

    def __init__(self, *, spec: ModelSpec, request: Request, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.request = request
        self.result: AttackResult | None = None
        self.add_marker("advrobust")
        self.add_marker(pytest.mark.xdist_group(f"advrobust-{spec.name}"))

    @property
    def key(self) -> str:
        """The gate's key in reports and baselines (as its result will carry it)."""
        from .results import gate_key

        return gate_key(self.spec.name, self.request.check.attack, self._eps, dict(self.request.check.options))

    @property
    def _eps(self) -> float | None:
        registry = self.config.stash[SESSION_KEY].session.registry
        attack = self.request.check.attack
        return self.request.eps if attack not in registry or registry[attack].uses_eps else None

    def describe(self) -> dict[str, Any]:
        """What a report needs to show this gate if it never gets a result (JSON-able)."""
        from .results import format_eps

        check = self.request.check
        eps = self._eps
        return {"model": self.spec.name, "attack": check.attack, "eps": eps, "check": check.index,
                "options": dict(check.options), "min_accuracy": check.min_accuracy,
                "max_drop": check.max_drop, "report_only": check.report_only,
                "label": f"{check.attack}{'' if eps is None else f' eps={format_eps(eps)}'} on {self.spec.name}"}

    def runtest(self) -> None:
        plugin = self.config.stash[SESSION_KEY]
        plugin.current = self.name
        engine = plugin.session.engine
        try:
            result = engine.result(self.spec, self.request, batch_with=plugin.pending(self))
        except AdvRobustError as exc:
            self._record(engine.record_error(self.spec, self.request, exc))
            raise
        except Exception as exc:  # a bug: still an error entry in every report
            self._record(engine.record_error(self.spec, self.request, exc))
            raise
        finally:
            plugin.current = ""
        self.result = result
        self._record(result)
        if result.status == "failed":  # a shard's partial counts are judged by the merge
            raise GateFailed(result.message)

    def _record(self, result: AttackResult) -> None:
        """The gate's figures and status as JUnit properties; set before any failure is
        raised, so failing and errored gates carry them too."""
        from .report.junit import gate_properties

        self.user_properties.extend(gate_properties(result))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, GateFailed):
            return str(excinfo.value)
        if isinstance(excinfo.value, AdvRobustError):
            return f"{excinfo.value.kind}: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"advrobust: {self.describe()['label']}"


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture
def advrobust(request: pytest.FixtureRequest) -> Probe:
    """Attack a configured model from a hand-written test: ``advrobust.fgsm(eps=0.1)``.

    ``@pytest.mark.advrobust(model="NAME")`` picks the model (default: the first one).
    """
    plugin = request.config.stash[SESSION_KEY]
    marker = request.node.get_closest_marker("advrobust")
    name = marker.kwargs.get("model") if marker else None
    try:
        return plugin.session.probe(name)
    except ConfigError as exc:
        pytest.fail(f"advrobust fixture: {exc}", pytrace=False)
