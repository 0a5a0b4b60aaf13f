"""The seams between the core's parts: typed keys, in-flight bookkeeping, the instance tracker,
storage gates, and the one home of the timing defaults."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from haagent.agent import AgentSettings, LocalView, StartGuest
from haagent.commands import GuestRunning
from haagent.config import load_config
from haagent.core.decisions import Proposal
from haagent.core.guests import storage_gates
from haagent.core.inflight import InFlight, Outbox
from haagent.core.instances import InstanceTracker
from haagent.core.keys import ActionKey, ActionKind, ProposalKey, ProposalKind
from haagent.core.storage import SharedStorage
from haagent.model import GuestRecord, GuestSpec, StorageKind
from haagent.ports import Outcome, OutcomeKind
from haagent.timing import DEFAULT_LIMITS, DEFAULT_TIMING, PlacementLimits, Timing
from tests.helpers.core_views import NODES, core, joined, local, view
from tests.unit.test_config import VALID, write

# --- typed keys --------------------------------------------------------------------------------


def test_keys_keep_the_spelling_logs_and_traces_show() -> None:
    """Traces and logs print keys (`proposal_refused key=...`): the typed keys read as the
    string keys did, so no trace changed when they were introduced."""
    assert str(ProposalKey(ProposalKind.HEARTBEAT, "7")) == "hb:7"
    assert str(ProposalKey(ProposalKind.FENCE_RESULT, "n2")) == "fence_result:n2"
    assert str(ProposalKey(ProposalKind.ASSIGN)) == "assign"
    assert str(ActionKey(ActionKind.DESTROY, "dom-g")) == "destroy:dom-g"
    assert StartGuest("g", "dom-g", 3).key == ActionKey(ActionKind.START, "g")


def test_a_key_in_flight_is_not_decided_again_until_its_outcome_is_back() -> None:
    """Rule 7: a proposal or action whose key is in flight is not queued again; an unknown
    outcome frees the key (look again next pass) and proves nothing (no lease)."""
    in_flight = InFlight()
    key = ProposalKey(ProposalKind.GUEST_RUNNING, "g")
    proposal = Proposal(key, GuestRunning("g", "n1", 3, 0.0), 1.0)
    assert Outbox(1.0, 0.0, in_flight).propose(proposal)
    assert not Outbox(2.0, 0.0, in_flight).propose(proposal)
    assert in_flight.proposals[key] == 1.0  # sent at the first pass: what a lease counts from
    start = StartGuest("g", "dom-g", 3)
    out = Outbox(2.0, 0.0, in_flight)
    assert out.act(start) and not out.act(start)
    assert out.actions == [start]

    c = core()
    step = c.tick(10.0, view(joined("n1", "n2", "n3")), local(10.0))
    (hb,) = step.proposals
    assert hb.key.kind is ProposalKind.HEARTBEAT and hb.key in c.in_flight()
    c.proposal_done(hb.key, Outcome(OutcomeKind.UNKNOWN, "timeout"), 10.5)
    assert hb.key not in c.in_flight() and not c.lease_valid(10.5)


# --- instance tracker --------------------------------------------------------------------------


def test_facts_about_one_generation_never_answer_for_another() -> None:
    t = InstanceTracker()
    t.start_failed("dom-g", 3, "qemu says no")
    t.start_returned("dom-g", 4, 10.0)
    assert t.failed_start("dom-g", 3) == "qemu says no"
    assert t.failed_start("dom-g", 4) is None
    assert t.start_returned_at("dom-g", 4) == 10.0
    assert t.start_returned_at("dom-g", 5) is None
    t.saw_running("dom-g", 4, 11.0)
    t.saw_running("dom-g", 4, 12.0)  # the same instance: the first sighting counts
    assert t.absence("dom-g", 4, 20.0, 600.0).crashed
    assert not t.absence("dom-g", 5, 20.0, 600.0).crashed  # never saw generation 5 run
    late = t.absence("dom-g", 4, 611.0, 600.0)
    assert late.crashed and late.fresh_count and "after running 600 s" in late.why
    t.stopped_here("dom-g", 4)
    assert t.absence("dom-g", 4, 20.0, 600.0).why == "stopped by this node"


def test_a_storage_wait_is_reported_once_per_reason() -> None:
    t = InstanceTracker()
    assert t.wait_changed("d", "peer is Primary")
    assert not t.wait_changed("d", "peer is Primary")
    assert t.wait_changed("d", "split brain")
    t.stop_waiting("d")
    assert t.wait_changed("d", "split brain")


# --- storage gates -----------------------------------------------------------------------------


def test_every_storage_kind_has_a_gate_and_shared_storage_never_blocks() -> None:
    gates = storage_gates(AgentSettings(cluster="c", node="n1", nodes=NODES))
    assert set(gates) == set(StorageKind)
    shared = gates[StorageKind.SHARED]
    assert isinstance(shared, SharedStorage)
    guest = GuestRecord(GuestSpec("g", "dom-g", 256))
    nothing = LocalView({}, 0.0)
    out = Outbox(0.0, 0.0, InFlight())
    assert shared.may_start(joined("n1"), guest, nothing) is None
    assert shared.before_start(out, joined("n1"), guest, nothing)
    assert not out.actions and not out.proposals


# --- timing defaults ---------------------------------------------------------------------------


def test_the_core_and_the_config_take_their_defaults_from_haagent_timing() -> None:
    """A timing profile is a change in haagent/timing.py only."""
    settings = AgentSettings(cluster="c", node="n1", nodes=NODES)
    names = {f.name for f in fields(AgentSettings)}
    for table, defaults in ((Timing, DEFAULT_TIMING), (PlacementLimits, DEFAULT_LIMITS)):
        for f in fields(table):
            if f.name in names:
                assert getattr(settings, f.name) == getattr(defaults, f.name), f.name


def test_a_config_without_timing_or_placement_tables_gets_the_same_defaults(
    tmp_path: Path,
) -> None:
    config = load_config(write(tmp_path, VALID))
    assert config.timing == DEFAULT_TIMING
    assert config.agent_settings() == AgentSettings(
        cluster=config.cluster,
        node=config.node,
        nodes=config.agent_settings().nodes,
        guests=config.agent_settings().guests,
    )
