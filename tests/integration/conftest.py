"""Fixtures for the real-process integration tests.

Nothing here is skipped: a missing tool (ipmi_sim, fence_ipmilan, `ip`, root for namespaces)
fails the test that needs it, loudly. Every cluster, watch and namespace a test makes is torn
down even when the test fails, and teardown checks that no process of the run is left; when
the test failed, the tail of every agent log is printed (pytest shows it with the failure).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from haagent.localcluster.cluster import ClusterPlan, LocalCluster
from tests.helpers.cluster_watch import ClusterWatch
from tests.helpers.libvirtd_pair import LibvirtdPair
from tests.helpers.netns import NetnsLab

CLUSTER_TOOLS = ("ipmi_sim", "ipmitool", "fence_ipmilan", "fence_dummy")
LOG_TAIL_LINES = 60

_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    # Teardown reads this to decide whether to print the agents' logs.
    item.stash.setdefault(_FAILED, False)
    if getattr(report, "failed", False):
        item.stash[_FAILED] = True
    return report


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.fail(
            f"missing tools: {', '.join(missing)} (Debian: openipmi, ipmitool, fence-agents)",
            pytrace=False,
        )


def _dump_logs(cluster: LocalCluster) -> None:
    for node in cluster.nodes():
        path = cluster.log_file(node)
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        print(f"\n----- {path} (last {LOG_TAIL_LINES} lines) -----")
        print("\n".join(lines[-LOG_TAIL_LINES:]))


@pytest.fixture
def make_cluster(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., LocalCluster]]:
    """`make_cluster(plan, start=True, timeout_s=30)`: write and start a LocalCluster under
    tmp_path. All of them are stopped at teardown, and none may leave a process behind."""
    require_tools(*CLUSTER_TOOLS)
    clusters: list[LocalCluster] = []

    def make(plan: ClusterPlan, start: bool = True, timeout_s: float = 30.0) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"run{len(clusters) + 1}", plan)
        clusters.append(cluster)
        cluster.write()
        if start:
            cluster.start(timeout_s)
        return cluster

    try:
        yield make
    finally:
        failed = request.node.stash.get(_FAILED, False)
        for cluster in clusters:
            if failed:
                _dump_logs(cluster)
            cluster.stop()
        left = {str(c.run_dir): c.leftover_pids() for c in clusters}
        assert not any(left.values()), f"processes left behind: {left}"


@pytest.fixture
def watch_cluster() -> Iterator[Callable[[LocalCluster], ClusterWatch]]:
    """`watch_cluster(cluster)`: a started ClusterWatch, stopped at teardown."""
    watches: list[ClusterWatch] = []

    def make(cluster: LocalCluster) -> ClusterWatch:
        watch = ClusterWatch(cluster)
        watches.append(watch)
        return watch.start()

    try:
        yield make
    finally:
        for watch in watches:
            watch.stop()


@pytest.fixture
def start_watched(
    make_cluster: Callable[..., LocalCluster],
    watch_cluster: Callable[[LocalCluster], ClusterWatch],
) -> Callable[[ClusterPlan], tuple[LocalCluster, ClusterWatch]]:
    """`start_watched(plan)`: write the cluster, start watching it, then start it, so the
    watch covers the start-up too. Returns (cluster, watch) once every guest runs."""

    def start(plan: ClusterPlan) -> tuple[LocalCluster, ClusterWatch]:
        cluster = make_cluster(plan, start=False)
        watch = watch_cluster(cluster)
        cluster.start()
        return cluster, watch

    return start


@pytest.fixture
def netns_lab() -> Iterator[Callable[[int], NetnsLab]]:
    """`netns_lab(n)`: n namespaces on a bridge, deleted at teardown (after the clusters,
    which depend on this fixture being set up first)."""
    if os.geteuid() != 0:
        pytest.fail("network namespace tests need root", pytrace=False)
    require_tools("ip")
    labs: list[NetnsLab] = []

    def make(hosts: int) -> NetnsLab:
        lab = NetnsLab(hosts)
        labs.append(lab)
        lab.up()
        return lab

    try:
        yield make
    finally:
        errors = []
        for lab in labs:
            try:
                lab.down()
            except Exception as exc:
                errors.append(str(exc))
        assert not errors, errors


@pytest.fixture
def pair() -> Iterator[LibvirtdPair]:
    """Two libvirtd "hosts" that can live-migrate a guest (tests/helpers/libvirtd_pair.py),
    under a short folder in /tmp (unix socket paths are limited to 107 bytes, pytest's
    tmp_path is long); everything is stopped and removed after the test."""
    base = Path(tempfile.mkdtemp(prefix="hamig-", dir="/tmp"))
    lab = LibvirtdPair(base)
    try:
        started = time.perf_counter()
        lab.up()
        print(f"\ntwo libvirtd hosts up in {time.perf_counter() - started:.2f} s")
        yield lab
    finally:
        try:
            lab.down()
        finally:
            shutil.rmtree(base, ignore_errors=True)
