"""The status document served at GET /v1/status and printed by `haagent status`.

Built from the consensus view (committed state, possibly stale), this node's own monotonic
measurements and a fresh observation of the local hypervisor. Pure: the caller passes `now`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from haagent.codec import to_json
from haagent.core.divergence import judge
from haagent.core.networks import network_loss
from haagent.core.raid1 import why_waiting
from haagent.model import ClusterState, GuestRecord, Migration, NodeState, StorageKind
from haagent.ports import (
    MEMBER_RESYNCING,
    ConsensusView,
    DomainObservation,
    MirrorObservation,
    ReplicaObservation,
)

STATUS_VERSION = 1

REPLICA_LAG_ENTRIES = 20
"""A replica further behind the leader's commit than this is called lagging (in a healthy
cluster it applies within one round trip: a few entries at most)."""


def drbd_document(
    state: ClusterState,
    replicas: Mapping[str, ReplicaObservation],
    unknown: frozenset[str] | set[str],
) -> dict[str, Any]:
    """This node's DRBD replicas by resource: what events2 says now, or `current: false`
    while the watcher has no fresh state (events2 dead or restarting). `split_brain` is an
    alert state: never resolved automatically."""
    guest_of = {
        g.spec.resource: g.name for g in state.guests.values() if g.spec.storage is StorageKind.DRBD
    }
    doc: dict[str, Any] = {}
    for resource in sorted(set(replicas) | set(unknown)):
        rep = replicas.get(resource)
        entry: dict[str, Any] = {"guest": guest_of.get(resource), "current": rep is not None}
        if rep is not None:
            entry.update(
                role=rep.role.value,
                disk=rep.disk.value,
                connected=rep.connected,
                peer_role=None if rep.peer_role is None else rep.peer_role.value,
                peer_disk=None if rep.peer_disk is None else rep.peer_disk.value,
                suspended=rep.suspended,
                fence_frozen=rep.fence_frozen,
                fence_pending=rep.fence_pending,
                split_brain=rep.split_brain,
            )
        doc[resource] = entry
    return doc


def lease_loss_reason(view: ConsensusView) -> str:
    """Why a node holds no lease, as far as its own replica can tell (a metric label: few,
    stable values). The core decides the lease; this only names the likeliest cause.

    `incompatible`: it cannot apply a committed command; `storage_error`: its journal cannot
    be written (it acknowledges nothing); `no_leader`: it knows no Raft leader
    (cut off, or an election is running); `replica_lagging`: it is more than
    REPLICA_LAG_ENTRIES behind the leader's commit; `heartbeats_not_committing`: a leader is
    known and the replica is current, but its heartbeats did not commit in time (loss, load).
    """
    if view.incompatible is not None:
        return "incompatible"
    if view.storage_error is not None:
        return "storage_error"
    if view.leader is None:
        return "no_leader"
    if view.replica_lag > REPLICA_LAG_ENTRIES:
        return "replica_lagging"
    return "heartbeats_not_committing"


def divergence_report(
    view: ConsensusView, node: str, voters: int, config_digest: str | None
) -> dict[str, str]:
    """The nodes this replica knows to diverge from the cluster, with why (issue 8 item 6):
    itself when it is incompatible (its reason), up peers whose latest state checkpoint
    differs from the majority's at that index, and up peers that joined with a config digest
    other than this node's. O(nodes)."""
    verdicts = judge(view.state, node, voters, view.checkpoints)
    out = {
        name: f"state digest {cp.digest} at checkpoint {cp.index} differs from the cluster's"
        for name, cp in verdicts.peers.items()
    }
    for name, rec in view.state.nodes.items():
        if (
            name != node
            and rec.state is NodeState.UP
            and None not in (rec.config_digest, config_digest)
            and rec.config_digest != config_digest
        ):
            out.setdefault(name, f"config digest {rec.config_digest}, this node's {config_digest}")
    own = view.incompatible or verdicts.own
    if own is not None:
        out[node] = own
    return dict(sorted(out.items()))


def build_status(
    *,
    node: str,
    cluster: str,
    pid: int,
    incarnation: str,
    view: ConsensusView,
    now: float,
    lease_until: float,
    loop_age_s: float,
    local: Mapping[str, DomainObservation] | None,
    local_error: str | None = None,
    loop: Mapping[str, Any] | None = None,
    tolerated: Mapping[str, Any] | None = None,
    voters: int | None = None,
    config_digest: str | None = None,
    replicas: Mapping[str, ReplicaObservation] | None = None,
    replicas_unknown: frozenset[str] = frozenset(),
    mirrors: Mapping[str, MirrorObservation] | None = None,
) -> dict[str, Any]:
    """`loop`: the reconcile loop's pass and lag figures; `tolerated`: the latest
    tolerated-failures count with its age (computed off the loop). Both as the daemon gives
    them (None when unknown). `voters`: the configured nodes; `config_digest`: this node's
    (for the divergence report; the node count of the state when not given).
    `replicas`/`replicas_unknown`: this node's DRBD replicas as the observer has them (see
    `drbd_document`). `mirrors`: the arrays of the raid1 guests running here, by guest (each
    leg then shows how the guest's RAID1 sees it)."""
    state = view.state
    nodes: dict[str, Any] = {}
    for name, rec in sorted(state.nodes.items()):
        seen = view.heartbeats.get(name)
        nodes[name] = {
            "state": rec.state.value,
            "role": rec.role.value,
            "incarnation": rec.incarnation,
            "heartbeat_seq": rec.heartbeat_seq,
            "since_heartbeat_s": None if seen is None else round(max(0.0, now - seen.at), 3),
            "failure_epoch": rec.failure_epoch,
            "maintenance": rec.maintenance,
            "failure": to_json(rec.evidence) if rec.evidence else None,
            "fence": to_json(rec.fence),
            "watchdog_timeout_s": rec.watchdog_timeout_s,
            "config_digest": rec.config_digest,
            "checkpoint": to_json(rec.checkpoint) if rec.checkpoint else None,
            "missing_networks": list(rec.missing_networks),
            "frozen": rec.frozen,
            "watchdog_released": rec.watchdog_released,
            "reason": rec.reason,
            "changed_at": rec.changed_at,
        }
    lacking_nodes = [r for _, r in sorted(state.nodes.items()) if r.missing_networks]
    guests: dict[str, Any] = {}
    for name, g in sorted(state.guests.items()):
        # Which nodes cannot take it for its networks ("hv3 lacks br-backend"): only nodes
        # that reported something missing are looked at, so this stays cheap.
        lacks = [
            f"{r.name} lacks {', '.join(r.lacks(g.spec))}" for r in lacking_nodes if r.lacks(g.spec)
        ]
        guests[name] = {
            "domain": g.spec.domain,
            "owner": g.owner,
            "generation": g.generation,
            "desired": g.desired.value,
            "state": g.state.value,
            "failures": g.failures,
            "failed_nodes": list(g.failed_nodes),
            "last_transition": {"at": g.changed_at, "reason": g.reason},
            "memory_mib": g.spec.memory_mib,
            "priority": g.spec.priority,
            "networks": list(g.spec.networks),
            "network_refusals": lacks,
            "network_loss": network_loss(state, g) if lacking_nodes else None,
            "migration": migration_document(g.migration),
            "move_to": g.move_to,
        }
        if g.spec.legs:
            guests[name]["legs"] = _legs_document(g, (mirrors or {}).get(name))
            # Why it cannot start from its legs anywhere now (None: it can, or no node is up).
            guests[name]["legs_wait"] = why_waiting(state, g)
    local_doc: dict[str, Any] | None = None
    if local is not None:
        protected = {g.spec.domain for g in state.guests.values()}
        local_doc = {
            d.name: {
                "running": d.running,
                "paused": d.paused,
                "owner": d.owner,
                "generation": d.generation,
            }
            for d in sorted(local.values(), key=lambda d: d.name)
            if d.name in protected and d.running
        }
    lease_valid = now < lease_until
    return {
        "version": STATUS_VERSION,
        "cluster": cluster,
        "node": node,
        "pid": pid,
        "incarnation": incarnation,
        "leader": view.leader,
        "term": view.term,
        "quorum": lease_valid,
        "lease_lost_reason": None if lease_valid else lease_loss_reason(view),
        "raft_has_quorum_hint": view.has_quorum,
        "lease_remaining_s": round(max(0.0, lease_until - now), 3),
        "loop_age_s": round(loop_age_s, 3),
        "incompatible": view.incompatible,
        "commit_index": view.commit_index,
        "storage_error": view.storage_error,
        "config_digest": config_digest,
        "checkpoint": to_json(view.checkpoint) if view.checkpoint else None,
        "diverged": divergence_report(
            view, node, voters if voters is not None else len(state.nodes), config_digest
        ),
        "replica": {
            "applied": view.last_applied,
            "leader_commit": view.leader_commit_index,
            "lag": view.replica_lag,
        },
        "elections": {
            "pre_votes": view.pre_votes,
            "elections": view.elections,
            "pre_votes_refused": view.pre_votes_refused,
        },
        "nodes": nodes,
        "guests": guests,
        "local": local_doc,
        "local_error": local_error,
        "loop": None if loop is None else dict(loop),
        "tolerated_node_failures": None if tolerated is None else dict(tolerated),
        "drbd": drbd_document(state, replicas or {}, replicas_unknown),
        "arming": to_json(state.arming),
        "audit": [to_json(e) for e in state.audit],
    }


def migration_document(m: Migration | None) -> dict[str, Any] | None:
    """The guest's latest live migration: in flight (pending: the source migrates;
    handed_over: the destination resumes it) or its outcome (done, aborted with the reason).
    Times are the proposers' wall clocks (display only)."""
    if m is None:
        return None
    return {
        "source": m.source,
        "dest": m.dest,
        "generation": m.generation,
        "phase": m.phase.value,
        "in_flight": m.in_flight,
        "by": m.by,
        "reason": m.reason,
        "started_at": m.started_at,
        "changed_at": m.changed_at,
    }


def _migration_lines(guests: Mapping[str, Any]) -> list[str]:
    """One line per migration in flight, and the outcome of each guest's latest one."""
    lines = []
    for name, g in guests.items():
        m = g.get("migration")
        if not m:
            continue
        how = f"{m['source']} -> {m['dest']} (generation {m['generation']})"
        if m["in_flight"]:
            lines.append(f"MIGRATING {name}: {how}, {m['phase']}")
        elif m["phase"] == "aborted":
            lines.append(f"migration of {name} {how}: aborted: {m['reason']}")
        else:
            lines.append(f"migration of {name} {how}: {m['phase']}")
    return lines


def _legs_document(g: GuestRecord, seen: MirrorObservation | None = None) -> dict[str, Any]:
    """A raid1 guest's legs as committed (fresh, or stale since a generation and why), and,
    where it runs here and its array could be read, how its RAID1 sees each leg (`member`:
    in_sync, resyncing, faulty, missing; None: not known here) and the resync's progress."""
    doc: dict[str, Any] = {}
    for leg in g.spec.legs:
        stale = next((s for s in g.stale_legs if s.leg == leg.id), None)
        member = seen.members.get(leg.id) if seen is not None else None
        doc[leg.id] = {
            "holder": leg.holder,
            "fresh": stale is None,
            "stale_since_generation": None if stale is None else stale.generation,
            "stale_reason": None if stale is None else stale.reason,
            "member": member,
            "resync_progress": seen.resync_progress
            if seen is not None and member == MEMBER_RESYNCING
            else None,
        }
    return doc


def _legs_lines(guests: Mapping[str, Any]) -> list[str]:
    rows = [["GUEST", "LEG", "HOLDER", "IN ITS RAID1", "DATA"]]
    for name, g in guests.items():
        for leg_id, leg in (g.get("legs") or {}).items():
            data = "fresh"
            if not leg["fresh"]:
                data = f"STALE since gen {leg['stale_since_generation']}: {leg['stale_reason']}"
            member = leg.get("member") or "-"
            if leg.get("resync_progress") is not None:
                member += f" {leg['resync_progress']:.0%}"
            rows.append([name, leg_id, leg["holder"], member, data])
    waits = [f"WAITS: {g['legs_wait']}" for g in guests.values() if g.get("legs_wait")]
    return [_table(rows), *waits] if len(rows) > 1 else []


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _drbd_lines(drbd: Mapping[str, Any]) -> list[str]:
    rows = [["REPLICA", "GUEST", "ROLE", "DISK", "CONNECTION", "PEER", "I/O"]]
    alerts = []
    for resource, r in drbd.items():
        if not r["current"]:
            rows.append([resource, r["guest"] or "-", "?", "?", "?", "?", "?"])
            alerts.append(f"DRBD {resource}: state not known now (events2 not running)")
            continue
        peer = f"{r['peer_role'] or '?'}/{r['peer_disk'] or '?'}" if r["connected"] else "-"
        io = "ok"
        if r["suspended"]:
            io = "frozen (fence-peer running)" if r["fence_pending"] else "frozen"
        rows.append(
            [
                resource,
                r["guest"] or "-",
                r["role"],
                r["disk"],
                "connected" if r["connected"] else "disconnected",
                peer,
                io,
            ]
        )
        if r["split_brain"]:
            alerts.append(f"DRBD SPLIT BRAIN on {resource}: an admin must resolve it")
    return [*alerts, _table(rows)]


def _clock(at: float) -> str:
    """A wall-clock timestamp from a command, in UTC (display only). Pure arithmetic (the
    civil-from-days algorithm of H. Hinnant): this module reads no clock and no time zone."""
    days, secs = divmod(int(at), 86400)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    h, rest = divmod(secs, 3600)
    return f"{year:04d}-{month:02d}-{day:02d} {h:02d}:{rest // 60:02d}:{rest % 60:02d} UTC"


def format_status(doc: dict[str, Any]) -> str:
    """The status document as tables, for humans."""
    lines = [
        f"cluster {doc['cluster']}  node {doc['node']} (pid {doc['pid']})  "
        f"leader {doc['leader'] or '-'}  term {doc['term']}  "
        f"quorum {'yes' if doc['quorum'] else 'NO'}  lease {doc['lease_remaining_s']:.2f}s",
    ]
    if not doc["quorum"] and doc.get("lease_lost_reason"):
        lines.append(f"NO LEASE: {doc['lease_lost_reason']}")
    replica = doc.get("replica")
    if replica and replica["lag"] > REPLICA_LAG_ENTRIES:
        lines.append(
            f"REPLICA LAGGING: applied {replica['applied']} of {replica['leader_commit']} committed"
        )
    if doc.get("incompatible"):
        lines.append(f"INCOMPATIBLE: {doc['incompatible']}")
    if doc.get("storage_error"):
        lines.append(f"RAFT STORAGE: {doc['storage_error']}")
    for name, why in (doc.get("diverged") or {}).items():
        lines.append(f"DIVERGED: {name}: {why}")
    arming = doc.get("arming") or {}
    if arming.get("disarmed"):
        until = arming.get("until_at")
        lines.append(
            f"DISARMED for {arming['for_s']:g}s by {arming['by']}"
            + (f" until about {_clock(until)}" if until is not None else "")
            + (f": {arming['reason']}" if arming.get("reason") else "")
            + " (no fencing, no recovery)"
        )
    rows = [["NODE", "STATE", "ROLE", "LAST HEARTBEAT", "FENCE", "REASON"]]
    for name, n in doc["nodes"].items():
        since = n["since_heartbeat_s"]
        fence = n["fence"]
        fence_s = "-"
        if fence["attempts"] or fence["last_result"]:
            fence_s = f"{fence['last_result'] or 'running'} ({fence['attempts']} tries)"
        if fence["last_result"] == "ok" and fence.get("method"):
            # The audit: how the power-off was established (agent, watchdog, manual by whom).
            fence_s = f"ok by {fence['method']}" + (
                f" ({fence['attempts']} tries)" if fence["attempts"] else ""
            )
        rows.append(
            [
                name,
                n["state"]
                + (" (maintenance)" if n.get("maintenance") else "")
                + (" (FROZEN)" if n.get("frozen") else "")
                + (
                    f" (lacks {', '.join(n['missing_networks'])})"
                    if n.get("missing_networks")
                    else ""
                ),
                n["role"],
                "-" if since is None else f"{since:.2f}s ago",
                fence_s,
                n["reason"],
            ]
        )
    lines += ["", _table(rows)]
    rows = [["GUEST", "OWNER", "GEN", "DESIRED", "STATE", "LAST TRANSITION"]]
    for name, g in doc["guests"].items():
        rows.append(
            [
                name,
                g["owner"] or "-",
                str(g["generation"]),
                g["desired"],
                g["state"] + (f" (moving to {g['move_to']})" if g.get("move_to") else ""),
                g["last_transition"]["reason"],
            ]
        )
    lines += ["", _table(rows)]
    lost = [
        f"NETWORK {n}: {g['network_loss']}"
        for n, g in doc["guests"].items()
        if g.get("network_loss")
    ]
    if lost:
        lines += ["", *lost]
    migrations = _migration_lines(doc["guests"])
    if migrations:
        lines += ["", *migrations]

    legs = _legs_lines(doc["guests"])
    if legs:
        lines += ["", *legs]
    drbd = doc.get("drbd") or {}
    if drbd:
        lines += ["", *_drbd_lines(drbd)]
    audit = doc.get("audit") or []
    if audit:
        lines += ["", "RECENT ADMIN ACTIONS (newest last)"]
        for e in audit[-5:]:
            why = f": {e['reason']}" if e.get("reason") else ""
            lines.append(f"  {_clock(e['at'])}  {e['action']} by {e['by']}{why}")
    local = doc.get("local")
    if local is None:
        lines += ["", f"local hypervisor: cannot observe ({doc.get('local_error')})"]
    else:
        running = ", ".join(f"{k} (gen {v['generation']})" for k, v in local.items()) or "none"
        lines += ["", f"running here: {running}"]
    return "\n".join(lines)
