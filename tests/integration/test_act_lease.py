"""Lease checked at the moment of acting, with real agents (issue 8 item 5).

Three real `haagent run` processes (real Raft over TCP, libvirt's in-process test driver, the
watchdog stand-in file). A test hook (tests/helpers/slowcall) holds n1's libvirt calls the way
a slow libvirtd would, while the test takes n1's lease away by SIGKILLing both peers:

1. The start's worker thread is held *before* the agent's last check: when it goes on, the
   lease has lapsed, so create() is never called (a refusal, not a failure).
2. The peers come back, n1 regains its lease and starts g1 again; this time create() itself is
   held, under the lease that authorised it. The peers die again: while that create() is in
   the hypervisor past its lease, n1 does not pet its watchdog (the core alone would: nothing
   is observed running). Once it returns, the pets resume.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from haagent.fencing.watchdog import read_standin
from haagent.localcluster.cluster import ClusterPlan, GuestPlan, LocalCluster, local_plan
from haagent.timing import DEFAULT_TIMING

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "tests" / "helpers" / "slowcall"
LEASE_S = DEFAULT_TIMING.lease_s  # the plan names no profile: the default
NO_PET_S = 4.0  # four pet intervals (1 s with a 10 s watchdog) without a pet


def wait_until(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


class Hooks:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def events(self, node: str) -> list[tuple[str, float]]:
        try:
            text = (self.folder / f"{node}.events").read_text()
        except FileNotFoundError:
            return []
        return [(w, float(t)) for w, t in (line.split() for line in text.splitlines())]

    def count(self, node: str, what: str) -> int:
        return sum(1 for w, _ in self.events(node) if w == what)

    def hold(self, node: str, name: str) -> None:
        (self.folder / f"{node}.{name}").write_text("")

    def release(self, node: str, name: str) -> None:
        (self.folder / f"{node}.{name}").unlink()


def last_pet(cluster: LocalCluster, node: str) -> float:
    state, at_s, _ = read_standin(cluster.run_dir / "state" / node / "watchdog.standin")
    assert state in ("armed", "pet"), state
    return at_s


def lease_held(cluster: LocalCluster, node: str) -> bool:
    try:
        doc = cluster.status(node)
    except Exception:
        return False
    return bool(doc["quorum"])


def test_a_start_is_checked_at_the_call_and_no_pet_while_it_is_in_flight_past_its_lease(
    tmp_path: Path,
    make_cluster: Callable[..., LocalCluster],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hooks = Hooks(tmp_path / "hooks")
    hooks.folder.mkdir()
    monkeypatch.setenv("HAAGENT_SLOWCALL_DIR", str(hooks.folder))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(HOOKS), os.environ.get("PYTHONPATH")) if p)
    )
    plan: ClusterPlan = local_plan(3, fence="dummy", guests=(GuestPlan("g1", 256, 10, ("n1",)),))
    cluster = make_cluster(plan, start=False)
    peers = ("n2", "n3")

    # Phase 1: the start waits in its worker thread (setMetadata held) past the lease.
    hooks.hold("n1", "hold-meta")
    cluster.start_bmcs()
    for node in cluster.nodes():
        cluster.start_agent(node)
    wait_until("n1's start to reach libvirt", lambda: hooks.count("n1", "meta-held") == 1, 60)
    for node in peers:
        cluster.signal_agent(node, signal.SIGKILL)
    wait_until("n1 to lose its lease", lambda: not lease_held(cluster, "n1"), LEASE_S + 10)
    hooks.release("n1", "hold-meta")
    wait_until("the held call to go on", lambda: hooks.count("n1", "meta-released") == 1, 10)
    log = cluster.log_file("n1")
    wait_until("the refusal", lambda: "start g1 not made" in log.read_text(), 10)
    assert hooks.count("n1", "create-called") == 0  # the domain was never started
    assert "start_failed" not in log.read_text()  # a refusal is not a failure

    # Phase 2: the peers come back, n1 regains its lease and starts g1 again; create() itself
    # is held, under the lease that authorised it.
    hooks.hold("n1", "hold")
    for node in peers:
        cluster.start_agent(node)
    wait_until("n1's create()", lambda: hooks.count("n1", "create-held") == 1, 60)
    held_at = time.monotonic()
    wait_until("a pet while the lease holds", lambda: last_pet(cluster, "n1") > held_at, 10)
    for node in peers:
        cluster.signal_agent(node, signal.SIGKILL)
    wait_until("n1 to lose its lease", lambda: not lease_held(cluster, "n1"), LEASE_S + 10)
    # No pet while the create() is in the hypervisor past its lease (pets every 1 s before).
    wait_until(
        f"{NO_PET_S}s without a pet",
        lambda: time.monotonic() - last_pet(cluster, "n1") > NO_PET_S,
        LEASE_S + NO_PET_S + 10,
    )
    assert hooks.count("n1", "create-done") == 0
    assert "not petting the watchdog: start:g1" in log.read_text()
    stopped_at = last_pet(cluster, "n1")
    hooks.release("n1", "hold")
    # Once it returned (and the domain it started without a lease is destroyed), nothing runs
    # here and nothing is in flight: the pets resume.
    wait_until("create() to return", lambda: hooks.count("n1", "create-done") == 1, 10)
    wait_until("the pets to resume", lambda: last_pet(cluster, "n1") > stopped_at, 15)
