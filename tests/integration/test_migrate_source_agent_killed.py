"""The source's agent alone dies mid-migration, on two real libvirtd "hosts" (issue 11).

The agents, guest and 100 ms watch are those of tests/helpers/agents_migrate.py, fenced for
real: the stock `fence_ipmilan` against one `ipmi_sim` per node, whose power-off SIGKILLs that
node's agent, its host's libvirtd and every QEMU there (`LibvirtdPair.power_hook`). A fence
that powers nothing off (fence_dummy) cannot test this path honestly: here host 1's libvirtd
and QEMU outlive the agent, and only the fence stops them.

The migration is slowed to 2 MiB/s; once its intent committed, the libvirt job copies memory
and host 2 holds the paused incoming copy, only n1's agent is SIGKILLed. Its libvirtd carries
the peer-to-peer job on (a client that goes away does not cancel it), and the test picks how
the job then ends:

* *completes*: the bandwidth cap is lifted, so libvirt finishes the job with nobody left to
  commit the hand-over: host 1's copy is `shut off (migrated)`, host 2's stays paused at the
  migration's generation.
* *aborted*: the job is aborted on host 1 (as an admin, or a failed link, would): the guest
  runs on at host 1, now with no agent, and libvirt drops host 2's copy.
* *fenced*: nothing is done; the job still copies when the fence powers host 1 off.

In every case the checks are the same: n1 is declared failed and fenced (host 1 powered off:
its QEMU, if any, killed by the BMC before the fence's result commits), and only after the
fence committed does host 2 run the guest, in the samples and in the committed order (the
paused copy is never resumed: no hand-over and no resume commit; the guest starts cold from
its disk); at the end it runs on host 2 alone, owned by n2; no 100 ms sample ever shows it
running on both hosts, and host 1 never answers after the fence. Timings (kill -> fence
started -> fence committed -> running on host 2) are printed (`pytest -s`).

`test_source_agent_restarted_mid_migration` is the other thing that happens to a killed agent
in production: systemd starts it again at once, before it could be declared failed. Its new
process knows nothing of the job; the migration is aborted and the guest stays on host 1,
unfenced (scenario `migration_source_agent_restart`).
"""

from __future__ import annotations

import signal
import time
from typing import Any

import libvirt
import pytest

from haagent.localcluster.cluster import pid_alive, wait_for
from tests.helpers.agents_migrate import (
    GUEST,
    SETTLE_TIMEOUT_S,
    Run,
    agents_on,
    migrate_cli,
    monotonic_of,
    running_on_h2_before,
    set_speed,
    wait_copying,
)
from tests.helpers.libvirtd_pair import LibvirtdPair

pytestmark = pytest.mark.integration

SLOW_MIB_S = 2  # ~55 MiB at 2 MiB/s: ~27 s of copying, the kill lands well inside it
FAST_MIB_S = 8192  # "no cap": the rest is copied in about a second
JOB_END_TIMEOUT_S = 20.0
MIGRATED = f"shutoff/{libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED}"
# Host 2's incoming copy once libvirt dropped it: undefined, or shut off when host 2 kept a
# definition of the guest (it ran there before `agents_on` brought it home to n1).
GONE = ("absent", "shutoff")


def _migrating(run: Run, pair: LibvirtdPair) -> tuple[int, float]:
    """Start `migrate g n2` slowed to 2 MiB/s and return (the guest's generation before it,
    the command's wall-clock time) once the intent committed, the libvirt job copies memory
    and host 2 holds the paused incoming copy: the moment to kill n1's agent."""
    generation = int(run.status()["guests"][GUEST]["generation"])
    set_speed(pair.uri(1), SLOW_MIB_S)
    called = time.time()
    done = migrate_cli(run.cluster, "n2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert run.event("migrate_guest", guest=GUEST) is not None  # the intent committed
    wait_copying(pair.uri(1))  # the job runs: memory is moving
    assert run.watch.wait_for(1, "paused", 5)  # the incoming copy exists, paused
    return generation, called


def _not_leading(run: Run) -> None:
    """n1 started as a follower (`n1_follows`); it must still be one when its agent dies. Were
    it the leader, n2 could lose its lease during the election and destroy the paused copy
    (safe, but another path than the one under test)."""
    leader = run.status()["leader"]
    assert leader in ("n2", "n3"), f"n1 must not lead Raft at the kill (leader: {leader})"


def _end_job(pair: LibvirtdPair, outcome: str) -> None:
    """Make host 1's libvirt job end the way `outcome` names, with n1's agent gone."""
    if outcome == "fenced":
        return  # it copies on at 2 MiB/s until the fence powers host 1 off
    if outcome == "completes":
        set_speed(pair.uri(1), FAST_MIB_S)
        return
    conn = libvirt.open(pair.uri(1))
    try:
        conn.lookupByName(GUEST).abortJob()
    finally:
        conn.close()


@pytest.mark.parametrize("outcome", ["completes", "aborted", "fenced"])
def test_source_agent_killed_mid_migration(pair: LibvirtdPair, outcome: str) -> None:
    # *completes* needs the job to end before the fence: it takes 1.9-2.7 s after the kill at
    # load 8-11, the power-off comes >= 5 s after it with robust's 4 s failure timeout; 7 s
    # keeps that margin on a slower day. *aborted* needs the abort to land before the fence
    # too: balanced's 1.6 s did not leave it (CI, 2026-12-05), so both name their profile.
    timing: dict[str, float | str] | None = None
    if outcome == "completes":
        timing = {"profile": "robust", "failure_timeout_s": 7.0}
    elif outcome == "aborted":
        timing = {"profile": "robust"}
    with agents_on(pair, pair.base / "run", fence="ipmi", timing=timing, n1_follows=True) as run:
        generation, called = _migrating(run, pair)
        qemu = pair.host(1).qemu_pids()[GUEST]
        _not_leading(run)
        killed = time.time()
        run.cluster.signal_agent("n1", signal.SIGKILL)
        _end_job(pair, outcome)
        ended = None
        if outcome == "completes":
            ended = run.watch.wait_for(0, MIGRATED, JOB_END_TIMEOUT_S)
            assert ended.states[1].startswith("paused"), ended  # the copy waits, paused
        elif outcome == "aborted":
            # libvirt drops the incoming copy; the source's copy runs on (it was never paused:
            # the abort lands in the iterative copy), now with no agent to stop it.
            ended = run.watch.wait_for(1, GONE, JOB_END_TIMEOUT_S)
            assert ended.states[0].startswith("running"), ended
        if outcome != "completes":
            assert pid_alive(qemu), "host 1's QEMU died before any fence"

        def recovered() -> dict[str, Any] | None:
            g = run.status()["guests"][GUEST]
            ok = g["owner"] == "n2" and g["state"] == "running" and g["generation"] > generation
            return g if ok else None

        after = wait_for("the guest restarted on n2", recovered, SETTLE_TIMEOUT_S)
        _check(run, pair, after, killed, ended.at if ended else None)
        assert not pid_alive(qemu), f"host 1's QEMU {qemu} survived the fence"
        job_end_s = ended.at - monotonic_of(killed) if ended else None
        _report(run, outcome, called, killed, job_end_s, generation, after)


def _check(
    run: Run, pair: LibvirtdPair, after: dict[str, Any], killed: float, ended_mono: float | None
) -> None:
    """Fence before recover, on the samples and the committed events."""
    declared = run.event("declare_failed", node="n1")
    fenced = run.event("fence_result", node="n1", ok=True)
    assert declared is not None and fenced is not None, run.events()
    assert fenced["command"]["method"] == "agent", fenced  # fence_ipmilan did it
    assert run.event("migration_done", guest=GUEST) is None
    assert run.event("migration_resumed", guest=GUEST) is None
    fenced_mono = monotonic_of(fenced["at"])
    assert ended_mono is None or ended_mono < fenced_mono, "the job ended after the fence"
    # In the committed order too: no start of the guest on n2 before n1's fence.
    starts = [e for e in run.events() if e["type"] == "guest_starting" and _on_n2(e)]
    assert starts and all(e["index"] > fenced["index"] for e in starts), (starts, fenced)
    early = running_on_h2_before(run.watch, fenced_mono, run.t0)
    assert early == [], f"host 2 ran the guest before n1 was fenced: {early[:3]}"
    # Host 1 was really powered off (its BMC's hook ran), before the fence committed, and
    # never ran the guest after that.
    power_off = pair.power_log(1).read_text().split()
    assert float(power_off[0]) <= fenced["at"], (power_off, fenced)
    assert run.cluster.bmcs["n1"].power() == 0
    late = [s for s in run.watch.samples if s.at > fenced_mono and s.states[0] != "down"]
    assert late == [], f"host 1 still answered after its fence: {late[:3]}"
    settled = run.watch.wait_for(1, "running", 5)
    assert settled.states[0] == "down", settled
    assert after["owner"] == "n2", after
    started = run.event("fence_started", node="n1")
    assert started is not None and killed < started["at"] < fenced["at"], (started, fenced)


def _on_n2(e: dict[str, Any]) -> bool:
    return bool(e["command"]["guest"] == GUEST and e["command"]["node"] == "n2")


def _report(
    run: Run,
    outcome: str,
    called: float,
    killed: float,
    job_end_s: float | None,
    generation: int,
    after: dict[str, Any],
) -> None:
    started = run.event("fence_started", node="n1")
    fenced = run.event("fence_result", node="n1", ok=True)
    assert started is not None and fenced is not None
    killed_mono = monotonic_of(killed)
    running = next(
        s for s in run.watch.samples if s.at > killed_mono and s.states[1].startswith("running")
    )
    job = "cut by the fence" if job_end_s is None else f"{outcome} {job_end_s:.2f} s after the kill"
    run.show(f"n1's agent SIGKILLed mid-migration, job {outcome}")
    print(
        f"kill {killed - called:.2f} s after the command; job {job}; n1 declared failed and "
        f"fence started {started['at'] - killed:.2f} s, fence committed "
        f"{fenced['at'] - killed:.2f} s, guest running on h2 {running.at - killed_mono:.2f} s "
        f"after the kill; owner n2 at generation {after['generation']} (was {generation}); "
        f"migration record {after['migration']}"
    )


def test_source_agent_restarted_mid_migration(pair: LibvirtdPair) -> None:
    """n1's agent is SIGKILLed mid-migration and started again at once (as systemd would:
    `Restart=on-failure`, `RestartSec=1`); host 1's libvirtd and the guest live on. The new
    process knows nothing of the job: libvirt refuses its own migrate call (one job per
    domain), it commits the abort (the generation moves to g+1, n1 keeps the guest), n2
    destroys its paused copy, which fails the first job: the guest runs on at host 1, never
    stopped and never fenced; no hand-over, no resume, host 2 never runs it."""
    with agents_on(pair, pair.base / "run", fence="ipmi", n1_follows=True) as run:
        generation, called = _migrating(run, pair)
        qemu = pair.host(1).qemu_pids()[GUEST]
        _not_leading(run)
        killed = time.time()
        run.cluster.signal_agent("n1", signal.SIGKILL)
        wait_for("n1's agent gone", lambda: run.cluster.agent_pid("n1") is None or None, 5)
        run.cluster.start_agent("n1")
        restarted = time.time()
        aborted = wait_for(
            "the restarted n1 to abort",
            lambda: run.event("migration_aborted", guest=GUEST),
            SETTLE_TIMEOUT_S,
        )
        assert aborted["command"]["node"] == "n1", aborted

        def settled() -> dict[str, Any] | None:
            g = run.status()["guests"][GUEST]
            m = g["migration"]
            done = m is not None and not m["in_flight"]
            ok = (g["owner"], g["state"], g["generation"]) == ("n1", "running", generation + 1)
            return g if ok and done else None

        after = wait_for("the guest kept on n1", settled, SETTLE_TIMEOUT_S)
        assert after["migration"]["phase"] == "aborted", after["migration"]
        killed_mono = monotonic_of(killed)
        gone = next(
            (s for s in run.watch.samples if s.at > killed_mono and s.states[1].startswith(GONE)),
            None,
        ) or run.watch.wait_for(1, GONE, JOB_END_TIMEOUT_S)
        wait_for("the first job to fail", lambda: _no_job(pair.uri(1)), JOB_END_TIMEOUT_S)
        assert run.event("migration_done", guest=GUEST) is None
        assert run.event("migration_resumed", guest=GUEST) is None
        assert run.event("fence_started", node="n1") is None, "n1 was fenced"
        assert pid_alive(qemu), "host 1's QEMU did not survive"  # never stopped, never fenced
        h2 = running_on_h2_before(run.watch, time.monotonic(), run.t0)
        assert h2 == [], f"host 2 ran the guest: {h2[:3]}"
        h1 = {s.states[0].split("/")[0] for s in run.watch.samples if s.at > killed_mono}
        assert h1 <= {"running", "paused"}, h1
        run.show("n1's agent SIGKILLed mid-migration and restarted")
        print(
            f"kill {killed - called:.2f} s after the command; agent restarted "
            f"{restarted - killed:.2f} s after the kill; abort committed "
            f"{aborted['at'] - killed:.2f} s after the kill; paused copy on h2 gone "
            f"{gone.at - killed_mono:.2f} s after the kill; n1 owns the guest at generation "
            f"{after['generation']} (was {generation}); migration record {after['migration']}"
        )


def _no_job(uri: str) -> bool | None:
    """True once the guest on `uri` has no libvirt job (for wait_for)."""
    conn = libvirt.open(uri)
    try:
        return conn.lookupByName(GUEST).jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE or None
    finally:
        conn.close()
