"""Libvirt guests: the `Hypervisor` port over libvirt-python.

One `LibvirtHypervisor` holds one libvirt connection (`qemu:///system`, `xen:///system`, the
in-process `test:///default` driver, or a private daemon's `qemu:///system?socket=...`).

Contracts worth knowing before using it:

* Every blocking libvirt call runs in a worker thread (`asyncio.to_thread`) under a deadline of
  `call_timeout_s`. A libvirt error or a missed deadline becomes `HypervisorError`. After a
  missed deadline the outcome is *unknown*: the worker thread cannot be cancelled and the call
  may still complete later. Callers must re-observe (`domains()`), never assume.
* Ownership travels with the guest: `start` writes `<haagent:owner cluster= node= generation=/>`
  (namespace `OWNER_NS`) into the domain's persistent config before starting it, so the running
  instance carries the generation (the fencing token) it was started under. `domains()` reads
  it back; a foreign domain without (or with garbage) metadata reports owner None.
* Lifecycle events only *wake* the reconcile loop (level-triggered design): the listener gets
  no payload; the loop calls `domains()` to learn what changed. A dead connection also wakes it.
* A dead connection (libvirtd restarted, socket closed, keepalive expired) is detected through
  libvirt's close callback (and by `isAlive()` after a failed call) and replaced on the next
  call; the failed call itself raises `HypervisorError`.

Libvirt's event loop is process-global and driven from asyncio by `libvirt_events` (one
thread-safe implementation per process, bound to the loop that opens the first connection).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from haagent.ports import Authorise, DomainObservation, HypervisorError, UnknownOutcomeError
from haagent.resources.libvirt_define import DefinitionError, align_definition
from haagent.resources.libvirt_events import ThreadSafeEventImpl, bind_event_impl
from haagent.resources.libvirt_migrate import (
    abort_migration,
    perform_migration,
    plan_migration,
    resume_domain,
    run_migration,
)

__all__ = [
    "OWNER_NS",
    "OWNER_PREFIX",
    "LibvirtHypervisor",
    "LifecycleEvent",
    "Owner",
    "format_owner",
    "parse_owner",
]

log = logging.getLogger(__name__)

OWNER_NS = "https://haagent.dev/xmlns/owner/1"
OWNER_PREFIX = "haagent"
_OWNER_TAG = "owner"

_T = TypeVar("_T")

# A poll interval while waiting for a graceful shutdown; short enough that `stop` returns soon
# after the guest is down, long enough not to hammer libvirtd.
_STOP_POLL_S = 0.2

# How long `close()` waits for libvirt's deferred frees (socket, timers) to run on the loop.
_SETTLE_S = 2.0

_EVENT_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "DEFINED",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "UNDEFINED",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "STARTED",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "SUSPENDED",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "RESUMED",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "STOPPED",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "SHUTDOWN",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "PMSUSPENDED",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "CRASHED",
}

# libvirt's VIR_CONNECT_CLOSE_REASON_* values.
_CLOSE_REASONS = {0: "error", 1: "end of file", 2: "keepalive timeout", 3: "closed by client"}


# --- ownership metadata ----------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """The ownership record haagent writes into a domain when it starts it."""

    cluster: str
    node: str
    generation: int


_GENERATION_RE = re.compile(r"[0-9]{1,30}")


def format_owner(owner: Owner) -> str:
    """The metadata element for `owner`, without namespace: libvirt adds the namespace and the
    prefix given to `setMetadata`. ElementTree escapes the attribute values."""
    element = ET.Element(
        _OWNER_TAG,
        {"cluster": owner.cluster, "node": owner.node, "generation": str(owner.generation)},
    )
    return ET.tostring(element, encoding="unicode")


def parse_owner(text: str) -> Owner | None:
    """Parse what `virDomain.metadata()` returned; None for anything that is not a complete,
    well-formed owner record.

    All or nothing: a record with a usable node but a garbled generation is not trusted at all,
    because the generation is the fencing token that makes the node's claim meaningful. Libvirt
    returns the element without its namespace (`<owner .../>`), but a namespaced tag is accepted
    too.
    """
    try:
        element = ET.fromstring(text)
    except ET.ParseError:
        return None
    if element.tag not in (_OWNER_TAG, f"{{{OWNER_NS}}}{_OWNER_TAG}"):
        return None
    cluster = element.get("cluster")
    node = element.get("node")
    generation = element.get("generation")
    if not cluster or not node or generation is None:
        return None
    if _GENERATION_RE.fullmatch(generation) is None:
        return None
    return Owner(cluster=cluster, node=node, generation=int(generation))


# --- errors ----------------------------------------------------------------------------------


def _error_code(error: libvirt.libvirtError) -> int | None:
    return error.get_error_code()


def _describe(error: libvirt.libvirtError) -> str:
    message = error.get_error_message() or str(error)
    return f"libvirt error code {_error_code(error)}: {message}"


def _ignore_libvirt_error(_ctx: Any, _error: Any) -> None:
    """Libvirt's default handler prints every error to stderr, including the expected ones
    (no such domain, no metadata); errors reach us as exceptions anyway."""


def _silence_libvirt_stderr() -> None:
    libvirt.registerErrorHandler(_ignore_libvirt_error, None)


# --- the adapter -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LifecycleEvent:
    """The last lifecycle event seen, for logs and tests (the listener itself gets none)."""

    domain: str
    event: str  # DEFINED, STARTED, STOPPED... (libvirt's VIR_DOMAIN_EVENT_* without prefix)
    detail: int  # libvirt's per-event detail code, e.g. STOPPED/1 = destroyed, 5 = failed
    at: float  # time.monotonic() when the loop received it


def _domain_name_from_xml(xml: str) -> str:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise HypervisorError(f"invalid domain XML: {exc}") from exc
    name = root.findtext("name")
    if root.tag != "domain" or not name:
        raise HypervisorError("invalid domain XML: expected <domain> with a <name>")
    return name.strip()


def _lookup(conn: libvirt.virConnect, domain: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByName(domain)
    except libvirt.libvirtError as exc:
        if _error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _is_active(dom: libvirt.virDomain) -> bool:
    """True while the domain is in any active state; False once it is gone (a transient
    domain disappears when it stops)."""
    try:
        return dom.isActive() == 1
    except libvirt.libvirtError as exc:
        if _error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise


def _clear_autostart(dom: libvirt.virDomain) -> bool:
    """Turn autostart off if it is on; True if it was on (logged: an admin turned it on)."""
    if not dom.autostart():
        return False
    dom.setAutostart(0)
    log.warning(
        "domain %s had libvirt autostart on; turned it off (haagent decides where it starts)",
        dom.name(),
    )
    return True


def _read_owner(dom: libvirt.virDomain) -> Owner | None:
    """The owner record of the running instance if active, of the persistent config if not
    (`VIR_DOMAIN_AFFECT_CURRENT`). Missing or unusable metadata is None, never an error: the
    host may run domains haagent has never seen."""
    try:
        text = dom.metadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, libvirt.VIR_DOMAIN_AFFECT_CURRENT
        )
    except libvirt.libvirtError as exc:
        if _error_code(exc) in (libvirt.VIR_ERR_NO_DOMAIN_METADATA, libvirt.VIR_ERR_NO_SUPPORT):
            return None
        raise
    owner = parse_owner(text)
    if owner is None:
        log.debug("domain %s: unusable haagent metadata %r", dom.name(), text)
    return owner


class LibvirtHypervisor:
    """The `Hypervisor` port (see haagent.ports) for one libvirt connection.

    Call `open()` on the event loop that will receive lifecycle events, `close()` when done.
    `uri` is a libvirt URI; `call_timeout_s` bounds every libvirt call (and `open`);
    `keepalive_interval_s`/`keepalive_count` let libvirt declare a silent remote daemon dead
    after about interval * (count + 1) seconds (ignored by drivers without keepalive, such as
    `test:///`).
    """

    def __init__(
        self,
        uri: str,
        *,
        call_timeout_s: float = 30.0,
        keepalive_interval_s: int = 5,
        keepalive_count: int = 3,
    ) -> None:
        self.uri = uri
        self.call_timeout_s = call_timeout_s
        self._keepalive_interval_s = keepalive_interval_s
        self._keepalive_count = keepalive_count
        self._loop: asyncio.AbstractEventLoop | None = None
        self._impl: ThreadSafeEventImpl | None = None
        self._conn: libvirt.virConnect | None = None
        self._event_callback_id: int | None = None
        # Bumped for every new connection: callbacks of an older connection carry an older
        # epoch and are ignored, so a late close callback cannot condemn its successor.
        self._epoch = 0
        self._dead = False
        self._closed = False
        self._reconnect_lock = asyncio.Lock()
        self._wake: Callable[[], None] | None = None
        self._last_event: LifecycleEvent | None = None
        # Domains whose start() is still running in a worker thread (it may outlive the
        # caller's deadline): a destroy waits for it, or a late create() would undo the destroy.
        self._starting: dict[str, threading.Event] = {}
        self._starting_lock = threading.Lock()

    # --- lifecycle of the adapter -------------------------------------------------------------

    async def open(self) -> None:
        """Connect. Raises HypervisorError when libvirt is unreachable; the adapter then stays
        usable and connects on the next call."""
        if self._loop is not None:
            raise RuntimeError("LibvirtHypervisor.open() called twice")
        _silence_libvirt_stderr()
        self._loop = asyncio.get_running_loop()
        self._impl = bind_event_impl()
        await self._connection()

    async def close(self) -> None:
        """Drop the connection and wait (briefly) until libvirt has released its event handles,
        so that the event loop can end cleanly. Idempotent."""
        if self._closed:
            return
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._dispose(conn)
        if self._impl is not None:
            await self._impl.settle(_SETTLE_S)

    def alive(self) -> bool:
        """True if the connection is open and libvirt believes it is usable (no I/O)."""
        conn = self._conn
        if conn is None or self._dead or self._closed:
            return False
        try:
            return conn.isAlive() == 1
        except libvirt.libvirtError:
            return False

    def set_listener(self, wake: Callable[[], None]) -> None:
        """`wake()` runs on the event loop after any lifecycle event and after the connection
        died. It receives nothing: the caller re-observes with `domains()`."""
        self._wake = wake

    @property
    def last_event(self) -> LifecycleEvent | None:
        return self._last_event

    # --- the Hypervisor port ------------------------------------------------------------------

    async def domains(self) -> Mapping[str, DomainObservation]:
        """Every domain the connection knows (defined or running), by name, in one snapshot.

        A domain that vanishes while it is being read (a transient domain that stopped) is left
        out. Any other libvirt failure fails the whole snapshot rather than returning a partial
        view that could make a running guest look absent.
        """

        def snapshot(conn: libvirt.virConnect) -> dict[str, DomainObservation]:
            observed: dict[str, DomainObservation] = {}
            for dom in conn.listAllDomains(0):
                try:
                    name = dom.name()
                    running = dom.isActive() == 1
                    # A migration's incoming copy is paused until its hand-over commits.
                    paused = running and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
                    owner = _read_owner(dom)
                except libvirt.libvirtError as exc:
                    if _error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                        continue
                    raise
                observed[name] = DomainObservation(
                    name=name,
                    running=running,
                    owner=owner.node if owner else None,
                    generation=owner.generation if owner else None,
                    cluster=owner.cluster if owner else None,
                    paused=paused,
                )
            return observed

        return await self._call("list domains", snapshot)

    async def start(
        self,
        domain: str,
        xml: str | None,
        cluster: str,
        node: str,
        generation: int,
        authorise: Authorise | None = None,
    ) -> None:
        """Define `domain` from `xml` unless a domain of that name exists, write the owner
        record into its persistent config and start it. An existing inactive definition
        whose disks differ from `xml`'s is redefined from `xml` first (same UUID), so that a
        start never opens a disk the caller did not intend, such as a stale raid1 leg kept
        by an old definition (resources/libvirt_define.py); with `xml` None the stored
        definition is started as it is.

        `authorise` (see `Hypervisor.start`) is entered in the worker thread right before
        `create()` and held until `create()` returns: the lease and the generation are checked
        at the moment of the call, not when the start was decided, and a `create()` that
        outlives this coroutine (its deadline passed) still holds the permit.

        Idempotent: if the domain already runs under exactly this owner record (cluster, node,
        generation) it succeeds without touching it. If it runs under any other record, or
        without one, it raises: a running instance with another generation belongs to another
        ownership epoch, and only a stop/destroy decided by the core may end it.
        """
        if generation < 0:
            raise ValueError("generation must be >= 0")
        wanted = Owner(cluster=cluster, node=node, generation=generation)
        if xml is not None:
            xml_name = _domain_name_from_xml(xml)
            if xml_name != domain:
                raise HypervisorError(f"domain XML names {xml_name!r}, expected {domain!r}")

        def start(conn: libvirt.virConnect) -> None:
            done = threading.Event()
            with self._starting_lock:
                if domain in self._starting:
                    raise UnknownOutcomeError(
                        f"start {domain}: an earlier start is still running (outcome unknown)"
                    )
                self._starting[domain] = done
            try:
                start_in_thread(conn)
            finally:
                with self._starting_lock:
                    self._starting.pop(domain, None)
                done.set()

        def start_in_thread(conn: libvirt.virConnect) -> None:
            dom = _lookup(conn, domain)
            if dom is None:
                if xml is None:
                    raise HypervisorError(f"domain {domain!r} is not defined and no XML given")
                dom = conn.defineXML(xml)
            elif xml is not None and not _is_active(dom):
                # A stored definition may list a disk the agent does not intend now (a stale
                # raid1 leg, an old layout): resources/libvirt_define.py.
                try:
                    dom = align_definition(conn, dom, xml)
                except DefinitionError as exc:
                    raise HypervisorError(f"start {domain}: {exc}") from None
            if _is_active(dom):
                current = _read_owner(dom)
                if current == wanted:
                    return
                raise HypervisorError(
                    f"domain {domain!r} is already running under {current or 'no owner record'}"
                    f", refusing to claim it for {wanted}"
                )
            _clear_autostart(dom)
            # The domain is inactive, so its persistent config is what `create()` will run.
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                format_owner(wanted),
                OWNER_PREFIX,
                OWNER_NS,
                libvirt.VIR_DOMAIN_AFFECT_CONFIG,
            )
            if authorise is None:
                dom.create()
                return
            with authorise():
                dom.create()

        await self._call(f"start {domain}", start)

    async def migrate(
        self,
        domain: str,
        dest_uri: str,
        cluster: str,
        dest_node: str,
        generation: int,
        timeout_s: float,
        authorise: Authorise | None = None,
    ) -> None:
        """The `Hypervisor.migrate` contract (haagent.ports), which this adapter keeps as written
        there. Specific here: `dest_uri` is the destination as the source libvirtd reaches it;
        a connection to the source that died, or a job that outlived its abort, raises
        UnknownOutcomeError (a HypervisorError). Details: resources/libvirt_migrate.py.
        """
        if generation < 0:
            raise ValueError("generation must be >= 0")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        what = f"migrate {domain} to {dest_uri}"
        record = format_owner(Owner(cluster=cluster, node=dest_node, generation=generation))
        plan = await self._call(
            what,
            lambda conn: plan_migration(conn, domain, record, OWNER_NS, OWNER_PREFIX),
        )
        perform = self._call(
            what, lambda _conn: perform_migration(plan, dest_uri, authorise), bounded=False
        )
        await run_migration(
            what,
            perform,
            lambda: self._call(f"abort {what}", lambda _conn: abort_migration(plan)),
            timeout_s,
            abort_grace_s=self.call_timeout_s,
        )

    async def resume(self, domain: str, authorise: Authorise | None = None) -> None:
        """The `Hypervisor.resume` contract (haagent.ports); a running domain is left alone, one
        not active here raises HypervisorError."""
        await self._call(f"resume {domain}", lambda conn: resume_domain(conn, domain, authorise))

    async def stop(self, domain: str, timeout_s: float) -> None:
        """Ask the guest to shut down (ACPI); destroy it if it is still active after
        `timeout_s`. Succeeds at once if the domain is not running or not defined."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        def request_shutdown(conn: libvirt.virConnect) -> bool:
            dom = _lookup(conn, domain)
            if dom is None or not _is_active(dom):
                return False
            try:
                dom.shutdown()
            except libvirt.libvirtError as exc:
                # It stopped between the check and the request: done.
                if _error_code(exc) == libvirt.VIR_ERR_OPERATION_INVALID and not _is_active(dom):
                    return False
                raise
            return True

        def active(conn: libvirt.virConnect) -> bool:
            dom = _lookup(conn, domain)
            return dom is not None and _is_active(dom)

        if not await self._call(f"shutdown {domain}", request_shutdown):
            return
        while True:
            if not await self._call(f"state of {domain}", active):
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(_STOP_POLL_S, remaining))
        log.info("domain %s still active %.1f s after shutdown; destroying", domain, timeout_s)
        await self.destroy(domain)

    async def destroy(self, domain: str) -> None:
        """Hard power-off. Succeeds if the domain is not running or not defined; the
        definition (and its owner record) stays.

        "Domain is not running" from libvirt counts as success once the domain is inactive:
        besides the plain race with the guest stopping by itself, libvirtd 9.0 answers so when
        a destroy lands while a restarted libvirtd is still re-attaching to the running QEMU
        (the guest is killed, the domain ends shut off with reason "daemon", and no STOPPED
        event is sent).
        """

        def destroy(conn: libvirt.virConnect) -> None:
            with self._starting_lock:
                starting = self._starting.get(domain)
            # Half the call deadline, so that this answer (not the deadline's) comes back.
            wait_s = self.call_timeout_s / 2
            if starting is not None and not starting.wait(wait_s):
                raise UnknownOutcomeError(
                    f"destroy {domain}: a start of it is still running after {wait_s} s; not "
                    "destroyed (it could start after)"
                )
            dom = _lookup(conn, domain)
            if dom is None or not _is_active(dom):
                return
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                code = _error_code(exc)
                gone = code in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN)
                if gone and not _is_active(dom):
                    return
                raise

        await self._call(f"destroy {domain}", destroy)

    async def clear_autostart(self, domains: Collection[str]) -> list[str]:
        """See `Hypervisor.clear_autostart`. Domains not defined here are skipped."""

        def clear(conn: libvirt.virConnect) -> list[str]:
            cleared = []
            for name in sorted(domains):
                dom = _lookup(conn, name)
                if dom is not None and _clear_autostart(dom):
                    cleared.append(name)
            return cleared

        return await self._call("clear autostart", clear)

    async def capacity_mib(self) -> int:
        """The host's memory in MiB (libvirt's node info)."""

        def memory(conn: libvirt.virConnect) -> int:
            return int(conn.getInfo()[1])

        return await self._call("node info", memory)

    async def call(self, what: str, operation: Callable[[libvirt.virConnect], _T]) -> _T:
        """Run `operation(conn)` on this adapter's connection, with the same worker thread,
        deadline, reconnect and error mapping as the port's own calls (for sibling adapters on
        the same host, such as the guest-RAID1 legs in haagent.resources.mirrors)."""
        return await self._call(what, operation)

    # --- connection handling ------------------------------------------------------------------

    async def _call(
        self,
        what: str,
        operation: Callable[[libvirt.virConnect], _T],
        *,
        bounded: bool = True,
    ) -> _T:
        """Run `operation(conn)` in a worker thread under the call deadline (none when not
        `bounded`: the caller bounds it itself, as `migrate` does)."""
        conn = await self._connection()
        epoch = self._epoch

        def guarded() -> _T:
            try:
                return operation(conn)
            except libvirt.libvirtError as exc:
                # A failed RPC on a dead socket may arrive before the close callback does.
                try:
                    alive = conn.isAlive() == 1
                except libvirt.libvirtError:
                    alive = False
                if not alive:
                    self._mark_dead(epoch)
                    # The request may have reached libvirtd before the connection died.
                    raise UnknownOutcomeError(
                        f"{what} on {self.uri}: connection lost ({_describe(exc)}; outcome unknown)"
                    ) from exc
                raise

        return await self._run(what, guarded, bounded=bounded)

    async def _run(self, what: str, blocking: Callable[[], _T], *, bounded: bool = True) -> _T:
        try:
            async with asyncio.timeout(self.call_timeout_s if bounded else None):
                return await asyncio.to_thread(blocking)
        except TimeoutError:
            raise UnknownOutcomeError(
                f"{what} on {self.uri}: no answer from libvirt within {self.call_timeout_s} s "
                "(outcome unknown)"
            ) from None
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"{what} on {self.uri}: {_describe(exc)}") from exc

    async def _connection(self) -> libvirt.virConnect:
        if self._loop is None or self._closed:
            raise RuntimeError("LibvirtHypervisor is not open")
        conn = self._conn
        if conn is not None and not self._dead:
            return conn
        async with self._reconnect_lock:
            conn = self._conn
            if conn is not None and not self._dead:
                return conn
            if conn is not None:
                log.warning("libvirt connection to %s is dead; reconnecting", self.uri)
                self._conn = None
                await self._dispose(conn)
            conn = await self._connect()
            self._conn = conn
            self._dead = False
            return conn

    async def _connect(self) -> libvirt.virConnect:
        self._epoch += 1
        epoch = self._epoch
        # An open that completes after its deadline is not leaked: nobody holds the result,
        # and libvirt-python's virConnect.__del__ closes the connection.
        conn = await self._run(f"open {self.uri}", functools.partial(libvirt.open, self.uri))

        def subscribe() -> int:
            conn.registerCloseCallback(self._on_close, epoch)
            try:
                conn.setKeepAlive(self._keepalive_interval_s, self._keepalive_count)
            except libvirt.libvirtError as exc:
                if _error_code(exc) not in (
                    libvirt.VIR_ERR_NO_SUPPORT,
                    libvirt.VIR_ERR_INVALID_ARG,
                ):
                    raise
            return conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, epoch
            )

        try:
            self._event_callback_id = await self._run(f"subscribe to {self.uri}", subscribe)
        except BaseException:
            self._event_callback_id = None
            await self._dispose(conn)
            raise
        return conn

    async def _dispose(self, conn: libvirt.virConnect) -> None:
        """Unsubscribe and close, best effort: a dead connection fails all of these."""
        callback_id, self._event_callback_id = self._event_callback_id, None

        def dispose() -> None:
            if callback_id is not None:
                try:
                    conn.domainEventDeregisterAny(callback_id)
                except libvirt.libvirtError as exc:
                    log.debug("deregistering lifecycle events: %s", _describe(exc))
            try:
                conn.unregisterCloseCallback()
            except libvirt.libvirtError as exc:
                log.debug("unregistering close callback: %s", _describe(exc))
            try:
                conn.close()
            except libvirt.libvirtError as exc:
                log.debug("closing connection: %s", _describe(exc))

        try:
            await self._run(f"close {self.uri}", dispose)
        except HypervisorError as exc:
            log.warning("%s", exc)

    # --- callbacks from libvirt ---------------------------------------------------------------

    def _on_lifecycle(
        self,
        _conn: libvirt.virConnect,
        dom: libvirt.virDomain,
        event: int,
        detail: int,
        epoch: Any,
    ) -> None:
        if epoch != self._epoch:
            return
        name = dom.name()
        self._last_event = LifecycleEvent(
            domain=name,
            event=_EVENT_NAMES.get(event, str(event)),
            detail=detail,
            at=time.monotonic(),
        )
        log.debug("libvirt event: %s %s/%d", name, self._last_event.event, detail)
        self._notify()

    def _on_close(self, _conn: libvirt.virConnect, reason: int, epoch: Any) -> None:
        # May run on a worker thread (an RPC noticed EOF) or on the loop.
        why = _CLOSE_REASONS.get(reason, str(reason))
        log.warning("libvirt connection to %s closed (%s)", self.uri, why)
        self._mark_dead(epoch)

    def _mark_dead(self, epoch: Any) -> None:
        if epoch != self._epoch or self._closed:
            return
        if not self._dead:
            self._dead = True
            self._notify()

    def _notify(self) -> None:
        loop = self._loop
        if self._wake is None or loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._deliver_wake)

    def _deliver_wake(self) -> None:
        if self._wake is not None and not self._closed:
            self._wake()
