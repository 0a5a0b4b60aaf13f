"""Live migration through the agents, end to end, on two real libvirtd "hosts".

The three agents, the pair's TCG guest and the 100 ms `DomainWatch` are those of
tests/helpers/agents_migrate.py, with the stock fence_dummy (nothing here needs a fence that
powers a host off: see test_migrate_source_agent_killed.py for one that does). Every test
checks that no sample ever showed the guest running unpaused on both hosts. Timings come from
the committed events' timestamps (the proposers' wall clocks) and from the samples; they are
printed (`pytest -s`) for the README.

Everything (agents, both libvirtds and their QEMUs, qemu-nbd, namespaces, temp folders) is
stopped by pid and removed even when a test fails.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import libvirt
import pytest

from haagent.localcluster.cluster import wait_for
from tests.helpers.agents_migrate import (
    GUEST,
    SETTLE_TIMEOUT_S,
    agents_on,
    migrate_cli,
    monotonic_of,
    running_on_h2_before,
    set_speed,
    wait_copying,
)
from tests.helpers.libvirtd_pair import LibvirtdPair

pytestmark = pytest.mark.integration

SLOW_MIB_S = 2  # ~55 MiB at 2 MiB/s: ~27 s of copying, a crash lands well inside it


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
        set_speed(pair.uri(1), SLOW_MIB_S)
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
