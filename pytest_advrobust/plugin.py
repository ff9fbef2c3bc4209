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
        return Path(option).resolve()
    if config.inipath is not None and config.inipath.name == "pyproject.toml":
        return config.inipath
    return config.rootpath / "pyproject.toml"


class RobustnessPlugin:
    """Per-run state, registered as a plugin (style of pytest's own cacheprovider)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        path = _config_path(config)
        self.baseline = _load_baseline(config)
        if config.getoption("advrobust_plots"):
            _require_matplotlib()
        self.path = path
        self.current = ""  # the gate running now
        self.progress = Progress(config)  # the live line / log lines of long passes
        self.notes: list[str] = []  # files written, plot problems: shown in the summary
        self.results: list[dict[str, Any]] = []
        #: model -> linearity curves (or the error) computed on an xdist worker
        self.linearity: dict[str, dict[str, Any]] = {}
        self._session: RobustnessSession | None = None
        if not _may_configure_gates(path):  # nothing to gate: pay for nothing (no engine import)
            return
        try:
            self._session = self._build_session()
        except ConfigError as exc:
            raise pytest.UsageError(f"pytest-advrobust: {exc}") from None
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
        return RobustnessSession(self.config.hook, self.path, pytest_config=self.config,
                                 artifacts=Path(artifacts).resolve() if artifacts else None,
                                 baseline=self.baseline, progress=self.progress)

    # -- collection -------------------------------------------------------------------------
    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        if self._session is None or self.session.config is None or file_path != self.path:
            return None
        return GateFile.from_parent(parent, path=file_path)

    # -- results ----------------------------------------------------------------------------
    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist: results computed on a worker travel up in its workeroutput."""
        payload = getattr(node, "workeroutput", {}).get("advrobust")
        if payload:
            self.results.extend(json.loads(payload))
        self._receive_linearity(getattr(node, "workeroutput", {}))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        own = [r.to_dict() for r in self._session.engine.results] if self._session else []
        if hasattr(self.config, "workerinput"):
            self.config.workeroutput["advrobust"] = json.dumps(own)  # type: ignore[attr-defined]
            self._send_linearity()
            return
        self.results.extend(own)
        target = self.config.getoption("advrobust_json")
        if target and (self.results or (self._session and self._session.config is not None)):
            from .report.json_report import write_json

            write_json(Path(target), self.all_results())
        if self.results:
            self._write_reports(self.all_results())

    def _write_reports(self, results: list[AttackResult]) -> None:
        """Markdown (and GitHub's step summary), the baseline file and the plots."""
        option = self.config.getoption
        if option("advrobust_markdown") or os.environ.get("GITHUB_STEP_SUMMARY"):
            from .report.markdown import append_markdown, to_markdown, write_markdown

            text = to_markdown(results, self.comparison(results))
            if option("advrobust_markdown"):
                self.notes.append(f"markdown: {write_markdown(Path(option('advrobust_markdown')), text)}")
            if os.environ.get("GITHUB_STEP_SUMMARY"):
                append_markdown(Path(os.environ["GITHUB_STEP_SUMMARY"]), text)
        if option("advrobust_save_baseline"):
            from .report.baseline import write_baseline

            self.notes.append(f"baseline saved: {write_baseline(Path(option('advrobust_save_baseline')), results)}")
        if option("advrobust_plots"):
            from .linearity import model_curves
            from .report.plots import write_plots

            session = self.session

            def linearity(name: str) -> Any:
                if name in self.linearity:  # computed on the xdist worker that had the model
                    return _shipped_curves(self.linearity[name])
                return model_curves(session.engine, session.spec(name))  # the cached classifier

            written, problems = write_plots(results, Path(option("advrobust_plots")),
                                            linearity=linearity)
            self.notes.append(f"plots: {len(written)} PNGs in {option('advrobust_plots')}")
            self.notes.extend(f"plot skipped: {problem}" for problem in problems)

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
        from .results import AttackResult

        unique = {r["key"]: r for r in self.results}
        return [AttackResult.from_dict(r) for r in unique.values()]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(self.config, "workerinput") or not self.results:
            return
        from .report.terminal import format_table, headers, summary_rows, verdict_line

        results = self.all_results()
        verbose = self.config.get_verbosity() > 0
        comparison = self.comparison(results)
        terminalreporter.section("advrobust")
        rows = summary_rows(results, verbose=verbose, comparison=comparison)
        for line in format_table(rows, headers(verbose, comparison is not None)):
            terminalreporter.write_line(line)
        terminalreporter.write_line(verdict_line(results))
        for note in self.notes:
            if verbose or note.startswith("plot skipped"):
                terminalreporter.write_line(note)
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
            yield GateItem.from_parent(self, name=name, spec=self.spec, request=request)


def _item_name(request: Request, indexed: bool = False) -> str:
    check = request.check
    label = f"{check.attack}#{check.index}" if indexed else check.attack
    return label if check.eps == (0.0,) and check.attack == "clean" else f"{label}[eps={request.eps:g}]"


class GateItem(pytest.Item):
    """One robustness gate; its figures go into ``user_properties`` (JUnit properties)."""

    def __init__(self, *, spec: ModelSpec, request: Request, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.request = request
        self.result: AttackResult | None = None
        self.add_marker("advrobust")
        self.add_marker(pytest.mark.xdist_group(f"advrobust-{spec.name}"))

    def runtest(self) -> None:
        from .report.terminal import threshold_text

        plugin = self.config.stash[SESSION_KEY]
        plugin.current = self.name
        try:
            result = plugin.session.engine.result(self.spec, self.request, batch_with=plugin.pending(self))
        finally:
            plugin.current = ""
        self.result = result
        low, high = result.interval
        baseline = result.baseline_accuracy
        # set before any failure is raised, so failing gates carry their figures in JUnit too
        self.user_properties.extend([
            ("advrobust_model", result.model), ("advrobust_attack", result.attack),
            ("advrobust_eps", "" if result.eps is None else f"{result.eps:g}"),
            ("advrobust_accuracy", f"{result.accuracy:.6f}"),
            ("advrobust_clean_accuracy", f"{result.clean_accuracy:.6f}"),
            ("advrobust_ci_low", f"{low:.6f}"), ("advrobust_ci_high", f"{high:.6f}"),
            ("advrobust_n", str(result.n)),
            ("advrobust_min_accuracy", "" if result.min_accuracy is None else f"{result.min_accuracy:g}"),
            ("advrobust_max_drop", "" if result.max_drop is None else f"{result.max_drop:g}"),
            ("advrobust_threshold", threshold_text(result)),
            ("advrobust_baseline_accuracy", "" if baseline is None else f"{baseline:.6f}"),
        ])
        if not result.passed:
            raise GateFailed(result.message)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, GateFailed):
            return str(excinfo.value)
        if isinstance(excinfo.value, AdvRobustError):
            return f"{excinfo.value.kind}: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        eps = "" if self.request.check.attack == "clean" else f" eps={self.request.eps:g}"
        return self.path, None, f"advrobust: {self.request.check.attack}{eps} on {self.spec.name}"


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
