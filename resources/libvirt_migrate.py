"""Live migration over libvirt: the blocking halves of `LibvirtHypervisor.migrate`/`resume`.

`LibvirtHypervisor` (resources/libvirt_guests.py) owns the connection, the worker threads and
the error mapping; this module holds what is specific to a migration, so that it can be read
(and changed) on its own.

What a migration does here (peer-to-peer, `virDomainMigrateToURI3`):

* flags `LIVE | PEER2PEER | PERSIST_DEST | PAUSED`: the source libvirtd dials `dest_uri` itself
  and drives every phase, so the migration does not depend on this process staying connected
  to the destination; the destination ends *paused* and *persistent*; the source's definition
  is kept (no `UNDEFINE_SOURCE`) and its instance ends shut off with reason "migrated".
  PAUSED is what makes the hand-over safe: the destination's vCPUs never run until the cluster
  has committed the new owner and someone calls `resume` there.
* `VIR_MIGRATE_PARAM_DEST_XML` and `VIR_MIGRATE_PARAM_PERSIST_XML`: the source's live and
  persistent definitions with the owner record replaced by (cluster, dest_node, generation),
  so the incoming instance carries its new fencing token from its first moment, and a later
  cold start on the destination starts from a definition that says who owns it. Metadata is
  not part of the guest ABI, so libvirt accepts the changed XML.
* No `VIR_MIGRATE_UNSAFE`: libvirt's own storage check stays on. libvirt 9 accepts block
  devices (DRBD), network disks (NBD, RBD, iSCSI) and files on NFS/GFS2/OCFS2/CephFS; it
  refuses a disk file on a local filesystem ("Migration without shared storage is unsafe",
  code 81, even when another host reaches the same file), and that refusal is a
  HypervisorError like any other.

Timeout: the migration runs in a worker thread; when `timeout_s` passes, `abortJob()` is sent
on a second worker (libvirt accepts it on the same connection while the migration call blocks)
and the migration call is then given `abort_grace_s` to return. If it returns with an error the
guest is still on the source: `HypervisorError`. If it returns success (the abort came too late:
QEMU had already switched over) the migration *did* happen and is reported as done, because
the caller must learn the truth. If it does not return at all: `UnknownOutcomeError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import libvirt

from haagent.ports import Authorise, HypervisorError, UnknownOutcomeError

__all__ = [
    "MIGRATE_FLAGS",
    "MigrationPlan",
    "abort_migration",
    "perform_migration",
    "plan_migration",
    "resume_domain",
    "run_migration",
    "with_owner",
]

log = logging.getLogger(__name__)

MIGRATE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_PAUSED
)


def with_owner(domain_xml: str, owner_element: str, owner_ns: str, prefix: str) -> str:
    """`domain_xml` with its haagent owner record replaced by `owner_element` (as returned by
    `format_owner`: no namespace) in namespace `owner_ns`; any other metadata is kept.

    Raises HypervisorError for XML that is not a <domain>.
    """
    ET.register_namespace(prefix, owner_ns)
    try:
        root = ET.fromstring(domain_xml)
        record = ET.fromstring(owner_element)
    except ET.ParseError as exc:
        raise HypervisorError(f"invalid domain XML from libvirt: {exc}") from exc
    if root.tag != "domain":
        raise HypervisorError(f"expected a <domain> from libvirt, got <{root.tag}>")
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    for old in [child for child in metadata if child.tag.startswith(f"{{{owner_ns}}}")]:
        metadata.remove(old)
    record.tag = f"{{{owner_ns}}}{record.tag}"
    metadata.append(record)
    return ET.tostring(root, encoding="unicode")


@dataclass(frozen=True)
class MigrationPlan:
    """What `perform_migration` sends: the source domain and the migration parameters."""

    dom: libvirt.virDomain
    params: dict[str, Any]
    flags: int


def plan_migration(
    conn: libvirt.virConnect,
    domain: str,
    owner_element: str,
    owner_ns: str,
    prefix: str,
) -> MigrationPlan:
    """Blocking. Look the running `domain` up and build the destination's live and persistent
    XML carrying the new owner record. Raises HypervisorError if it is not running here."""
    try:
        dom = conn.lookupByName(domain)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise HypervisorError(f"migrate {domain}: not defined on the source") from exc
        raise
    if dom.isActive() != 1:
        raise HypervisorError(f"migrate {domain}: not running on the source")
    live = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE)
    params = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: with_owner(live, owner_element, owner_ns, prefix)}
    if dom.isPersistent() == 1:
        inactive = dom.XMLDesc(
            libvirt.VIR_DOMAIN_XML_MIGRATABLE
            | libvirt.VIR_DOMAIN_XML_SECURE
            | libvirt.VIR_DOMAIN_XML_INACTIVE
        )
        params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = with_owner(
            inactive, owner_element, owner_ns, prefix
        )
    return MigrationPlan(dom, params, MIGRATE_FLAGS)


def perform_migration(plan: MigrationPlan, dest_uri: str, authorise: Authorise | None) -> None:
    """Blocking: the migration call itself, inside `authorise` when given (entered right
    before the call, held until it returns; its RefusedError means nothing was tried)."""
    if authorise is None:
        plan.dom.migrateToURI3(dest_uri, plan.params, plan.flags)
        return
    with authorise():
        plan.dom.migrateToURI3(dest_uri, plan.params, plan.flags)


def abort_migration(plan: MigrationPlan) -> str:
    """Blocking, best effort: ask libvirt to abort the running migration job. Returns what
    happened, for the error message (libvirt refuses when no job runs any more)."""
    try:
        plan.dom.abortJob()
    except libvirt.libvirtError as exc:
        return f"abort refused: {exc.get_error_message()}"
    return "job aborted"


async def run_migration(
    what: str,
    perform: Awaitable[None],
    abort: Callable[[], Awaitable[str]],
    timeout_s: float,
    abort_grace_s: float,
) -> None:
    """Await `perform` (the migration call running in a worker thread, libvirt errors mapped to
    HypervisorError); after `timeout_s`, `abort()` it and give it `abort_grace_s` to end (see
    the module docstring for the outcomes). A cancelled caller aborts the job too: nobody would
    follow a migration that went on alone."""
    started = time.monotonic()
    migration = asyncio.ensure_future(perform)
    try:
        done, _ = await asyncio.wait({migration}, timeout=timeout_s)
    except asyncio.CancelledError:
        _keep(asyncio.ensure_future(abort()))
        migration.add_done_callback(_log_late_result)
        raise
    if done:
        migration.result()
        log.info("%s: done in %.2f s", what, time.monotonic() - started)
        return
    log.warning("%s: not done after %.1f s; aborting the job", what, timeout_s)
    try:
        aborted = await asyncio.wait_for(abort(), abort_grace_s)
    except TimeoutError:
        aborted = "abort unanswered"
    except HypervisorError as exc:
        aborted = f"abort failed: {exc}"
    done, _ = await asyncio.wait({migration}, timeout=abort_grace_s)
    if not done:
        migration.add_done_callback(_log_late_result)
        raise UnknownOutcomeError(
            f"{what}: not done after {timeout_s} s and still running {abort_grace_s} s after "
            f"the abort ({aborted}); outcome unknown"
        )
    try:
        migration.result()
    except HypervisorError as exc:
        raise HypervisorError(
            f"{what}: timed out after {timeout_s} s ({aborted}); the guest stays on the "
            f"source: {exc}"
        ) from exc
    log.warning(
        "%s: completed %.2f s after its %.1f s timeout, before the abort took effect",
        what,
        time.monotonic() - started - timeout_s,
        timeout_s,
    )


# Fire-and-forget aborts are referenced until they ran: asyncio keeps only weak references.
_pending: set[asyncio.Future[str]] = set()


def _keep(future: asyncio.Future[str]) -> None:
    _pending.add(future)
    future.add_done_callback(_pending.discard)
    future.add_done_callback(_log_late_result)


def _log_late_result(future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        return
    exc = future.exception()
    log.warning("migration call that outlived its caller ended: %s", exc or future.result())


def resume_domain(conn: libvirt.virConnect, domain: str, authorise: Authorise | None) -> None:
    """Blocking. Resume the paused `domain`. Idempotent: a domain that already runs is left
    alone (libvirt itself would answer "domain is already running"), and `authorise` is then not
    entered, as no call is made. Raises HypervisorError if it is not defined or not active."""
    try:
        dom = conn.lookupByName(domain)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise HypervisorError(f"resume {domain}: not defined here") from exc
        raise
    if dom.isActive() != 1:
        raise HypervisorError(f"resume {domain}: not running here (nothing to resume)")
    if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
        return
    try:
        if authorise is None:
            dom.resume()
            return
        with authorise():
            dom.resume()
    except libvirt.libvirtError as exc:
        # Resumed by someone else between the check and the call.
        invalid = exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
        if not (invalid and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING):
            raise
