"""The default thread count follows the CPUs the process really has: its affinity, a cgroup
quota (v1 or v2) and the cores other processes keep busy; read from a fake filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_advrobust import threads
from pytest_advrobust.threads import Cores, busy_cores, cgroup_cpu_limit, choose, usable_cores

V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = ("31 23 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
             "32 23 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n")


def fake_root(tmp_path: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    (tmp_path / "proc/self/mountinfo").write_text(mountinfo)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_cgroup_v2_quota_is_the_tightest_along_the_path(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/ci.slice/job-7\n", V2_MOUNT, {
        "sys/fs/cgroup/cpu.max": "max 100000\n",
        "sys/fs/cgroup/ci.slice/cpu.max": "300000 100000\n",
        "sys/fs/cgroup/ci.slice/job-7/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root) == 3.0
    (root / "sys/fs/cgroup/ci.slice/job-7/cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(root) == 1.5


def test_cgroup_v2_without_a_quota_is_no_limit(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/\n", V2_MOUNT, {"sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root) is None


def test_a_container_seeing_its_cgroup_as_the_mount_root(tmp_path: Path) -> None:
    """``docker --cpus=2``: /proc/self/cgroup names the host's path, which does not exist in
    the container's view; the mounted hierarchy is the container's own cgroup."""
    root = fake_root(tmp_path, "0::/system.slice/docker-abc.scope\n", V2_MOUNT,
                     {"sys/fs/cgroup/cpu.max": "200000 100000\n"})
    assert cgroup_cpu_limit(root) == 2.0


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n", V1_MOUNTS, {
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root) == 2.5
    (root / "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(root) is None


def test_no_cgroup_files_is_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None


def _stat(rows: dict[int, tuple[int, int]]) -> str:
    """/proc/stat with per-CPU (busy, idle) ticks (user and idle columns; the rest 0)."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{cpu} {busy} 0 0 {idle} 0 0 0 0 0 0" for cpu, (busy, idle) in rows.items()]
    return "\n".join(lines + ["intr 1 2 3", "ctxt 99"]) + "\n"


def test_busy_cores_counts_what_other_processes_used_between_two_reads(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    stat = tmp_path / "proc/stat"
    stat.write_text(_stat({0: (100, 100), 1: (100, 100), 2: (100, 100)}))
    # in the window: cpu0 fully busy, cpu1 a quarter busy, cpu2 idle
    later = _stat({0: (110, 100), 1: (102, 106), 2: (100, 108)})

    def sleep(seconds: float) -> None:
        assert seconds == threads.SAMPLE_SECONDS
        stat.write_text(later)

    assert busy_cores(root=tmp_path, sleep=sleep) == pytest.approx(1 + 0.25 + 0)
    stat.write_text(_stat({0: (100, 100), 1: (100, 100), 2: (100, 100)}))
    assert busy_cores({1, 2}, root=tmp_path, sleep=sleep) == pytest.approx(0.25)  # its affinity only
    assert busy_cores(root=tmp_path / "nothing") is None  # not Linux


@pytest.mark.parametrize("quota, busy, sample, expected", [
    (None, 0.1, True, 8),     # an idle 8-core machine: all of them
    (2.5, 0.1, True, 2),      # docker --cpus=2.5 on it: 2
    (None, 7.9, True, 1),     # a busy machine: one thread, never 0
    (None, 5.0, True, 3),     # 3 free cores
    (None, 5.3, True, 2),     # 2.7 free: the third is shared, so not taken
    (None, 7.9, False, 8),    # not sampled (an xdist worker without the controller's figure)
    (0.5, None, True, 1),     # a quota under one CPU: 1; no /proc/stat: quota alone
])
def test_usable_cores(tmp_path: Path, quota, busy, sample, expected) -> None:
    files = {"sys/fs/cgroup/cpu.max": f"{int(quota * 100000) if quota else 'max'} 100000\n"}
    root = fake_root(tmp_path, "0::/\n", V2_MOUNT, files)
    cores = usable_cores(sample=sample, root=root, affinity=set(range(8)), busy=lambda cpus: busy)
    assert cores.usable == expected
    assert "8 CPUs in this process's affinity" in cores.why
    assert ("cgroup CPU quota" in cores.why) == (quota is not None)


@pytest.mark.parametrize("workers, cores, expected", [
    (None, Cores(6, "x"), 6),   # serial: all usable cores
    (2, Cores(6, "x"), 3),      # -n 2: each worker its share
    (3, Cores(2, "x"), 1),      # more workers than cores: still 1
])
def test_the_default_shares_the_usable_cores(workers, cores, expected) -> None:
    choice = choose(None, {}, workers=workers, cores=cores)
    assert choice.threads == expected and choice.why.endswith("x")


def test_the_cores_are_measured_only_when_the_default_applies() -> None:
    def measure() -> Cores:
        raise AssertionError("measured although the user set a count")

    assert choose("3", {}, workers=None, cores=measure).threads == 3
    assert choose(None, {"OMP_NUM_THREADS": "2"}, workers=2, cores=measure).threads == 2
    assert choose(None, {}, workers=None, cores=lambda: Cores(4, "four")).threads == 4
