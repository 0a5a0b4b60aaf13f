"""The agent metrics added for alerting (issue 12): the config digest agents compare, and
the event metrics for proposals, fences and failed observations."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry

from haagent.commands import Heartbeat, Leave
from haagent.config import load_config
from haagent.core.settings import AgentSettings, NodeSettings
from haagent.daemon.agent_metrics import AgentEventMetrics, settings_digest
from haagent.daemon.observer import Observer
from haagent.daemon.offload import Offload
from haagent.daemon.raft_metrics import LEASE_LOSS_REASONS
from haagent.daemon.telemetry import Telemetry
from haagent.model import ClusterState, FenceMethod, NodeRole
from haagent.ports import ConsensusView, HypervisorError, Outcome, OutcomeKind
from haagent.status import REPLICA_LAG_ENTRIES, lease_loss_reason

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "local-3node"


def value(r: CollectorRegistry, name: str, **labels: str) -> float:
    got = r.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_every_node_of_one_cluster_config_has_the_same_digest_and_a_change_shows() -> None:
    settings = [load_config(EXAMPLE / f"n{i}.toml").agent_settings() for i in (1, 2, 3)]
    digests = {settings_digest(s) for s in settings}
    assert len(digests) == 1, "only [local] differs between the nodes' configs"
    changed = replace(settings[0], lease_s=settings[0].lease_s + 1)
    assert settings_digest(changed) not in digests
    reordered = replace(settings[0], guests=tuple(reversed(settings[0].guests)))
    assert settings_digest(reordered) in digests  # order in the file does not matter


def test_proposals_fences_and_build_info_are_counted() -> None:
    r = CollectorRegistry()
    m = AgentEventMetrics(r)
    hb = Heartbeat("n1", "i", 5)
    m.proposal_done(hb, Outcome(OutcomeKind.ACCEPTED), 0.004)
    m.proposal_done(hb, Outcome(OutcomeKind.UNKNOWN, "timeout"), 2.0)
    m.proposal_done(Leave("n1", "i", 0.0), Outcome(OutcomeKind.REFUSED), 0.01)
    assert value(r, "haagent_proposals_total", command="heartbeat", outcome="accepted") == 1
    assert value(r, "haagent_proposals_total", command="heartbeat", outcome="unknown") == 1
    assert value(r, "haagent_proposals_total", command="leave", outcome="refused") == 1
    assert value(r, "haagent_proposal_duration_seconds_count", command="heartbeat") == 2
    assert (
        value(r, "haagent_proposal_duration_seconds_bucket", command="heartbeat", le="0.005") == 1
    )
    m.fence_done(True, 2.2)
    m.fence_done(False, 31.0)
    assert value(r, "haagent_fence_duration_seconds_count", result="ok") == 1
    assert value(r, "haagent_fence_duration_seconds_bucket", result="failed", le="30.0") == 0
    [build] = next(s for s in r.collect() if s.name == "haagent_build_info").samples
    assert build.value == 1 and build.labels["pysyncobj"].endswith("+haagent")


class FailingHypervisor:
    """A hypervisor whose listing fails (libvirtd gone), for the observer."""

    async def domains(self) -> Any:
        raise HypervisorError("libvirtd gone")


def test_each_failed_observation_is_counted() -> None:
    r = CollectorRegistry()
    m = AgentEventMetrics(r)

    async def scenario() -> None:
        woken = asyncio.Event()
        obs = Observer(
            cast(Any, FailingHypervisor()),
            woken.set,
            interval_s=10,
            on_error=m.observation_failed,
        )
        obs.start()
        await asyncio.wait_for(woken.wait(), 5)
        await obs.stop()
        assert obs.error == "libvirtd gone"

    asyncio.run(scenario())
    assert value(r, "haagent_observation_errors_total") == 1


def test_counters_that_alerts_take_increase_of_exist_at_zero_before_their_first_event() -> None:
    """`increase()` cannot see a counter's step from no series to 1: without a 0 series from
    the start, the first failed fence or the first self-fence would never alert."""
    nodes = {
        "n1": NodeSettings(NodeRole.HYPERVISOR, 1024, FenceMethod.AGENT),
        "n2": NodeSettings(NodeRole.HYPERVISOR, 1024, FenceMethod.WATCHDOG),
        "w": NodeSettings(NodeRole.WITNESS),
    }
    telemetry = Telemetry("n1", Offload())
    try:
        telemetry.set_config(AgentSettings("c", "n1", nodes))
        r = telemetry.registry
        for node in ("n1", "n2"):
            for result in ("ok", "failed"):
                labels = {"node": node, "result": result}
                assert r.get_sample_value("haagent_fence_operations_total", labels) == 0
        assert (
            r.get_sample_value("haagent_fence_operations_total", {"node": "w", "result": "ok"})
            is None
        )
        for reason in LEASE_LOSS_REASONS:
            assert r.get_sample_value("haagent_self_fences_total", {"reason": reason}) == 0
        assert r.get_sample_value("haagent_observation_errors_total") == 0
    finally:
        telemetry.close()


def test_every_lease_loss_reason_has_a_series() -> None:
    base = ConsensusView(ClusterState(), leader="n1")
    views = (
        replace(base, incompatible="v9"),
        replace(base, storage_error="disk full"),
        replace(base, leader=None),
        replace(base, leader_commit_index=REPLICA_LAG_ENTRIES + 1),
        base,
    )
    assert {lease_loss_reason(v) for v in views} == set(LEASE_LOSS_REASONS)
