"""Three real agents around the libvirtd pair, for the live-migration integration tests.

`agents_on(pair, run_dir, fence)` starts three `haagent run` processes: n1 manages host 1's
libvirtd, n2 host 2's (tests/helpers/libvirtd_pair.py: one libvirtd per mount and network
namespace, peer-to-peer over TCP between them), n3 is a witness. Each hypervisor's
`migration_uri` is the URI the other host's libvirtd reaches it at. The one guest `g` is the
pair's 64 MiB TCG guest on an NBD disk (its RAM filled with noise, so a migration moves real
pages), preferred on n1.

Fencing is either the stock `fence_dummy` (`fence="dummy"`: it powers nothing off, so only
paths in which the fenced host is already dead can be tested with it) or the stock
`fence_ipmilan` against one `ipmi_sim` per node (`fence="ipmi"`) whose power-off kills that
node's agent *and* its host's libvirtd and QEMUs (`LibvirtdPair.power_hook`): a fence that
really powers a libvirt host off.

A `DomainWatch` samples the guest on both hosts every 100 ms for the whole run; on exit no
sample may show it running unpaused on both hosts. Everything (agents, BMCs) is stopped by
pid even when the test fails; the pair fixture stops the hosts.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import libvirt

from haagent.localcluster.cluster import (
    GuestPlan,
    LocalCluster,
    http_get_json,
    local_plan,
    wait_for,
)
from tests.helpers.libvirtd_pair import LibvirtdPair
from tests.helpers.migration_watch import DomainWatch, Sample

__all__ = [
    "GUEST",
    "Run",
    "agents_on",
    "migrate_cli",
    "monotonic_of",
    "running_on_h2_before",
    "set_speed",
    "show_logs",
    "wait_copying",
]

GUEST = "g"
MEMORY_MIB = 64
START_TIMEOUT_S = 90.0  # the first define probes QEMU: ~5 s on a loaded machine
SETTLE_TIMEOUT_S = 60.0


@dataclass
class Run:
    pair: LibvirtdPair
    cluster: LocalCluster
    watch: DomainWatch
    t0: float  # monotonic, the guest's RAM filled on host 1
    since: int = 0  # events up to this index were the set-up's (`events` leaves them out)

    def status(self) -> dict[str, Any]:
        return self.cluster.any_status()

    def events(self) -> list[dict[str, Any]]:
        """The committed events since the set-up, as n2 applied them."""
        path = f"/v1/events?since={self.since}&limit=1000"
        doc = http_get_json(self.cluster.api_listen("n2"), path, self.cluster.token("n2"))
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
def agents_on(
    pair: LibvirtdPair,
    run_dir: Path,
    fence: str = "dummy",
    timing: dict[str, float | str] | None = None,
    n1_follows: bool = False,
) -> Iterator[Run]:
    """The three agents with the guest running on n1 (RAM filled), and the watch on both
    hosts; `timing` overrides `[timing]` (the robust defaults, a 60 s migration timeout).
    `n1_follows`: start n2 and n3 first and n1 only once one of them leads Raft, so that
    n1 starts as a follower (killing the leader costs the others their leases for a moment,
    which a test of n1's agent dying alone does not want), and live-migrate the guest to n1
    if it was placed elsewhere. On exit: the watch stops, the
    agents (and BMCs) stop, and no sample may show the guest running on both hosts."""
    if fence not in ("dummy", "ipmi"):
        raise ValueError(f"fence must be 'dummy' or 'ipmi', not {fence!r}")
    # The watch's lookups of an absent domain or a dead libvirtd are expected: keep libvirt's
    # default handler from printing each one.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    xml = pair.guest_xml(GUEST, MEMORY_MIB)
    # With n1 started last, the leader must not place the guest before n1 joined: the initial
    # placement waits for every hypervisor (but only this long after the leader's start).
    wait = {"initial_placement_wait_s": START_TIMEOUT_S} if n1_follows else {}
    plan = local_plan(
        3,
        fence=fence,
        guests=(GuestPlan(GUEST, MEMORY_MIB, 10, ("n1",), xml=xml),),
        witness=True,
        timing={"migration_timeout_s": 60.0, **wait, **(timing or {})},
    )
    nodes = tuple(
        replace(n, libvirt_uri=pair.uri(i), migration_uri=pair.peer_uri(i))
        if n.role == "hypervisor"
        else n
        for i, n in enumerate(plan.nodes, 1)
    )
    plan = replace(plan, nodes=nodes)
    # fence_ipmilan gives up on one ipmitool call after this (its default, 20 s, is longer
    # than a test should wait for a BMC that does not answer).
    if fence == "ipmi":
        plan = replace(plan, ipmi_power_timeout_s=10)
    watch = DomainWatch([pair.uri(1), pair.uri(2)], GUEST).start()
    cluster = LocalCluster(run_dir, plan)
    try:
        cluster.write()
        if fence == "ipmi":
            for i in (1, 2):
                hook = run_dir / "bmc" / f"n{i}.power-hook"
                agent_hook = hook.rename(hook.with_suffix(".agent-hook"))
                hook.write_text(pair.power_hook(i, agent_hook))
                hook.chmod(0o755)
        started = time.monotonic()
        if n1_follows:
            cluster.start_bmcs()
            cluster.start_agent("n2")
            cluster.start_agent("n3")
            wait_for("n2 or n3 to lead", lambda: _leader(cluster, ("n2", "n3")), START_TIMEOUT_S)
            cluster.start_agent("n1")
            cluster.wait_ready(START_TIMEOUT_S)
            _bring_home(cluster)
        else:
            cluster.start(START_TIMEOUT_S)
        filled = pair.wait_filled(GUEST)
        print(
            f"\nagents up, guest running on h1 in {time.monotonic() - started - filled:.2f}"
            f" s, RAM filled {filled:.2f} s later"
        )
        run = Run(pair, cluster, watch, time.monotonic())
        # A migration that brought the guest home is the set-up's, not the test's.
        run.since = max((e["index"] for e in run.events()), default=0)
        try:
            yield run
        except BaseException:
            show_logs(cluster)
            raise
        if watch.both_running():
            show_logs(cluster)
    finally:
        try:
            cluster.stop()
        finally:
            watch.stop()
    twice = watch.both_running()
    history = "\n".join(watch.transitions(twice[0].at - 30 if twice else 0))
    assert twice == [], f"the guest ran on both hosts: {twice[:3]}; states:\n{history}"


def _leader(cluster: LocalCluster, nodes: tuple[str, ...]) -> str | None:
    """The Raft leader, if one of `nodes` leads and its view is fresh (for wait_for)."""
    for node in nodes:
        try:
            doc = cluster.status(node)
        except (OSError, ValueError):
            continue
        # Its view need not be proven fresh: only start-up order depends on it (a test that
        # needs n1 to follow checks the leader again, with a fresh view, when it matters).
        if doc["leader"] in nodes:
            return str(doc["leader"])
    return None


def _bring_home(cluster: LocalCluster) -> None:
    """Live-migrate the guest to n1 if the leader placed it elsewhere. That happens when n1
    joins late: until its first heartbeat commits, a node whose Join reported an old applied
    index counts as silent, and placement passes it over once every hypervisor has joined."""
    owner = cluster.any_status()["guests"][GUEST]["owner"]
    if owner == "n1":
        return
    print(f"\nthe guest was placed on {owner} before n1's first heartbeat: migrating it to n1")
    done = migrate_cli(cluster, "n1")
    assert done.returncode == 0, done.stdout + done.stderr

    def home() -> bool | None:
        g = cluster.any_status()["guests"][GUEST]
        m = g["migration"]
        ok = g["owner"] == "n1" and g["state"] == "running"
        return True if ok and m is not None and not m["in_flight"] else None

    wait_for("the guest to move to n1", home, SETTLE_TIMEOUT_S)


def show_logs(cluster: LocalCluster, lines: int = 60) -> None:
    """The end of every agent's log, for a failure's report (the run folder is removed)."""
    for node in cluster.nodes():
        try:
            text = cluster.log_file(node).read_text(errors="replace")
        except OSError:
            continue
        tail = text.splitlines()[-lines:]
        print(f"--- {node}'s log (last {len(tail)} lines)", *tail, sep="\n")


def running_on_h2_before(watch: DomainWatch, at: float, since: float = 0.0) -> list[Sample]:
    """The samples taken from `since` to `at` (monotonic) that show the guest running on host
    2 (`since`: `Run.t0`, when the set-up may have run it there)."""
    return [s for s in watch.samples if since <= s.at < at and s.states[1].startswith("running")]


def migrate_cli(cluster: LocalCluster, node: str) -> subprocess.CompletedProcess[str]:
    """`haagent guest migrate g NODE`, against n1's API (the admin token from its config)."""
    return subprocess.run(
        [sys.executable, "-m", "haagent", "guest", "migrate", GUEST, node,
         "--config", str(cluster.config_path("n1"))],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def set_speed(uri: str, mib_s: int) -> None:
    """Cap the guest's migration bandwidth: for its next job, or for the job running now
    (libvirt applies a new cap to a running migration at once)."""
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
