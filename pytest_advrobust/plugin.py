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
from .progress import LOG_INTERVAL, MODES, Progress
from .report.examples import COUNT as EXAMPLES_SHOWN

if TYPE_CHECKING:  # the engine side loads only in a project that configures gates
    from .config import ModelSpec
    from .engine import Request
    from .results import AttackResult
    from .session import Probe, RobustnessSession

__all__ = ["GateItem", "GateFailed"]

SESSION_KEY = pytest.StashKey["RobustnessPlugin"]()
#: the thread count this process chose, and the cores an xdist controller measured
THREADS_KEY = pytest.StashKey[Any]()
CORES_KEY = pytest.StashKey[Any]()


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
                         "as a regression (rule: max-regression; "
                         "docs: \"Reports and baselines\", section \"The regression rule\").")
    group.addoption("--advrobust-accept", metavar="GATE[,GATE...]", action="append", default=None,
                    help="accept these failed or errored gates (their keys, as the reports "
                         "write them, or all) into --advrobust-save-baseline: a red run saves "
                         "no baseline otherwise. The run still fails; the summary lists them.")
    group.addoption("--advrobust-plots", metavar="DIR", default=None,
                    help="write PNG plots (robustness curves with their thresholds, universal "
                         "perturbations, linearity); the Markdown summary links them. Needs pip "
                         "install pytest-advrobust[plots].")
    group.addoption("--advrobust-examples", metavar="DIR", default=None,
                    help=f"for image inputs, draw each gate's first {EXAMPLES_SHOWN} flipped "
                         "samples (right when clean, wrong under attack) as a PNG grid: clean, "
                         "attacked, perturbation, with labels and predictions. Needs pip install "
                         "pytest-advrobust[plots].")
    group.addoption("--advrobust-decide-early", action="store_const", const=True,
                    dest="advrobust_decide_early", default=None,
                    help="decide each gate with as few samples as its verdict needs, for every "
                         "gate whose config does not say decide-early = false "
                         "(docs: \"Deciding early\", section \"Turning it on\").")
    group.addoption("--advrobust-no-decide-early", action="store_const", const=False,
                    dest="advrobust_decide_early",
                    help="measure every gate on all its data, whatever the config's "
                         "decide-early keys say.")
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
                         "$PYTEST_ADVROBUST_THREADS, else $OMP_NUM_THREADS, else the cores this "
                         "run may use (CPU affinity, capped by a cgroup quota such as docker "
                         "--cpus, less the cores other processes keep busy at the start; at "
                         "least 1), divided among xdist workers. The header says which.")
    group.addoption("--advrobust-progress", choices=MODES, default="auto",
                    help="progress of the gates' passes (model, gates, batch k/n): auto = one "
                         "live line on a terminal; in a CI log a line when each model's pass "
                         f"starts and ends and at most one every {LOG_INTERVAL:g} s between (xdist "
                         "workers write theirs to stderr); on = a line for every batch where the "
                         "output is not a terminal; off. The pytest_advrobust logger always has it "
                         "(--log-cli-level=INFO).")


def _share_threads(config: pytest.Config, *, gated: bool) -> None:
    """Give this process its thread count before any gate starts torch: the cores it may
    really use (an xdist worker: its share of what the controller measured); see
    :mod:`pytest_advrobust.threads`. A project without gates is left alone unless the user
    asked for a count. An xdist controller runs no gate: it measures the cores once, hands
    the figure to its workers (:func:`pytest_configure_node`) and keeps its own threads, so
    that its workers inherit nothing they would read as the user's setting."""
    from . import threads

    explicit = config.getoption("advrobust_threads") is not None or os.environ.get(threads.ENV, "").strip()
    if not (gated or explicit):
        return
    workerinput = getattr(config, "workerinput", None)
    workers = _starts_workers(config)
    if workerinput is not None:
        workers = int(workerinput.get("workercount") or os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
        shipped = workerinput.get("advrobust_cores")

        def cores() -> Any:  # measured once, by the controller, before the workers started
            return threads.Cores(*shipped) if shipped else threads.usable_cores(sample=False)
    else:
        def cores() -> Any:
            config.stash[CORES_KEY] = threads.usable_cores()
            return config.stash[CORES_KEY]
    try:
        choice = threads.choose(config.getoption("advrobust_threads"), os.environ, workers=workers,
                                cores=cores)
    except ValueError as exc:
        raise pytest.UsageError(f"pytest-advrobust: {exc}") from None
    config.stash[THREADS_KEY] = choice
    if workerinput is None and workers and CORES_KEY in config.stash:
        return  # the default, chosen for the workers: they apply it
    if choice.threads is not None:
        threads.apply(choice.threads)


def _starts_workers(config: pytest.Config) -> int | None:
    """How many pytest-xdist workers this process (their controller) starts, or None."""
    if hasattr(config, "workerinput") or getattr(config.option, "dist", "no") == "no":
        return None
    return len(getattr(config.option, "tx", None) or []) or None  # -n N (capped by --maxprocesses)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist (on the controller): each worker receives the cores the controller measured."""
    cores = node.config.stash.get(CORES_KEY, None)
    if cores is not None:
        node.workerinput["advrobust_cores"] = list(cores)


def pytest_report_header(config: pytest.Config) -> str | None:
    """How many threads the gates run with, and why (only where the plugin chose)."""
    choice = config.stash.get(THREADS_KEY, None)
    if choice is None:
        return None
    count = "the libraries' default" if choice.threads is None else str(choice.threads)
    where = " in each xdist worker" if _starts_workers(config) else ""
    return f"advrobust: threads{where}: {count} ({choice.why})"


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
FOLDER_OPTIONS = ("advrobust_plots", "advrobust_artifacts", "advrobust_examples")


def _check_report_paths(config: pytest.Config) -> None:
    """Every path a report will be written to, checked before any model loads: a problem
    found after an hour of attacks would lose the run's reports."""
    from .report.files import unwritable

    targets = [(f"--{name.replace('_', '-')}", config.getoption(name), False) for name in FILE_OPTIONS]
    targets += [(f"--{name.replace('_', '-')}", config.getoption(name), True) for name in FOLDER_OPTIONS]
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        targets.append(("$GITHUB_STEP_SUMMARY", summary, False))
    for option, value, folder in targets:
        if not value:
            continue
        problem = unwritable(Path(value).resolve(), folder)
        if problem:
            raise pytest.UsageError(f"pytest-advrobust: {option}={value}: {problem}. Give a "
                                    f"{'folder' if folder else 'file'} path this run can write.")


class RobustnessPlugin:
    """Per-run state, registered as a plugin (style of pytest's own cacheprovider).

    It collects what was measured (in this process, on xdist workers, from the reports of
    finished gates), and at the end hands the one judge's verdicts to the one report
    pipeline (:mod:`pytest_advrobust.report.pipeline`), exactly as the shard merge does."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        path = _config_path(config)
        self.shard = _shard_option(config)
        self.baseline = _load_baseline(config)
        self.accept = _accept_option(config)
        for option in ("advrobust_plots", "advrobust_examples"):
            if config.getoption(option):
                _require_matplotlib(f"--{option.replace('_', '-')}")
        self.path = path
        #: --advrobust-decide-early (True on, False off, None: the config says); a run that
        #: saves a baseline measures every gate on all its data
        self.decide_early = _decide_early_option(config)
        #: what the summary says about decide-early (set aside for a baseline save)
        self.early_remarks: list[str] = []
        self.current = ""  # the gate running now
        self.progress = Progress(config)  # the live line / log lines of long passes
        #: gate key -> measurement (JSON-able), from this process, workers and reports
        self.measured: dict[str, dict[str, Any]] = {}
        #: every gate this run selected (key -> description), on this process or its workers
        self.selected: dict[str, dict[str, Any]] = {}
        #: gates deselected (-k, --lf, --deselect): a baseline save then merges
        self.deselected = 0
        self.interrupted = False
        #: xdist workers that crashed (their words), for the summary and "not run" reasons
        self.crashes: list[str] = []
        #: model -> linearity curves (or the error) computed on an xdist worker
        self.linearity: dict[str, dict[str, Any]] = {}
        self.written: Any = None  # what the report pipeline wrote (for the summary)
        self.record: Any = None  # the run's RunRecord, once the reports are written
        self._session: RobustnessSession | None = None
        if not hasattr(config, "workerinput"):
            _check_report_paths(config)
        if not _may_configure_gates(path):  # nothing to gate: pay for nothing (no engine import)
            if self.accept:
                raise pytest.UsageError("pytest-advrobust: --advrobust-accept names gates, but "
                                        f"{path} configures none ([tool.advrobust] is missing).")
            return
        try:
            self._session = self._build_session()
        except ConfigError as exc:
            raise pytest.UsageError(f"pytest-advrobust: {exc}") from None
        if self._session.config is None and config.getoption("advrobust_config"):
            raise pytest.UsageError(f"pytest-advrobust: --advrobust-config={config.getoption('advrobust_config')}: "
                                    f"{path} has no [tool.advrobust] table (it mentions advrobust "
                                    "elsewhere). Point the option at the file that holds the table.")
        _check_accepted(self.accept, self._session)
        self._check_decide_early(self._session)
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
        examples = self.config.getoption("advrobust_examples")
        session = RobustnessSession(self.config.hook, self.path, pytest_config=self.config,
                                    artifacts=Path(artifacts).resolve() if artifacts else None,
                                    baseline=self.baseline, progress=self.progress,
                                    accept=self.accept, decide_early=self.decide_early,
                                    examples=Path(examples).resolve() if examples else None)
        session.engine.shard = self.shard
        return session

    def _check_decide_early(self, session: "RobustnessSession") -> None:
        """decide-early with a shard is refused (each shard would stop on its own part of
        the data, which the merge cannot judge); with a baseline save it is set aside, so
        a baseline is never a figure decided on part of the data."""
        if session.config is None:
            return
        deciding = session.decides_early()
        if not deciding:
            return
        if self.shard is not None:
            raise pytest.UsageError(
                f"pytest-advrobust: --advrobust-shard={self.config.getoption('advrobust_shard')} "
                f"cannot be used with decide-early (on for {len(deciding)} check(s), e.g. "
                f"{deciding[0]}): a shard that stops a gate early judges part of its own part, "
                "which the merge cannot add up. Run the shards with --advrobust-no-decide-early, "
                "or drop --advrobust-shard and let decide-early save the time instead.")
        if self.config.getoption("advrobust_save_baseline"):
            session.judge.decide_early = False
            self.early_remarks.append(
                f"decide-early set aside for this run ({len(deciding)} check(s) would use it): "
                "--advrobust-save-baseline measures every gate on all its data, so the baseline "
                "never holds a figure decided on part of it")

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
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """xdist: the controller learns which gates the workers selected from their ids, so
        a worker that crashes before it finishes cannot take that knowledge with it."""
        if self._session is None or self.session.config is None or self.config.option.collectonly:
            return
        for nodeid in ids:
            gate = self._gate_of(nodeid)
            if gate is not None:
                self.selected.setdefault(gate["key"], gate)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist: what a worker measured travels up in its workeroutput."""
        output = getattr(node, "workeroutput", {})
        for data in json.loads(output.get("advrobust") or "[]"):
            self._receive(data)
        if output.get("advrobust_selected"):
            self.selected.update(json.loads(output["advrobust_selected"]))
        self.deselected = max(self.deselected, int(output.get("advrobust_deselected", 0)))
        self._receive_linearity(output)
        if error:
            self.crashes.append(f"xdist worker {getattr(node, 'gateway', None) and node.gateway.id} "
                                f"went down: {str(error).splitlines()[0] if str(error) else 'crashed'}")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Any:
        """A gate's measurement rides on its report (which xdist carries to the controller
        as soon as the gate finishes), so a worker that crashes later cannot lose it."""
        report = yield
        measurement = getattr(item, "measurement", None)
        if isinstance(item, GateItem) and call.when == "call" and measurement is not None:
            report.advrobust = json.dumps(measurement)
            if measurement.get("seconds"):
                # the gate's share of its model's pass, not the time of the item that ran the
                # pass for every gate (that one would carry it all, the others 0 s): JUnit's
                # time and --durations then say what each gate costs
                report.duration = float(measurement["seconds"])
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """The live progress line goes before pytest writes the test's outcome; a gate's
        measurement is kept; a gate an xdist worker crashed on becomes an error naming it."""
        self.progress.clear()
        payload = getattr(report, "advrobust", None)
        if payload:
            self._receive(json.loads(payload))
        elif report.failed and report.when == "???":  # pytest-xdist's report of a crashed worker
            gate = self._gate_of(report.nodeid)
            if gate is not None and gate["key"] not in self.measured:
                words = " ".join(str(report.longrepr).split())[:300]
                self.crashes.append(f"{gate['label']}: {words}")
                self.measured[gate["key"]] = self._crashed(gate, words)

    def _receive(self, data: dict[str, Any]) -> None:
        from .results import Measurement

        key = Measurement.from_dict(data).key
        if key not in self.measured or self.measured[key].get("error"):
            self.measured[key] = data

    def _gate_of(self, nodeid: str) -> dict[str, Any] | None:
        """The description of the gate item ``nodeid`` names (None: not a gate item)."""
        parts = nodeid.split("::")
        if len(parts) < 3 or Path(parts[0]).name != self.path.name:
            return None
        return _gate_descriptions(self).get((parts[-2], parts[-1]))

    def _crashed(self, gate: dict[str, Any], words: str) -> dict[str, Any]:
        from .results import Measurement

        return Measurement(model=gate["model"], attack=gate["attack"], eps=gate["eps"],
                           check=gate["check"], options=gate["options"],
                           error=(f"attack error: the pytest-xdist worker running this gate crashed "
                                  f"({words}), so it has no figures. A crash is a bug in the model, "
                                  "the data loader or a library (out of memory, a segfault): run "
                                  "the gate without -n to see it.")).to_dict()

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        own = [m.to_dict() for m in self._session.engine.measurements] if self._session else []
        if hasattr(self.config, "workerinput"):
            self.config.workeroutput["advrobust"] = json.dumps(own)  # type: ignore[attr-defined]
            self.config.workeroutput["advrobust_selected"] = json.dumps(self.selected)  # type: ignore[attr-defined]
            self.config.workeroutput["advrobust_deselected"] = self.deselected  # type: ignore[attr-defined]
            self._send_linearity()
            return
        for data in own:
            self._receive(data)
        self.interrupted = self.interrupted or exitstatus == pytest.ExitCode.INTERRUPTED
        if self.config.option.collectonly or self._session is None:
            return  # collecting is not running: no report claims anything
        if self.session.config is None and not self.measured:
            return
        from .report.pipeline import write_reports

        self.record = self.run_record()
        self.written = write_reports(self.record, self.targets())
        if self.written.problems and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def run_record(self) -> Any:
        """The run as the pipeline reports it: every selected gate once (its judged result,
        its error, or a "not run" entry), and how the run went."""
        from .report.pipeline import NO_GATE, RunRecord

        results = self.all_results()
        return RunRecord(
            results=results, interrupted=self.interrupted, complete=self.complete(results),
            comparison=self.comparison(results), extra=self.shard_fields(),
            empty="" if results else NO_GATE,
            remarks=list(dict.fromkeys(self.crashes)) + self.early_remarks)

    def targets(self) -> Any:
        from .report.pipeline import ReportTargets, step_summary_path

        option = self.config.getoption

        def path(name: str) -> Path | None:
            value = option(name)
            return Path(value) if value else None

        return ReportTargets(json=path("advrobust_json"), markdown=path("advrobust_markdown"),
                             step_summary=step_summary_path(),
                             save_baseline=path("advrobust_save_baseline"),
                             plots=path("advrobust_plots"), linearity=self._linearity)

    def _linearity(self, name: str) -> Any:
        if name in self.linearity:  # computed on the xdist worker that had the model
            return _shipped_curves(self.linearity[name])
        from .linearity import model_curves

        return model_curves(self.session.engine, self.session.spec(name))  # the cached classifier

    def complete(self, results: list[AttackResult]) -> bool:
        """Every gate of the config ran to a figure: nothing deselected, errored, crashed,
        or left out by an interrupted run; and there was a gate at all."""
        return (bool(results) and not self.interrupted and not self.deselected and not self.crashes
                and all(r.measured for r in results))

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
        for name in sorted({m.model for m in self._session.engine.measurements}):
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

    def all_results(self) -> list["AttackResult"]:
        """Every selected gate once, judged by the one judge: its result, its error, or a
        "not run" entry saying why."""
        from .results import Measurement

        keys = set(self.selected) or set(self.measured)
        measurements = [Measurement.from_dict(data) for key, data in self.measured.items() if key in keys]
        out = self.session.judge.results(measurements)
        if self.interrupted:
            why = "the run was interrupted before it reached this gate"
        elif self.crashes:
            why = ("a pytest-xdist worker crashed (see the summary) and this gate was not run "
                   "again")
        else:
            why = "the run stopped early (-x or --maxfail) before it reached this gate"
        for key, gate in self.selected.items():
            if key not in self.measured:
                out.append(self.session.judge.not_run(gate, f"{gate['label']}: not run: {why}"))
        return out

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(self.config, "workerinput") or self.record is None:
            return
        from .report.pipeline import comparison_section, summary_lines

        record = self.record
        if not record.results and not (self.written.problems or self._asked_for_reports()):
            return
        terminalreporter.section("advrobust")
        for text, markup in summary_lines(record, self.written, verbose=self.config.get_verbosity() > 0):
            terminalreporter.write_line(text, **markup)
        lines = comparison_section(record)
        if lines:
            terminalreporter.section("advrobust baseline", sep="-")
            for line in lines:
                terminalreporter.write_line(line)

    def _asked_for_reports(self) -> bool:
        return any(self.config.getoption(name) for name in FILE_OPTIONS + ("advrobust_plots",))

    # -- tests that run gates ---------------------------------------------------------------
    def model_pass(self, item: "GateItem", pending: list[Request]) -> Any:
        """The progress of the pass ``item`` starts over its model's data (its start and end
        in a CI log), or nothing when an earlier pass already measured it."""
        from contextlib import nullcontext

        from .engine import _gate_names

        done = {m.key for m in self.session.engine.measurements}
        if item.key in done:
            return nullcontext()
        todo = [item.request] + [r for r in pending if r.key != item.request.key
                                 and describe_gate(self.session, item.spec, r)["key"] not in done]
        return self.progress.model_pass(item.spec.name, _gate_names(todo), len(todo))

    def pending(self, item: "GateItem") -> list[Request]:
        """The model's other selected gates, computed in the same pass over the data (on an
        xdist worker only the same check's, since other gates may run elsewhere, plus clean
        checks, which ride along for free: every pass computes the clean scores anyway)."""
        on_worker = hasattr(self.config, "workerinput")
        return [other.request for other in item.session.items
                if isinstance(other, GateItem) and other.spec.name == item.spec.name
                and (not on_worker or other.request.check.index == item.request.check.index
                     or other.request.check.attack == "clean")]


def _gate_descriptions(plugin: RobustnessPlugin) -> dict[tuple[str, str], dict[str, Any]]:
    """(model, item name) -> the gate's description, for every gate of the config."""
    cached = getattr(plugin, "_descriptions", None)
    if cached is None:
        cached = {}
        session = plugin.session
        for spec in session.spec_list():
            for name, request in gate_names(session.requests(spec)):
                cached[(spec.name, name)] = describe_gate(session, spec, request)
        plugin._descriptions = cached  # type: ignore[attr-defined]
    return cached


def _accept_option(config: pytest.Config) -> tuple[str, ...]:
    """``--advrobust-accept=KEY[,KEY...]`` (or ``all``), as a tuple of keys."""
    values = config.getoption("advrobust_accept") or []
    keys = tuple(dict.fromkeys(k.strip() for value in values for k in value.split(",") if k.strip()))
    return keys


def _check_accepted(keys: tuple[str, ...], session: "RobustnessSession") -> None:
    """Every accepted key names a gate of the config: a typo must not leave a fall unaccepted
    (red, with a confusing message) or seem to accept one."""
    if not keys or session.config is None:
        return
    import difflib

    known = {describe_gate(session, spec, r)["key"] for spec in session.spec_list()
             for r in session.requests(spec)}
    unknown = [k for k in keys if k != "all" and k not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1, cutoff=0.5)
        raise pytest.UsageError(
            f"pytest-advrobust: --advrobust-accept: {unknown[0]!r} is not a gate of the config"
            f"{f' (did you mean {close[0]!r}?)' if close else ''}. Give gate keys as the reports "
            "and the baseline file write them (MODEL::ATTACK[eps=E]), comma-separated, or all.")


def _decide_early_option(config: pytest.Config) -> bool | None:
    """``--advrobust-decide-early`` (True), ``--advrobust-no-decide-early`` (False), or None
    when neither is given (the config's keys decide)."""
    return config.getoption("advrobust_decide_early")


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


def _require_matplotlib(option: str) -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise pytest.UsageError(f"pytest-advrobust: {option} needs matplotlib, which is "
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
        for name, request in gate_names(plugin.session.requests(self.spec)):
            # the id is given as a string so pytest parses it as it parses ids read back
            # from its --lf cache (the "[eps=...]" part as parameters): they then match
            yield GateItem.from_parent(self, name=name, nodeid=f"{self.nodeid}::{name}",
                                       spec=self.spec, request=request)


def gate_names(requests: list[Request]) -> list[tuple[str, Request]]:
    """Each gate item's name: ``fgsm[eps=0.1]``, ``clean``; ``fgsm#2[eps=0.1]`` when two
    checks of the same attack share a name."""
    counts: dict[str, int] = {}
    for request in requests:
        counts[_item_name(request)] = counts.get(_item_name(request), 0) + 1
    return [(_item_name(request, indexed=counts[_item_name(request)] > 1), request)
            for request in requests]


def _item_name(request: Request, indexed: bool = False) -> str:
    from .results import format_eps

    check = request.check
    label = f"{check.attack}#{check.index}" if indexed else check.attack
    if check.eps == (0.0,) and check.attack == "clean":
        return label
    return f"{label}[eps={format_eps(request.eps)}]"


def describe_gate(session: "RobustnessSession", spec: ModelSpec, request: Request) -> dict[str, Any]:
    """What a report needs to show a gate that never got a result (JSON-able), and its key."""
    from .results import format_eps, gate_key

    check = request.check
    attack = session.registry[check.attack] if check.attack in session.registry else None
    eps = request.eps if attack is None or attack.uses_eps else None
    return {"model": spec.name, "attack": check.attack, "eps": eps, "check": check.index,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in check.options.items()},
            "key": gate_key(spec.name, check.attack, eps, dict(check.options)),
            "label": f"{check.attack}{'' if eps is None else f' eps={format_eps(eps)}'} on {spec.name}"}


class GateItem(pytest.Item):
    """One robustness gate; its figures go into ``user_properties`` (JUnit properties)."""

    def __init__(self, *, spec: ModelSpec, request: Request, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.request = request
        self.result: AttackResult | None = None
        #: the gate's measurement (JSON-able), carried on its report to the controller
        self.measurement: dict[str, Any] | None = None
        self.add_marker("advrobust")
        self.add_marker(pytest.mark.xdist_group(f"advrobust-{spec.name}"))

    @property
    def key(self) -> str:
        """The gate's key in reports and baselines (as its result will carry it)."""
        return self.describe()["key"]

    def describe(self) -> dict[str, Any]:
        return describe_gate(self.config.stash[SESSION_KEY].session, self.spec, self.request)

    def runtest(self) -> None:
        plugin = self.config.stash[SESSION_KEY]
        plugin.current = self.name
        session = plugin.session
        pending = plugin.pending(self)
        try:
            with plugin.model_pass(self, pending):
                measurement = session.engine.measure(self.spec, self.request, batch_with=pending)
        except Exception as exc:  # a user's mistake (or a bug): still an error entry in every report
            self._record(session.engine.record_error(self.spec, self.request, exc))
            raise
        finally:
            plugin.current = ""
        result = self._record(measurement)
        if result.status == "failed":  # a shard's partial counts are judged by the merge
            raise GateFailed(result.message)

    def _record(self, measurement: Any) -> AttackResult:
        """Judge the gate; its figures and status become JUnit properties, set before any
        failure is raised, so failing and errored gates carry them too."""
        from .report.junit import gate_properties

        self.measurement = measurement.to_dict()
        self.result = self.config.stash[SESSION_KEY].session.judge.result(measurement)
        self.user_properties.extend(gate_properties(self.result))
        return self.result

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
