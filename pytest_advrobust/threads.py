"""How many threads torch and onnxruntime use in this process.

torch and onnxruntime size their thread pools from the cores they see, which is often not
what the process may use: a cgroup CPU quota (``cpu.max``, a container's ``--cpus``) is
invisible to them and to ``os.sched_getaffinity``, and on a machine that other processes
keep busy, threads that wait for each other at every operation made gate runs 7-12x
slower than one thread (identical figures). Under pytest-xdist every worker would also
start one thread per core, so ``-n 2`` on two cores ran four busy threads.

The default is therefore the cores this process may really use (:func:`usable_cores`): its
CPU affinity, capped by the cgroup quota (v1 or v2, the tightest along its cgroup's path,
rounded down), less the cores other processes keep busy when the run starts (sampled from
``/proc/stat`` for a tenth of a second), at least 1. An xdist worker gets its share,
``usable // workers`` (at least 1), of what the controller measured before it started them.

Precedence, first that applies: ``--advrobust-threads=N`` (or ``PYTEST_ADVROBUST_THREADS=N``;
``0`` keeps the libraries' own defaults), then a user's ``OMP_NUM_THREADS``, then the default.

No heavy import here: when torch is not loaded yet, ``OMP_NUM_THREADS`` is set so torch
starts with that many threads; when it is, ``torch.set_num_threads`` is called.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

__all__ = ["ENV", "Cores", "ThreadChoice", "available_cores", "busy_cores", "cgroup_cpu_limit",
           "choose", "apply", "onnxruntime_threads", "usable_cores"]

#: the override, and (once applied) the count this process uses
ENV = "PYTEST_ADVROBUST_THREADS"
#: how long :func:`busy_cores` watches the machine (seconds)
SAMPLE_SECONDS = 0.1
#: a core counts as free when at least this share of it is idle (other work on the rest
#: would make a thread of ours wait, and every other thread with it)
FREE_SHARE = 0.75


class ThreadChoice(NamedTuple):
    """``threads`` None leaves the libraries' defaults alone; ``why`` names the rule."""

    threads: int | None
    why: str


class Cores(NamedTuple):
    """The cores this process may use (at least 1), and in words where the figure comes from."""

    usable: int
    why: str


# -- what the process may use --------------------------------------------------------------
def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, so ``taskset`` and a cpuset count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """The CPUs this process's cgroup quota allows (``2.5``: 250 ms per 100 ms), the tightest
    along its cgroup's path; None without a quota (or off Linux). cgroup v2 ``cpu.max`` and
    v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; ``root`` is the filesystem's root."""
    try:
        memberships = (root / "proc/self/cgroup").read_text().splitlines()
        mounts = (root / "proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in memberships:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        v2 = hierarchy == "0" and controllers == ""
        if not v2 and "cpu" not in controllers.split(","):
            continue
        for folder in _cgroup_folders(root, mounts, path, v2=v2):
            limit = _v2_limit(folder) if v2 else _v1_limit(folder)
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def _cgroup_folders(root: Path, mounts: list[str], path: str, *, v2: bool) -> list[Path]:
    """The folders of the cgroup ``path`` and of its parents, up to the mount's root, in the
    hierarchy mounted for it (``cgroup2``, or the v1 one holding the ``cpu`` controller)."""
    for line in mounts:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        kind, _, options = line.split(" - ", 1)[1].partition(" ")
        options = options.split(" ", 1)[-1] if " " in options else options
        if kind != ("cgroup2" if v2 else "cgroup"):
            continue
        if not v2 and "cpu" not in options.split(","):
            continue
        mount_root, mount_point = fields[3], root / fields[4].lstrip("/")
        # a container often sees its own cgroup as the mount's root ("/") while
        # /proc/self/cgroup still names the host's path; then the mount itself is the cgroup
        inside = path[len(mount_root):] if path.startswith(mount_root) else path
        folder = mount_point / inside.lstrip("/")
        if not folder.is_dir():
            folder = mount_point
        chain = [folder]
        while chain[-1] != mount_point and mount_point in chain[-1].parents:
            chain.append(chain[-1].parent)
        return chain
    return []


def _v2_limit(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_limit(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def busy_cores(cpus: set[int] | None = None, *, root: Path = Path("/"),
               seconds: float = SAMPLE_SECONDS,
               sleep: Callable[[float], None] = time.sleep) -> float | None:
    """How many of the CPUs ``cpus`` (default: all) other processes keep busy, from two reads
    of ``/proc/stat`` ``seconds`` apart while this process sleeps; None where there is no
    such file (not Linux)."""
    before = _cpu_times(root)
    if before is None:
        return None
    sleep(seconds)
    after = _cpu_times(root)
    if after is None:
        return None
    busy = 0.0
    for cpu, (total, idle) in after.items():
        if (cpus is not None and cpu not in cpus) or cpu not in before:
            continue
        elapsed = total - before[cpu][0]
        if elapsed > 0:
            busy += 1.0 - min(1.0, max(0.0, (idle - before[cpu][1]) / elapsed))
    return busy


def _cpu_times(root: Path) -> dict[int, tuple[int, int]] | None:
    """Per CPU: (all ticks, idle + iowait ticks) since boot."""
    try:
        lines = (root / "proc/stat").read_text().splitlines()
    except OSError:
        return None
    times = {}
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()) or len(fields) < 4:
            continue
        ticks = [int(v) for v in fields[:8]]  # guest time is already counted in user time
        times[int(name[3:])] = (sum(ticks), ticks[3] + (ticks[4] if len(ticks) > 4 else 0))
    return times or None


def usable_cores(*, sample: bool = True, root: Path = Path("/"),
                 affinity: set[int] | None = None,
                 busy: Callable[[set[int] | None], float | None] | None = None) -> Cores:
    """The cores this process may use now: its affinity, capped by the cgroup quota, and
    (``sample``) less those other processes keep busy; at least 1 (see the module)."""
    if affinity is None:
        try:
            affinity = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            affinity = set(range(os.cpu_count() or 1))
    cores = max(1, len(affinity))
    why = [f"{cores} CPU{'s' if cores > 1 else ''} in this process's affinity"]
    quota = cgroup_cpu_limit(root)
    if quota is not None and quota < cores:
        cores = max(1, math.floor(quota))
        why.append(f"a cgroup CPU quota of {quota:g}")
    if sample:
        taken = (busy or (lambda cpus: busy_cores(cpus, root=root)))(affinity)
        if taken is not None:
            free = len(affinity) - taken
            why.append(f"{taken:.1f} of them busy with other work")
            cores = max(1, min(cores, math.floor(free + (1 - FREE_SHARE))))
    return Cores(cores, ", ".join(why))


# -- the choice ----------------------------------------------------------------------------
def parse_threads(value: str, where: str) -> int:
    """A thread count as the user wrote it: an integer >= 0 (0 = library defaults)."""
    try:
        count = int(str(value).strip())
    except ValueError:
        count = -1
    if count < 0:
        raise ValueError(f"{where}: {value!r} is not a thread count. Give a whole number: N >= 1 "
                         "threads for torch and onnxruntime in each pytest process (each xdist "
                         "worker), or 0 to keep the libraries' own defaults.")
    return count


def choose(option: str | int | None, env: Mapping[str, str], *, workers: int | None,
           cores: int | Cores | Callable[[], Cores]) -> ThreadChoice:
    """The thread count for this process, and why (see the module's docstring). ``cores``:
    what the process (on xdist: the controller, for all its workers) may use, or a function
    giving it, called only when the default applies (measuring takes a tenth of a second)."""
    if option is not None:
        count = parse_threads(str(option), "--advrobust-threads")
        return ThreadChoice(count or None, "--advrobust-threads")
    if env.get(ENV, "").strip():
        count = parse_threads(env[ENV], ENV)
        return ThreadChoice(count or None, ENV)
    if env.get("OMP_NUM_THREADS", "").strip():
        try:
            count = int(env["OMP_NUM_THREADS"])
        except ValueError:
            return ThreadChoice(None, "OMP_NUM_THREADS (not a number: left to the libraries)")
        return ThreadChoice(count if count >= 1 else None, "OMP_NUM_THREADS")
    if callable(cores):
        cores = cores()
    usable, why = (cores.usable, cores.why) if isinstance(cores, Cores) else (cores, f"{cores} cores")
    if workers:
        return ThreadChoice(max(1, usable // workers),
                            f"{usable} usable core{'s' if usable > 1 else ''} // {workers} xdist "
                            f"workers; {why}")
    return ThreadChoice(usable, f"the usable cores: {why}")


def apply(threads: int) -> None:
    """Run torch (now or once imported) and onnxruntime sessions with ``threads`` threads."""
    os.environ[ENV] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(threads)


def onnxruntime_threads() -> int:
    """The intra-op thread count for a new onnxruntime session (0: its own default)."""
    try:
        return max(0, int(os.environ.get(ENV, "0")))
    except ValueError:
        return 0
