"""DRBD replicas in the status document, `haagent status` and the `haagent_replica_*` gauges
(computed at scrape from the latest snapshot; one group of series per local replica)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from haagent.agent import LocalView
from haagent.commands import GuestRunning
from haagent.daemon.telemetry import ClusterCollector, Snapshot
from haagent.ports import ConsensusView, DiskState, ReplicaObservation, ReplicaRole
from haagent.status import build_status, format_status
from tests.unit.test_replicas import build, starting_on

STATE = build(GuestRunning("db", "n1", 2, 0.0), state=starting_on("n1"))
FROZEN = ReplicaObservation(
    "r0",
    ReplicaRole.PRIMARY,
    DiskState.UP_TO_DATE,
    False,
    suspended=True,
    fence_frozen=True,
    fence_pending=True,
)


def status(replicas: dict[str, ReplicaObservation], unknown: frozenset[str]) -> dict[str, object]:
    return build_status(
        node="n1",
        cluster="c",
        pid=1,
        incarnation="i",
        view=ConsensusView(state=STATE, leader="n1"),
        now=1.0,
        lease_until=2.0,
        loop_age_s=0.0,
        local={},
        replicas=replicas,
        replicas_unknown=unknown,
    )


def test_status_shows_each_local_replica_and_alerts() -> None:
    doc = status({"r0": FROZEN}, frozenset({"r9"}))
    assert doc["drbd"] == {
        "r0": {
            "guest": "db",
            "current": True,
            "role": "primary",
            "disk": "uptodate",
            "connected": False,
            "peer_role": None,
            "peer_disk": None,
            "suspended": True,
            "fence_frozen": True,
            "fence_pending": True,
            "split_brain": False,
        },
        "r9": {"guest": None, "current": False},
    }
    text = format_status(doc)  # type: ignore[arg-type]
    assert "DRBD r9: state not known now" in text
    (row,) = [line for line in text.splitlines() if line.startswith("r0 ")]
    assert row.split()[:5] == ["r0", "db", "primary", "uptodate", "disconnected"]
    assert "frozen (fence-peer running)" in row
    split = ReplicaObservation("r0", ReplicaRole.SECONDARY, DiskState.UP_TO_DATE, False,
                               split_brain=True)  # fmt: skip
    assert "DRBD SPLIT BRAIN on r0: an admin must resolve it" in format_status(
        status({"r0": split}, frozenset())  # type: ignore[arg-type]
    )
    assert status({}, frozenset())["drbd"] == {}


def scrape(local: LocalView) -> CollectorRegistry:
    snap = Snapshot(ConsensusView(state=STATE), 1.0, 2.0, local, frozenset())
    registry = CollectorRegistry()
    registry.register(ClusterCollector(snap, None, 0.0, 1.0))
    return registry


def test_replica_gauges_at_scrape() -> None:
    r = scrape(LocalView({}, 1.0, {"r0": FROZEN}, frozenset({"r9"})))
    ids = {"guest": "db", "resource": "r0"}
    assert r.get_sample_value("haagent_replica_current", ids) == 1
    assert r.get_sample_value("haagent_replica_role", {**ids, "role": "primary"}) == 1
    assert r.get_sample_value("haagent_replica_role", {**ids, "role": "secondary"}) is None
    assert r.get_sample_value("haagent_replica_disk_state", {**ids, "state": "uptodate"}) == 1
    assert r.get_sample_value("haagent_replica_disk_state", {**ids, "state": "outdated"}) is None
    assert r.get_sample_value("haagent_replica_connected", ids) == 0
    assert r.get_sample_value("haagent_replica_suspended", ids) == 1
    assert r.get_sample_value("haagent_replica_split_brain", ids) == 0
    # Not current: only that, no stale role or disk.
    r9 = {"guest": "", "resource": "r9"}
    assert r.get_sample_value("haagent_replica_current", r9) == 0
    assert r.get_sample_value("haagent_replica_role", {**r9, "role": "primary"}) is None
    # Bounded: 6 series per local replica (the current role and disk state only), none
    # without DRBD.
    names = [s.name for m in r.collect() for s in m.samples if "resource" in s.labels]
    assert len(names) == 6 + 1
    plain = scrape(LocalView({}, 1.0))
    assert not [m for m in plain.collect() if m.name == "haagent_replica_current"]
