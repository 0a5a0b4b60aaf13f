"""FakeMigrator: the simulated hypervisors' live migration (a fake, like every port here).

What it models of libvirt's peer-to-peer migration (the `Hypervisor.migrate` contract):

- the call is authorised like a start (haagent.core.authority: the source's lease and its
  committed generation, checked at the moment of the call) and holds a permit until it
  returns;
- the destination shows the incoming domain at once, PAUSED, with ownership metadata at the
  destination's generation; the copy takes `SimOptions.migrate_s` (or a scripted duration);
- on completion the source's domain shuts off and the destination's stays paused until the
  agent resumes it;
- faults: a scripted libvirt failure (`fail`), a slow copy that passes the agent's
  `migration_timeout_s` (the job is aborted: an error, the guest stays on the source), the
  destination powered off or cut off (an error on the source), the source powered off
  mid-way (no answer; the incoming copy stays PAUSED on the destination: the worst case,
  which the agents must clean up, where real libvirt would usually kill it).

Resume is authorised against the destination's lease and committed ownership too.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from haagent.agent import ActionResult, LiveMigrate, ResumeGuest
from haagent.ports import DomainObservation

if TYPE_CHECKING:
    from haagent.sim.world import World, _Node

MIGRATION_FAULTS = ("fail",)
"""Scripted outcomes of a migration besides a duration in seconds (`migrate_fault`)."""


class FakeMigrator:
    def __init__(self, world: World) -> None:
        self._w = world
        # (source, guest) -> scripted behaviours of the next migrations, in order: "fail" or
        # a duration in seconds.
        self.script: dict[tuple[str, str], list[str]] = {}
        # (source, domain) of the migration jobs running: like libvirt, one job per domain
        # (a restarted agent that migrates again is refused while its predecessor's runs).
        self._jobs: set[tuple[str, str]] = set()

    def act(self, node: _Node, gen: int, life: int, action: LiveMigrate | ResumeGuest) -> None:
        w = self._w
        assert node.agent is not None
        if w.refuse_call(node, gen, action, "migration_call_not_made"):
            return
        if isinstance(action, ResumeGuest):
            w.at(w.now + w.options.destroy_s, lambda: self._resume(node, gen, life, action))
            return
        self._migrate(node, gen, life, action, node.local(w.now))

    def _migrate(self, node: _Node, gen: int, life: int, action: LiveMigrate, now: float) -> None:
        w = self._w
        dest = w.nodes.get(action.dest)
        seen = node.domains.get(action.domain)
        script = self.script.get((node.name, action.guest), [])
        behaviour = script.pop(0) if script else str(w.options.migrate_s)
        failure = ""
        if seen is None or not seen.running:
            # Like libvirt, it does not read the metadata's generation: after an abort the
            # source's domain still carries the older one (the committed record moved on).
            failure = "domain is not running"
        elif (node.name, action.domain) in self._jobs:
            failure = "another migration job is active for domain"
        elif dest is None or not dest.powered or not w.linked_hosts(node.name, dest.name):
            failure = f"cannot connect to {action.dest_uri}"
        if failure:
            result = ActionResult(False, failure)
            w.at(
                w.now + w.options.destroy_s, lambda: w.deliver_result(node, gen, action.key, result)
            )
            return
        assert dest is not None
        assert node.agent is not None
        handle = node.calls.grant(action.key, action.generation, now, node.agent.lease.until)
        dest.domains[action.domain] = DomainObservation(
            action.domain,
            True,
            owner=dest.name,
            generation=action.dest_generation,
            cluster=w.cluster,
            paused=True,
        )
        dest_life = dest.boot_count
        # Like a start that completes: a destination without a lease must destroy it within
        # the stop grace from its appearance (invariant 4).
        dest.appeared_at[action.domain] = dest.local(w.now)
        w.physical_version += 1
        w.record(
            dest.name, "domain_incoming", domain=action.domain, generation=action.dest_generation
        )
        job = (node.name, action.domain)
        self._jobs.add(job)
        took_s = w.options.migrate_s if behaviour == "fail" else float(behaviour)
        timeout_s = action.timeout_s / node.rate
        ends_at = w.now + min(took_s, timeout_s)

        def finish() -> None:
            node.calls.release(handle)
            self._jobs.discard(job)
            if not node.powered or node.boot_count != life:
                return  # the source died mid-way: nobody hears back; the copy stays paused
            detail = ""
            if not dest.powered or dest.boot_count != dest_life:
                detail = f"connection to {action.dest} lost"
            elif not w.linked_hosts(node.name, dest.name):
                detail = f"connection to {action.dest} lost (network)"
            elif behaviour == "fail":
                detail = "simulated libvirt migration failure"
            elif took_s > timeout_s:
                detail = f"migration did not complete in {action.timeout_s:g}s (job aborted)"
            source = node.domains.get(action.domain)
            incoming = dest.domains.get(action.domain)
            if not detail and (source is None or not source.running):
                detail = "domain stopped during the migration"
            elif not detail and (
                incoming is None
                or not incoming.running
                or incoming.generation != action.dest_generation
            ):
                detail = "the destination's incoming domain went away"
            if detail:
                self._drop_incoming(node.name, dest, dest_life, action)
                w.record(node.name, "domain_migration_failed", domain=action.domain, why=detail)
                w.deliver_result(node, gen, action.key, ActionResult(False, detail))
                return
            assert source is not None
            node.domains[action.domain] = replace(source, running=False, paused=False)
            w.physical_version += 1
            w.record(node.name, "domain_migrated", domain=action.domain, dest=dest.name)
            w.deliver_result(node, gen, action.key, ActionResult(True))

        w.at(ends_at, finish)

    def _drop_incoming(self, source: str, dest: _Node, dest_life: int, action: LiveMigrate) -> None:
        """libvirt removes the incoming domain of a migration that failed (if the destination
        is still the host that received it and can be told, i.e. it is linked)."""
        obs = dest.domains.get(action.domain)
        if (
            self._w.linked_hosts(source, dest.name)
            and dest.powered
            and dest.boot_count == dest_life
            and obs is not None
            and obs.paused
            and obs.generation == action.dest_generation
        ):
            dest.domains[action.domain] = replace(obs, running=False, paused=False)
            self._w.physical_version += 1
            self._w.record(dest.name, "domain_incoming_removed", domain=action.domain)

    def _resume(self, node: _Node, gen: int, life: int, action: ResumeGuest) -> None:
        w = self._w
        if not node.powered or node.boot_count != life:
            return
        obs = node.domains.get(action.domain)
        if obs is None or not obs.running or obs.generation != action.generation:
            result = ActionResult(False, "domain is not there at that generation")
        else:
            if obs.paused:
                node.domains[action.domain] = replace(obs, paused=False)
                node.appeared_at[action.domain] = node.local(w.now)
                w.physical_version += 1
                w.record(
                    node.name, "domain_resumed", domain=action.domain, generation=obs.generation
                )
            result = ActionResult(True)
        w.deliver_result(node, gen, action.key, result)
