"""Live migration through the agents, end to end, on two real libvirtd "hosts".

Three real `haagent run` processes: n1 manages host 1's libvirtd, n2 host 2's (the pair of
tests/helpers/libvirtd_pair.py: one libvirtd per mount and network namespace, peer-to-peer
over TCP between them), n3 is a witness; fencing is the stock fence_dummy. Each hypervisor's
`migration_uri` is the URI the other host's libvirtd reaches it at. The one guest `g` is the
pair's 64 MiB TCG guest on an NBD disk (its RAM filled with noise, so a migration moves real
pages), preferred on n1.

A `DomainWatch` samples the guest on both hosts every 100 ms for the whole test; every test
checks that no sample ever showed it running unpaused on both hosts. Timings come from the
committed events' timestamps (the proposers' wall clocks) and from the samples; they are
printed (`pytest -s`) for the README.

Everything (agents, both libvirtds and their QEMUs, qemu-nbd, namespaces, temp folders) is
stopped by pid and removed even when a test fails.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import libvirt
import pytest

from haagent.localcluster.cluster import (
    GuestPlan,
    LocalCluster,
    http_get_json,
    local_plan,
    running_cluster,
    wait_for,
)
from tests.helpers.libvirtd_pair import LibvirtdPair
from tests.helpers.migration_watch import DomainWatch, Sample

pytestmark = pytest.mark.integration

GUEST = "g"
MEMORY_MIB = 64
SLOW_MIB_S = 2  # ~55 MiB at 2 MiB/s: ~27 s of copying, a crash lands well inside it
START_TIMEOUT_S = 90.0  # the first define probes QEMU: ~5 s on a loaded machine
SETTLE_TIMEOUT_S = 60.0


@dataclass
class Run:
    pair: LibvirtdPair
    cluster: LocalCluster
    watch: DomainWatch
    t0: float  # monotonic, the guest's RAM filled on host 1

    def status(self) -> dict[str, Any]:
        return self.cluster.any_status()

    def events(self) -> list[dict[str, Any]]:
        doc = http_get_json(
            self.cluster.api_listen("n2"), "/v1/events?since=0&limit=1000", self.cluster.token("n2")
        )
        return list(doc["events"])

    def event(self, kind: str, **match: Any) -> dict[str, Any] | None:
        for e in self.events():
            if e["type"] == kind and all(e["command"].get(k) == v for k, v in match.items()):
                return e
        return None

    def show(self, what: str) -> None:
        print(f"{what} (states h1 | h2, from the guest filled on h1):")
        for line in self.watch.transitions(self.t0):
            print("   ", line)


def monotonic_of(wall: float) -> float:
    """A wall-clock timestamp (an event's `at`) on this process's monotonic clock."""
    return wall - (time.time() - time.monotonic())


@contextlib.contextmanager
def agents_on(pair: LibvirtdPair, run_dir: Path) -> Iterator[Run]:
    """The three agents with the guest running on n1 (RAM filled), and the watch on both
    hosts. On exit: the watch stops, the agents stop, and no sample may show the guest
    running on both hosts."""
    # The watch's lookups of an absent domain or a dead libvirtd are expected: keep libvirt's
    # default handler from printing each one.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    xml = pair.guest_xml(GUEST, MEMORY_MIB)
    plan = local_plan(
        3,
        fence="dummy",
        guests=(GuestPlan(GUEST, MEMORY_MIB, 10, ("n1",), xml=xml),),
        witness=True,
        timing={"migration_timeout_s": 60.0},
    )
    nodes = tuple(
        replace(n, libvirt_uri=pair.uri(i), migration_uri=pair.peer_uri(i))
        if n.role == "hypervisor"
        else n
        for i, n in enumerate(plan.nodes, 1)
    )
    watch = DomainWatch([pair.uri(1), pair.uri(2)], GUEST).start()
    try:
        started = time.monotonic()
        with running_cluster(run_dir, replace(plan, nodes=nodes), START_TIMEOUT_S) as cluster:
            filled = pair.wait_filled(GUEST)
            print(
                f"\nagents up, guest running on h1 in {time.monotonic() - started - filled:.2f}"
                f" s, RAM filled {filled:.2f} s later"
            )
            try:
                yield Run(pair, cluster, watch, time.monotonic())
            except BaseException:
                show_logs(cluster)
                raise
            if watch.both_running():
                show_logs(cluster)
    finally:
        watch.stop()
    twice = watch.both_running()
    history = "\n".join(watch.transitions(twice[0].at - 30 if twice else 0))
    assert twice == [], f"the guest ran on both hosts: {twice[:3]}; states:\n{history}"


def show_logs(cluster: LocalCluster, lines: int = 60) -> None:
    """The end of every agent's log, for a failure's report (the run folder is removed)."""
    for node in cluster.nodes():
        tail = cluster.log_file(node).read_text(errors="replace").splitlines()[-lines:]
        print(f"--- {node}'s log (last {len(tail)} lines)", *tail, sep="\n")


def running_on_h2_before(watch: DomainWatch, at: float) -> list[Sample]:
    """The samples taken before `at` (monotonic) that show the guest running on host 2."""
    return [s for s in watch.samples if s.at < at and s.states[1].startswith("running")]


def migrate_cli(cluster: LocalCluster, node: str) -> subprocess.CompletedProcess[str]:
    """`haagent guest migrate g NODE`, against n1's API (the admin token from its config)."""
    return subprocess.run(
        [sys.executable, "-m", "haagent", "guest", "migrate", GUEST, node,
         "--config", str(cluster.config_path("n1"))],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def slow_down(uri: str, mib_s: int) -> None:
    """Cap the next migration's bandwidth (libvirt applies it to the domain's next job)."""
    conn = libvirt.open(uri)
    try:
        conn.lookupByName(GUEST).migrateSetMaxSpeed(mib_s)
    finally:
        conn.close()


def wait_copying(uri: str, min_bytes: int = 4 << 20) -> None:
    """Block until the source's migration job moved `min_bytes` of memory."""
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName(GUEST)
        wait_for(
            "the migration to copy memory",
            lambda: True if dom.jobStats().get("memory_processed", 0) >= min_bytes else None,
            SETTLE_TIMEOUT_S,
        )
    finally:
        conn.close()


def test_migrate_hands_over_to_n2(pair: LibvirtdPair) -> None:
    """The main path: `haagent guest migrate g n2` ends with n2 the owner at generation + 1,
    the guest running on host 2 and shut off (migrated) on host 1, the migration done; host 2
    never ran it before the hand-over committed."""
    with agents_on(pair, pair.base / "run") as run:
        before = run.status()["guests"][GUEST]
        assert (before["owner"], before["state"]) == ("n1", "running"), before
        generation = before["generation"]

        called = time.time()
        done = migrate_cli(run.cluster, "n2")
        answered = time.time()
        assert done.returncode == 0, done.stdout + done.stderr

        def moved() -> dict[str, Any] | None:
            g = run.status()["guests"][GUEST]
            m = g["migration"]
            ok = (g["owner"], g["generation"], g["state"]) == ("n2", generation + 1, "running")
            return g if ok and m is not None and not m["in_flight"] else None

        after = wait_for("the hand-over to n2", moved, SETTLE_TIMEOUT_S)
        assert after["migration"]["phase"] == "done", after["migration"]
        local = run.cluster.status("n2")["local"][GUEST]
        assert local["running"] and not local["paused"], local
        assert run.watch.wait_for(0, f"shutoff/{libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED}", 5)
        assert run.watch.wait_for(1, "running", 5)

        intent = run.event("migrate_guest", guest=GUEST)
        handed = run.event("migration_done", guest=GUEST)
        resumed = run.event("migration_resumed", guest=GUEST)
        assert intent and handed and resumed, run.events()
        assert run.event("migration_aborted", guest=GUEST) is None
        handed_mono = monotonic_of(handed["at"])
        early = running_on_h2_before(run.watch, handed_mono)
        assert early == [], f"host 2 ran the guest before the hand-over: {early[:3]}"
        called_mono = monotonic_of(called)
        paused = next(
            s for s in run.watch.samples if s.at > called_mono and s.states[0][:6] == "paused"
        )
        running = next(
            s for s in run.watch.samples if s.at > handed_mono and s.states[1].startswith("running")
        )
        run.show("migrate g n1 -> n2 through the agents")
        print(
            f"CLI answered {answered - called:.2f} s after the command (intent committed "
            f"{intent['at'] - called:.2f} s); hand-over committed {handed['at'] - called:.2f} s "
            f"after the command; resumed (committed) {resumed['at'] - handed['at']:.2f} s after "
            f"the hand-over; guest paused from its first paused sample on h1 to its first "
            f"running sample on h2 {running.at - paused.at:.2f} s"
        )


def test_source_host_crash_mid_migration(pair: LibvirtdPair) -> None:
    """Host 1 loses power while memory is copied: its agent SIGKILLed, its libvirtd and QEMU
    SIGKILLed. The paused copy on host 2 is never resumed: nothing runs on host 2 before n1's
    fence committed, no hand-over and no resume commit, and the guest ends running on host 2
    alone (started cold) with n2 its owner, host 1 down throughout."""
    with agents_on(pair, pair.base / "run") as run:
        generation = run.status()["guests"][GUEST]["generation"]
        slow_down(pair.uri(1), SLOW_MIB_S)
        called = time.time()
        done = migrate_cli(run.cluster, "n2")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_copying(pair.uri(1))
        assert run.watch.wait_for(1, "paused", 5)  # the incoming copy exists, paused

        crashed = time.time()
        run.cluster.signal_agent("n1", signal.SIGKILL)
        killed = pair.crash(1)

        def recovered() -> dict[str, Any] | None:
            g = run.status()["guests"][GUEST]
            ok = g["owner"] == "n2" and g["state"] == "running" and g["generation"] > generation
            return g if ok else None

        after = wait_for("the guest restarted on n2", recovered, SETTLE_TIMEOUT_S)
        fenced = run.event("fence_result", node="n1", ok=True)
        assert fenced is not None, run.events()
        assert run.event("migration_done", guest=GUEST) is None
        assert run.event("migration_resumed", guest=GUEST) is None
        fenced_mono, crashed_mono = monotonic_of(fenced["at"]), monotonic_of(crashed)
        early = running_on_h2_before(run.watch, fenced_mono)
        assert early == [], f"host 2 ran the guest before n1 was fenced: {early[:3]}"
        settled = run.watch.wait_for(1, "running", 5)
        # Host 1 stays down (its QEMU was SIGKILLed and reaped: `crash` checks). Its libvirtd
        # is not restarted here: a restarted libvirtd reports the dead guest `running` for a
        # few ms while it reconnects to the (gone) QEMU, before `shut off (crashed)`, which a
        # 100 ms sample can catch and which says nothing about a guest running.
        assert settled.states[0] == "down", settled
        after_crash = [s.states[0] for s in run.watch.samples if s.at > crashed_mono + 0.5]
        assert set(after_crash) == {"down"}, set(after_crash)
        later = [s for s in run.watch.samples if s.at > crashed_mono]
        running = next(s for s in later if s.states[1].startswith("running"))
        gone = next((f"{s.at - crashed_mono:.2f} s" for s in later if s.states[1] == "absent"), "-")
        run.show("host 1 crashed mid-migration")
        print(
            f"crash (agent + {killed}) {crashed - called:.2f} s after the command; n1 fenced "
            f"{fenced['at'] - crashed:.2f} s after the crash; paused copy on h2 gone {gone} after "
            f"the crash; guest running on h2 (cold) "
            f"{running.at - crashed_mono:.2f} s after the crash, owner n2 at generation "
            f"{after['generation']} (was {generation}); migration record "
            f"{after['migration']}"
        )
