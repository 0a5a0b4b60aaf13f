"""A bridge going down under a running guest moves it by the network-loss policy (issue 11
part 2), for real: live migration, and stop-and-restart when the migration fails.

Two real libvirtd "hosts" (tests/helpers/libvirtd_pair.py: one libvirtd per mount and network
namespace) each with a bridge `br-g` made in its namespace; three real agents, each inside
its host's namespace (n1 and the witness n3 in host 1's, n2 in host 2's), so each agent's
pyroute2 check sees its own host's links, and Raft runs over the lab's addresses. The guest
is the pair's 64 MiB TCG guest on an NBD disk with one NIC on `br-g`, preferred on n1.

`ip link set br-g down` on host 1: after the hold-down (2 s here) the leader commits a
migration intent and n1 live-migrates the guest to n2 (never stopped, never restarted); with
host 2's libvirtd port rejecting host 1 (nft), the migration fails, n1 commits the abort,
stops the guest and the leader restarts it on n2. n1 stays up and keeps its lease in both. A
`DomainWatch` samples both hosts every 100 ms for the whole test: no sample may show the
guest running unpaused on both. Everything (agents, libvirtds, QEMUs, qemu-nbd, namespaces,
temp folders) is stopped by pid and removed even on failure.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
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
from tests.helpers.agents_migrate import show_logs
from tests.helpers.cluster_watch import log_lines
from tests.helpers.libvirtd_pair import LibvirtdPair
from tests.helpers.migration_watch import DomainWatch

pytestmark = pytest.mark.integration

GUEST = "g"
BRIDGE = "br-g"
MEMORY_MIB = 64
HOLD_DOWN_S = 2.0
SHUTDOWN_TIMEOUT_S = 2.0
START_TIMEOUT_S = 90.0
SETTLE_TIMEOUT_S = 60.0
HOSTS = {"n1": 1, "n2": 2, "n3": 1}  # agent -> the host (namespace) it runs on
LIBVIRTD_TCP_PORT = "16509"


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, timeout=10)


def nft(ns: str, *args: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", *args], check=True, capture_output=True, timeout=10
    )


def committed_at(cluster: LocalCluster) -> dict[str, float]:
    """Command type -> when its latest accepted instance was proposed (the proposer's wall
    clock, all agents on this machine's one clock)."""
    doc = http_get_json(
        cluster.api_listen("n2"), "/v1/events?since=0&limit=1000", cluster.token("n2")
    )
    return {e["type"]: float(e["at"]) for e in doc["events"] if e["at"] is not None}


@contextlib.contextmanager
def guest_on_h1(pair: LibvirtdPair) -> Iterator[tuple[LocalCluster, int]]:
    """The agents in their hosts' namespaces, the guest running on n1 (RAM filled): yields
    the cluster and the guest's generation. On exit everything stops, and no sample of the
    watch may show the guest running on both hosts."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # the watch's absent lookups
    lab = pair.lab
    for i in (1, 2):
        ip(lab.host(i), "link", "add", BRIDGE, "type", "bridge")
        ip(lab.host(i), "link", "set", BRIDGE, "up")
    nic = f"<interface type='bridge'><source bridge='{BRIDGE}'/><model type='virtio'/></interface>"
    xml = pair.guest_xml(GUEST, MEMORY_MIB).replace("<memballoon", f"{nic}\n    <memballoon")
    api_dir = pair.base / "api"
    api_dir.mkdir()
    plan = local_plan(
        3,
        fence="dummy",
        guests=(GuestPlan(GUEST, MEMORY_MIB, 10, ("n1",), xml=xml),),
        # The fill kernel ignores ACPI shutdown: a stop is a destroy after this.
        timing={
            "migration_timeout_s": 60.0,
            "network_hold_down_s": HOLD_DOWN_S,
            "shutdown_timeout_s": SHUTDOWN_TIMEOUT_S,
        },
        api_unix_dir=api_dir,
        witness=True,
    )
    nodes = []
    for node in plan.nodes:
        i = HOSTS[node.name]
        placed = replace(node, netns=lab.host(i), raft_host=lab.ip(i))
        if node.role == "hypervisor":
            placed = replace(placed, libvirt_uri=pair.uri(i), migration_uri=pair.peer_uri(i))
        nodes.append(placed)
    watch = DomainWatch([pair.uri(1), pair.uri(2)], GUEST).start()
    try:
        with running_cluster(
            pair.base / "run", replace(plan, nodes=tuple(nodes)), START_TIMEOUT_S
        ) as cluster:
            try:
                pair.wait_filled(GUEST)
                before = cluster.any_status()["guests"][GUEST]
                assert (before["owner"], before["state"]) == ("n1", "running"), before
                assert before["networks"] == [BRIDGE]
                yield cluster, before["generation"]
            except BaseException:
                show_logs(cluster)
                raise
    finally:
        watch.stop()
    twice = watch.both_running()
    assert twice == [], f"the guest ran on both hosts: {twice[:3]}"


def on_n2(cluster: LocalCluster, generation: int) -> Any:
    """A wait_for probe: the guest's status once n2 runs it at `generation`, no migration in
    flight."""

    def probe() -> dict[str, Any] | None:
        g = cluster.any_status()["guests"][GUEST]
        m = g["migration"]
        ok = (g["owner"], g["generation"], g["state"]) == ("n2", generation, "running")
        return g if ok and m is not None and not m["in_flight"] else None

    return probe


def n1_kept_its_lease(cluster: LocalCluster) -> None:
    """n1 is up and never declared failed, and n2's own view shows the guest running (its
    observer may still hold a sample from the start, when QEMU is paused: wait for a fresh
    one)."""
    doc = cluster.status("n2")
    assert doc["nodes"]["n1"]["state"] == "up"
    assert doc["nodes"]["n1"]["missing_networks"] == [BRIDGE]
    assert doc["nodes"]["n1"]["failure_epoch"] == 0

    def running_here() -> bool | None:
        local = cluster.status("n2")["local"].get(GUEST)
        return True if local and local["running"] and not local["paused"] else None

    wait_for("the guest running unpaused in n2's view", running_here, 10.0)


def test_a_bridge_lost_on_the_source_live_migrates_the_guest(pair: LibvirtdPair) -> None:
    with guest_on_h1(pair) as (cluster, generation):
        t_down, down_wall = time.monotonic(), time.time()
        ip(pair.lab.host(1), "link", "set", BRIDGE, "down")
        after = wait_for("the live migration to n2", on_n2(cluster, generation + 1), 60.0)
        moved_s = time.monotonic() - t_down
        assert after["migration"]["phase"] == "done", after["migration"]
        assert after["network_loss"] is None  # n2 has the bridge
        n1_kept_its_lease(cluster)
        leader = cluster.status("n2")["leader"]
        assert log_lines(cluster, leader, rf"evacuate .*guest={GUEST} .*lacks {BRIDGE}")
        assert not log_lines(cluster, "n1", rf"\bstop .*guest={GUEST}\b")
        at = committed_at(cluster)
        print(
            f"\nbridge down on h1 -> condition committed"
            f" {at['network_condition'] - down_wall:.2f} s, intent (by {leader})"
            f" {at['migrate_guest'] - down_wall:.2f} s, hand-over"
            f" {at['migration_done'] - down_wall:.2f} s, resumed on n2"
            f" {at['migration_resumed'] - down_wall:.2f} s; status saw it <= {moved_s:.2f}"
            f" s (hold-down {HOLD_DOWN_S} s)"
        )
        assert moved_s >= HOLD_DOWN_S, "moved before the hold-down"


def test_a_failed_migration_falls_back_to_stop_and_restart(pair: LibvirtdPair) -> None:
    h2 = pair.lab.host(2)
    with guest_on_h1(pair) as (cluster, generation):
        # Host 2's libvirtd refuses host 1's peer-to-peer connection: the migration fails at
        # once (a reset, not a silent drop that would wait for TCP's timeouts).
        nft(h2, "add", "table", "inet", "hatest")
        nft(h2, "add", "chain", "inet", "hatest", "in",
            "{ type filter hook input priority 0 ; }")  # fmt: skip
        nft(h2, "add", "rule", "inet", "hatest", "in", "tcp", "dport", LIBVIRTD_TCP_PORT,
            "reject", "with", "tcp", "reset")  # fmt: skip
        t_down, down_wall = time.monotonic(), time.time()
        ip(pair.lab.host(1), "link", "set", BRIDGE, "down")
        # The abort moves the generation past the intent's; the restart on n2 once more.
        after = wait_for("the restart on n2", on_n2(cluster, generation + 3), 60.0)
        moved_s = time.monotonic() - t_down
        assert after["migration"]["phase"] == "aborted", after["migration"]
        n1_kept_its_lease(cluster)
        assert log_lines(cluster, "n1", rf"stop .*guest={GUEST} reason=n1 lacks {BRIDGE}")
        at = committed_at(cluster)
        print(
            f"\nbridge down on h1, migration refused -> intent"
            f" {at['migrate_guest'] - down_wall:.2f} s, abort"
            f" {at['migration_aborted'] - down_wall:.2f} s, stopped on n1"
            f" {at['guest_stopped'] - down_wall:.2f} s, running on n2"
            f" {at['guest_running'] - down_wall:.2f} s; status saw it <= {moved_s:.2f} s"
        )
        assert at["migration_aborted"] < at["guest_stopped"]
