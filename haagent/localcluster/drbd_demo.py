"""`haagent local demo --drbd`: the DRBD failover of the crossover-cable deployment, simulated.

Real DRBD does not run on this demo's host (its kernel has no DRBD module); the project's real
DRBD tests boot emulated guests that take minutes (tests/integration/test_real_drbd.py). So
this demo runs the deterministic simulator instead, with the production agent core and its
FakeDrbd (haagent/sim/replicas.py): two hypervisors holding the guest's replicas and a witness,
the owner powered off, and the timeline of what the agents decide. It says so when it runs.
"""

from __future__ import annotations

from haagent.sim.scenario import parse_scenario, run_scenario
from haagent.sim.world import TraceEvent

SCENARIO = """\
# hv1 and hv2 hold the guest's DRBD replicas (the crossover cable); witness breaks ties.
nodes hv1 hv2 witness:witness
guest db drbd=hv1,hv2 prefer=hv1
at 5 power_off hv1
expect running db on hv2
expect before "fence_device target=hv1 ok=true" "drbd_promote at=hv2 ok=true"
"""

# What an admin wants to see of the run, and how to say it.
SHOWN = {
    "fault_power_off": "the host powers off",
    "declare_failed": "declared failed by the leader",
    "fence": "fencing started",
    "fence_done": "fence confirmed: the old owner is off",
    "assign": "guest assigned",
    "promote": "promote the local replica (UpToDate, and its peer cannot write)",
    "drbd_promote": "DRBD replica is Primary",
    "start": "start the domain",
    "domain_started": "domain running",
    "peer_outdated": "old owner's replica marked outdated through Raft",
}


def _line(e: TraceEvent) -> str | None:
    what = SHOWN.get(e.name)
    if what is None:
        return None
    data = dict(e.data)
    detail = " ".join(f"{k}={data[k]}" for k in ("node", "guest", "generation") if k in data)
    return f"  t={e.t:7.3f}s  {e.node or '':8} {what}{'  (' + detail + ')' if detail else ''}"


def run_drbd_demo() -> int:
    print(
        "DRBD failover, SIMULATED: this host has no DRBD kernel module, so the agents' real core\n"
        "runs in the deterministic simulator against its fake DRBD (haagent/sim/replicas.py).\n"
        "Real DRBD 8.4 runs in the CI's emulated guests (tests/integration/test_real_drbd.py).\n"
        "Cluster: hv1 and hv2 hold the replicas of guest db, witness votes; hv1 owns db.\n"
    )
    result = run_scenario(parse_scenario(SCENARIO, "drbd-demo"))
    for event in result.world.trace:
        if event.t >= 5.0 or event.name in ("promote", "drbd_promote", "domain_started"):
            line = _line(event)
            if line is not None:
                print(line)
    verdict = "ok" if result.ok else "FAILED"
    print(
        f"\n{verdict}: db runs on hv2, promoted only after hv1 was fenced; "
        f"{len(result.violations)} safety violations"
    )
    for problem in [*result.violations, *result.failed_expectations]:
        print(f"  {problem}")
    return 0 if result.ok else 1
