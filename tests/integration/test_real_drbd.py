"""Real DRBD 8.4 (kernel module in two TCG guests) driven by the production pieces.

In each guest: the production wrapper `resources/drbd.sh` (run by the guest's BusyBox sh
from the host checkout, shared read-only over 9p), and the production fence-peer handler
(`python -m haagent.resources.drbd_fence`, the same code as `haagent drbd fence-peer`)
configured in drbd.conf with `fencing resource-and-stonith`. It talks over a unix socket to
a stand-in agent endpoint in the guest (tests/drbd_guest/standin_agent.py: the production
`FenceServer` with a scripted decision). On the host: the production parser reads what the
wrapper printed, and the core decides on the parsed observations.

One boot of both guests serves every scenario, in order (each builds on the state the one
before left): (b) Inconsistent replicas are reported so and never promoted, (c) a cut link
calls the real handler, the endpoint answers "peer fenced" and I/O resumes (and the
production DrbdWatcher, running in guest1, saw it live), the watcher restarts a killed
events2, (b) the cut-off replica, outdated, is reported Outdated and never promoted, (d)
when the endpoint answers "no majority" the handler fails and I/O stays frozen, (e) the
core then resumes that I/O (the wrapper's `resume-io`) only once the peer is committed
outdated, and (a)
guest1 loses power and guest2 is promoted only after the fence is committed (adapter level:
the core's decision and the endpoint's state are driven by the test, not by a daemon).

The guest image is built (and cached in .cache/drbd-guest/) by the module fixture.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from haagent.agent import PromoteReplica, ResumeReplicaIo, StartGuest
from haagent.commands import (
    AssignGuests,
    Assignment,
    DeclareFailed,
    FenceResult,
    GuestRunning,
    GuestStarting,
    GuestStopped,
    ReplicaOutdated,
)
from haagent.model import FailureEvidence, FenceMethod
from haagent.ports import DiskState, ReplicaObservation, ReplicaRole
from haagent.resources.drbd_events import (
    Action,
    Kind,
    ResourceTracker,
    observations_from_dump,
    parse_stream,
)
from tests.helpers.drbd_guest import REPO, DrbdGuest, ensure_image, free_port
from tests.unit.test_replicas import base, build, starting_on, step_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WRAPPER = f"/host{REPO}/resources/drbd.sh"
SOCKET = "/run/haagent/fence.sock"  # inside `chroot /host`
HANDLER_TIMEOUT_S = 8
HANDLER = (
    f"chroot /host {REPO}/.venv/bin/python -m haagent.resources.drbd_fence {{op}} "
    f"--socket {SOCKET} --timeout-s {HANDLER_TIMEOUT_S} 2>>/tmp/handler.log"
)
CONF = f"""global {{ usage-count no; }}
resource r0 {{
  device /dev/drbd0; disk /dev/vda; meta-disk internal;
  disk {{ fencing resource-and-stonith; }}
  handlers {{
    fence-peer "{HANDLER.format(op="fence-peer")}";
    unfence-peer "{HANDLER.format(op="unfence-peer")}";
  }}
  net {{ protocol C; ping-int 1; ping-timeout 5; timeout 10; connect-int 2; }}
  on guest1 {{ address 10.99.1.1:7789; }}
  on guest2 {{ address 10.99.1.2:7789; }}
}}
"""
WRITE = "dd if=/dev/zero of=/dev/drbd0 bs=4k count=1 oflag=direct"
STEP_TIMEOUT_S = 240.0  # generous: TCG guests on a host shared with other test runs


@dataclass
class Pair:
    g1: DrbdGuest
    g2: DrbdGuest
    timings: dict[str, float] = field(default_factory=dict)

    def status(self, g: DrbdGuest) -> ReplicaObservation:
        return observations_from_dump(g.check(f"sh {WRAPPER} status r0"))["r0"]

    def requests(self, g: DrbdGuest | None = None) -> list[dict[str, Any]]:
        rc, out = (g or self.g1).run("cat /host/run/haagent/requests.log")
        return [json.loads(line) for line in out.splitlines()] if rc == 0 else []

    def probe(self) -> list[dict[str, Any]]:
        """What the production DrbdWatcher in guest1 reported, one entry per wake."""
        rc, out = self.g1.run("cat /host/run/haagent/watch.jsonl")
        return [json.loads(line) for line in out.splitlines()] if rc == 0 else []

    def watch_events(self, g: DrbdGuest) -> list[Any]:
        return parse_stream(g.check("cat /tmp/watch.log"))


def wait_until(what: str, cond: Callable[[], bool], timeout_s: float = STEP_TIMEOUT_S) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.5)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    t0 = time.monotonic()
    ensure_image()
    run = tmp_path_factory.mktemp("drbd")
    (run / "drbd.conf").write_text(CONF)
    (run / "verdict").write_text("peer-fenced\n")
    g1, g2 = DrbdGuest(1, run), DrbdGuest(2, run)
    p = Pair(g1, g2)
    try:
        port = free_port()
        g1.start(port, listen=True)
        g2.start(port, listen=False)
        g1.wait_ready()
        g2.wait_ready()
        p.timings["boot_s"] = time.monotonic() - t0
        # The stand-in endpoint (Python under TCG starts slowly: launch it first).
        g1.check(f"cp /host{run}/verdict /host/run/haagent/verdict")
        g1.check(
            f"chroot /host sh -c 'cd {REPO} && exec .venv/bin/python -m "
            f"tests.drbd_guest.standin_agent {SOCKET} /run/haagent/verdict "
            "/run/haagent/requests.log' > /tmp/standin.log 2>&1 &"
        )
        # guest2's endpoint: the production ConsensusFenceAuthority on a fake consensus whose
        # state the test switches from "guest1 owns vm" to "guest1 fenced, guest2 starts vm".
        g2.check("echo owner-running > /host/run/haagent/phase")
        g2.check(
            f"chroot /host sh -c 'cd {REPO} && exec .venv/bin/python -m "
            f"tests.drbd_guest.standin_agent {SOCKET} /run/haagent/phase "
            "/run/haagent/requests.log --node guest2' > /tmp/standin.log 2>&1 &"
        )
        for g in (g1, g2):
            g.check(f"cp /host{run}/drbd.conf /etc/drbd.conf")
            g.check("drbdadm create-md --force r0")
            g.check(f"sh {WRAPPER} watch r0 > /tmp/watch.log 2>&1 &")
            g.check(f"sh {WRAPPER} up r0")
        # The production watcher, in guest1 (under chroot: host python, host drbd-utils,
        # guest kernel), recording each wake.
        g1.check(
            f"chroot /host sh -c 'cd {REPO} && PATH=/usr/sbin:/usr/bin:/sbin:/bin exec "
            ".venv/bin/python -m tests.drbd_guest.watch_probe r0 /run/haagent/watch.jsonl'"
            " > /tmp/probe.log 2>&1 &"
        )
        wait_until("the replication link", lambda: p.status(g1).connected)
        wait_until("the watcher", lambda: any(e["current"] for e in p.probe()))
        for g in (g1, g2):
            wait_until("the stand-in endpoint", lambda g=g: g.run(f"test -S /host{SOCKET}")[0] == 0)
        p.timings["ready_s"] = time.monotonic() - t0
        yield p
    finally:
        for g in (g1, g2):
            if g.console.exists():
                tail = g.console.read_text(errors="replace").splitlines()[-30:]
                print(f"--- {g.name} console (last 30 lines)\n" + "\n".join(tail))
            if g.proc is not None and g.proc.poll() is None and g._conn is not None:
                for cmd in (
                    "cat /tmp/handler.log",
                    "cat /tmp/standin.log",
                    "cat /tmp/probe.log",
                    "dmesg | tail -40",
                ):
                    print(f"--- {g.name}: {cmd}\n{g.run(cmd, timeout_s=20)[1]}")
            g.close()
        print(f"real DRBD timings: {p.timings}")


def core_refuses(obs: ReplicaObservation) -> None:
    """Feed the observation to the core as n2's replica of guest `db` (resource r0)."""
    step = step_for("n2", starting_on("n2"), obs)
    assert not [a for a in step.actions if isinstance(a, PromoteReplica | StartGuest)]
    (stopped,) = [p.command for p in step.proposals if isinstance(p.command, GuestStopped)]
    assert stopped.give_up and obs.disk.value in stopped.reason


def test_b_inconsistent_replicas_are_never_promoted(pair: Pair) -> None:
    for g in (pair.g1, pair.g2):
        obs = pair.status(g)
        assert (obs.role, obs.disk, obs.connected) == (
            ReplicaRole.SECONDARY,
            DiskState.INCONSISTENT,
            True,
        )
        core_refuses(obs)
    rc, out = pair.g2.run(f"sh {WRAPPER} promote r0")
    assert rc == 17 and "Need access to UpToDate data" in out  # DRBD's own gate
    # The first promotion of a new resource is an admin's act (test setup).
    pair.g1.check("drbdadm primary --force r0")
    # Each side learns the end of the sync on its own: wait until both know it.
    pair.timings["initial_sync_s"] = wait_until(
        "the initial sync",
        lambda: (
            pair.status(pair.g2).disk is DiskState.UP_TO_DATE
            and pair.status(pair.g1).peer_disk is DiskState.UP_TO_DATE
        ),
    )
    assert pair.status(pair.g1) == ReplicaObservation(
        "r0", ReplicaRole.PRIMARY, DiskState.UP_TO_DATE, True, ReplicaRole.SECONDARY,
        DiskState.UP_TO_DATE,
    )  # fmt: skip


def test_c_cut_link_runs_the_real_handler_and_io_resumes(pair: Pair) -> None:
    pair.g2.check("ip link set eth0 down")
    t0 = time.monotonic()
    pair.g1.check(WRITE, timeout_s=STEP_TIMEOUT_S)  # frozen until the handler answered 7
    pair.timings["cut_to_write_done_s"] = time.monotonic() - t0
    (req,) = [r for r in pair.requests() if r["op"] == "fence-peer"]
    assert (req["resource"], req["peer"], req["peer_address"]) == ("r0", "guest2", "10.99.1.2")
    events = pair.watch_events(pair.g1)
    tracker = ResourceTracker()
    tracker.feed(events)
    r0 = tracker.get("r0")
    assert r0 is not None and not r0.io_suspended
    (fence,) = [h for h in r0.helpers if h.helper == "fence-peer"]
    assert fence.exit_code == 7
    suspended = [e for e in events if e.kind is Kind.RESOURCE and "suspended" in e.fields]
    assert [e.fields["suspended"] for e in suspended][-2:] == ["fencing", "no"]
    calls = [e for e in events if e.kind is Kind.HELPER and e.fields["helper"] == "fence-peer"]
    assert [e.action for e in calls] == [Action.CALL, Action.RESPONSE]
    obs = pair.status(pair.g1)
    assert (obs.role, obs.disk, obs.connected) == (
        ReplicaRole.PRIMARY,
        DiskState.UP_TO_DATE,
        False,
    )
    # The production watcher saw it live: frozen, the handler's 7, resumed, disconnected.
    wait_until("the watcher to see I/O resume", lambda: pair.probe()[-1]["suspended"] == "no")
    seen = pair.probe()
    assert any(e["suspended"] == "fencing" for e in seen)
    assert ["fence-peer", 7] in [e["helper"] for e in seen]
    last = seen[-1]["obs"]
    assert (last["role"], last["connected"]) == ("primary", False)


def test_watcher_restarts_real_events2(pair: Pair) -> None:
    before = pair.probe()[-1]
    assert before["current"] and before["restarts"] == 0
    pair.g1.check(f"kill {before['pid']}")
    wait_until(
        "events2 to be restarted",
        lambda: (e := pair.probe()[-1])["current"] and e["restarts"] == 1,
    )
    seen = pair.probe()
    assert any(not e["current"] and e["obs"] is None for e in seen)  # stale while down
    assert seen[-1]["obs"] == before["obs"] and seen[-1]["pid"] != before["pid"]


def test_b_the_cut_off_replica_outdated_is_never_promoted(pair: Pair) -> None:
    # Real 8.4: the cut-off Secondary still says UpToDate (only haagent's Raft record, or an
    # outdate, tells it is behind: the simulator's fake does the same).
    assert pair.status(pair.g2).disk is DiskState.UP_TO_DATE
    pair.g2.check(f"sh {WRAPPER} outdate r0")
    obs = pair.status(pair.g2)
    assert (obs.role, obs.disk, obs.connected) == (
        ReplicaRole.SECONDARY,
        DiskState.OUTDATED,
        False,
    )
    core_refuses(obs)
    rc, out = pair.g2.run(f"sh {WRAPPER} promote r0")
    assert rc == 17 and "UpToDate" in out
    # Heal: the outdated side resynchronises and DRBD runs unfence-peer on the Primary.
    pair.g2.check("ip link set eth0 up")
    pair.timings["heal_to_resynced_s"] = wait_until(
        "the resync", lambda: pair.status(pair.g1).peer_disk is DiskState.UP_TO_DATE
    )
    wait_until(
        "unfence-peer",
        lambda: any(r["op"] == "unfence-peer" for r in pair.requests()),
    )


def test_d_no_majority_keeps_io_frozen(pair: Pair) -> None:
    pair.g1.check("echo no-majority > /host/run/haagent/verdict")
    pair.g2.check("ip link set eth0 down")
    pair.g1.check(f"({WRITE}; echo done > /tmp/write.done) > /dev/null 2>&1 &")

    def handler_failed() -> bool:
        r0 = ResourceTracker()
        r0.feed(pair.watch_events(pair.g1))
        state = r0.get("r0")
        fences = [h for h in state.helpers if h.helper == "fence-peer"] if state else []
        return len(fences) >= 2 and fences[-1].exit_code == 1

    pair.timings["cut_to_handler_failed_s"] = wait_until("the handler to fail", handler_failed)
    fence_requests = [r for r in pair.requests() if r["op"] == "fence-peer"]
    assert len(fence_requests) >= 3  # the first cut, then retries until the deadline
    time.sleep(5)  # I/O must stay frozen: the write never completes
    assert pair.g1.run("test -e /tmp/write.done")[0] != 0
    tracker = ResourceTracker()
    tracker.feed(pair.watch_events(pair.g1))
    r0 = tracker.get("r0")
    assert r0 is not None and r0.suspended == "fencing"
    assert "suspended:fencing" in pair.g1.check(f"sh {WRAPPER} status r0")


def test_e_frozen_io_resumes_only_once_the_peer_is_committed_outdated(pair: Pair) -> None:
    """After (d) the handler has failed and guest1's write is still frozen. The core, on
    guest1's real observation (as n1, the owner running the guest), resumes I/O only once
    the peer is committed as outdated, and never from the local view alone; the action runs
    the production wrapper's `resume-io` (what the executor's ResumeReplicaIo runs), and the
    frozen write completes."""
    obs = pair.status(pair.g1)
    assert (obs.role, obs.connected, obs.suspended, obs.fence_frozen) == (
        ReplicaRole.PRIMARY,
        False,
        True,
        True,
    )
    running = build(GuestRunning("db", "n1", 2, 0.0), state=starting_on("n1"))
    step = step_for("n1", running, obs, running=True)
    assert not [a for a in step.actions if isinstance(a, ResumeReplicaIo)]
    assert any(isinstance(p.command, ReplicaOutdated) for p in step.proposals)
    committed = build(ReplicaOutdated("db", "n2", "n1", 2, 0.0), state=running)
    step = step_for("n1", committed, obs, running=True)
    (resume,) = [a for a in step.actions if isinstance(a, ResumeReplicaIo)]
    t0 = time.monotonic()
    pair.g1.check(f"sh {WRAPPER} resume-io {resume.resource}")
    pair.timings["resume_io_to_write_done_s"] = wait_until(
        "the frozen write to complete", lambda: pair.g1.run("test -e /tmp/write.done")[0] == 0
    )
    obs = pair.status(pair.g1)
    assert (obs.role, obs.disk, obs.suspended) == (ReplicaRole.PRIMARY, DiskState.UP_TO_DATE, False)
    pair.g1.check(WRITE, timeout_s=STEP_TIMEOUT_S)  # writes go through, without the peer
    pair.timings["resume_io_s"] = time.monotonic() - t0


def test_a_power_off_promotes_the_survivor_only_after_the_committed_fence(pair: Pair) -> None:
    """guest1 (Primary; frozen in (d), resumed in (e)) loses power; guest2 (Secondary, cut
    off) is promoted only once the fence is committed. The core decides on guest2's real
    observation (as n2 of the core's test cluster); the promotion runs the production wrapper,
    and DRBD 8.4 runs the fence-peer handler on the promoting side first, which guest2's
    endpoint (the production ConsensusFenceAuthority) answers by committing guest1's replica
    as outdated."""
    assert pair.g1.proc is not None
    t0 = time.monotonic()
    os.kill(pair.g1.proc.pid, signal.SIGKILL)  # power loss of guest1's host
    pair.g1.proc.wait(timeout=30)
    obs = pair.status(pair.g2)
    assert (obs.role, obs.disk, obs.connected) == (
        ReplicaRole.SECONDARY,
        DiskState.UP_TO_DATE,
        False,
    )
    # Declared failed but not fenced yet: the guest stays n1's, nothing is promoted on n2.
    state = build(
        AssignGuests((Assignment("db", "n1", 0),), "placed", 0.0),
        GuestStarting("db", "n1", 1, 0.0),
        GuestRunning("db", "n1", 2, 0.0),
        state=base(),
    )
    seq = state.node("n1").heartbeat_seq
    state = build(
        DeclareFailed("n1", seq, FailureEvidence("n3", seq, 2.0, "silent", 0.0)), state=state
    )
    assert not [a for a in step_for("n2", state, obs).actions if isinstance(a, PromoteReplica)]
    # The fence is committed and n2 is assigned the guest: now the core promotes.
    state = starting_on("n2", build(FenceResult("n1", 1, True, FenceMethod.AGENT, "off", 0.0),
                                    state=state))  # fmt: skip
    step = step_for("n2", state, obs)
    assert [type(a).__name__ for a in step.actions] == ["PromoteReplica"]
    # What the daemon's executor will do for PromoteReplica, against real DRBD.
    pair.g2.check("echo owner-fenced > /host/run/haagent/phase")
    pair.g2.check(f"sh {WRAPPER} promote r0", timeout_s=STEP_TIMEOUT_S)
    pair.timings["power_off_to_promoted_s"] = time.monotonic() - t0
    (req,) = [r for r in pair.requests(pair.g2) if r["op"] == "fence-peer"]
    assert (req["peer"], req["verdict"]) == ("guest1", "peer-fenced")
    assert "outdated" in req["detail"]
    pair.g2.check(WRITE, timeout_s=STEP_TIMEOUT_S)  # the guest's I/O goes through there
    pair.timings["power_off_to_written_s"] = time.monotonic() - t0
    assert pair.status(pair.g2).role is ReplicaRole.PRIMARY
