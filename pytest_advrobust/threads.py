"""How many threads torch and onnxruntime use in this process.

Under pytest-xdist every worker would start torch (and onnxruntime) with one thread per
core, so ``-n 2`` on two cores ran four busy threads on two cores and took twice as long
as a serial run. Each worker therefore gets its share, ``cores // workers`` (at least 1).

Precedence, first that applies: ``--advrobust-threads=N`` (or ``PYTEST_ADVROBUST_THREADS=N``;
``0`` keeps the libraries' own defaults), then a user's ``OMP_NUM_THREADS``, then the share
on an xdist worker. A serial run without any of these keeps the libraries' defaults.

No heavy import here: when torch is not loaded yet, ``OMP_NUM_THREADS`` is set so torch
starts with that many threads; when it is, ``torch.set_num_threads`` is called.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, NamedTuple

__all__ = ["ENV", "ThreadChoice", "available_cores", "choose", "apply", "onnxruntime_threads"]

#: the override, and (once applied) the count this process uses
ENV = "PYTEST_ADVROBUST_THREADS"


class ThreadChoice(NamedTuple):
    """``threads`` None leaves the libraries' defaults alone; ``why`` names the rule."""

    threads: int | None
    why: str


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, so a container's cpuset counts)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


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
           cores: int) -> ThreadChoice:
    """The thread count for this process, and why (see the module's docstring)."""
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
    if workers:
        return ThreadChoice(max(1, cores // workers), f"{cores} cores // {workers} xdist workers")
    return ThreadChoice(None, "library defaults")


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
