"""Migration pieces that need no second host: the owner record rewrite, `resume` and the
refusals of `migrate` on libvirt's `test:///` driver, and the timeout/abort logic of
`run_migration` driven by plain coroutines (the real migrations are in
tests/integration/test_real_migration.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from haagent.ports import HypervisorError, RefusedError, UnknownOutcomeError
from haagent.resources.libvirt_guests import (
    OWNER_NS,
    OWNER_PREFIX,
    LibvirtHypervisor,
    Owner,
    format_owner,
    parse_owner,
)
from haagent.resources.libvirt_migrate import run_migration, with_owner

NODE_XML = """<node>
  <cpu>
    <mhz>2000</mhz><model>x86_64</model><active>2</active>
    <nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>
  </cpu>
  <memory>4194304</memory>
</node>
"""

GUEST_XML = (
    "<domain type='test'><name>g</name><memory unit='MiB'>64</memory>"
    "<os><type arch='x86_64'>hvm</type></os></domain>"
)


@pytest.fixture
def node_uri(tmp_path: Path) -> str:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    return f"test://{node}"


# --- the owner record in the destination's XML ------------------------------------------------


def test_with_owner_replaces_the_record_and_keeps_other_metadata() -> None:
    xml = (
        "<domain type='kvm'><name>g</name><metadata>"
        "<other:thing xmlns:other='https://example.org/other'>keep me</other:thing>"
        f"<haagent:owner xmlns:haagent='{OWNER_NS}' cluster='C' node='n1' generation='3'/>"
        "</metadata><devices/></domain>"
    )
    new = with_owner(xml, format_owner(Owner("C", "n2", 4)), OWNER_NS, OWNER_PREFIX)
    assert new.count(f"<{OWNER_PREFIX}:owner ") == 1
    assert "keep me" in new and "https://example.org/other" in new
    assert 'node="n2"' in new and 'generation="4"' in new and "n1" not in new


def test_with_owner_adds_metadata_and_refuses_what_is_no_domain() -> None:
    new = with_owner("<domain><name>g</name></domain>", format_owner(Owner("C", "n2", 4)),
                     OWNER_NS, OWNER_PREFIX)  # fmt: skip
    assert f'xmlns:{OWNER_PREFIX}="{OWNER_NS}"' in new
    with pytest.raises(HypervisorError, match="expected a <domain>"):
        with_owner("<network/>", format_owner(Owner("C", "n", 1)), OWNER_NS, OWNER_PREFIX)
    with pytest.raises(HypervisorError, match="invalid domain XML"):
        with_owner("<domain>", format_owner(Owner("C", "n", 1)), OWNER_NS, OWNER_PREFIX)


def test_libvirt_reads_the_rewritten_record(node_uri: str) -> None:
    """What libvirt makes of the rewritten XML: the metadata API returns the new record."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(node_uri)
    try:
        dom = conn.defineXML(GUEST_XML)
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, format_owner(Owner("C", "n1", 3)),
                        OWNER_PREFIX, OWNER_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG)  # fmt: skip
        rewritten = with_owner(dom.XMLDesc(0), format_owner(Owner("C", "n2", 4)), OWNER_NS,
                               OWNER_PREFIX)  # fmt: skip
        redefined = conn.defineXML(rewritten)
        text = redefined.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, 0)
        assert parse_owner(text) == Owner("C", "n2", 4)
    finally:
        conn.close()


# --- resume and migrate on the test driver ---------------------------------------------------


@contextlib.contextmanager
def refused() -> Iterator[None]:
    raise RefusedError("lease lapsed")
    yield


def test_resume_is_idempotent_and_refuses_what_is_not_active(node_uri: str) -> None:
    async def scenario() -> None:
        h = LibvirtHypervisor(node_uri)
        await h.open()
        try:
            with pytest.raises(HypervisorError, match="not defined here"):
                await h.resume("g")
            await h.start("g", GUEST_XML, "C", "n1", 3)

            def suspend(conn: libvirt.virConnect) -> None:
                conn.lookupByName("g").suspend()

            def state(conn: libvirt.virConnect) -> int:
                return conn.lookupByName("g").state()[0]

            await h._call("suspend", suspend)
            with pytest.raises(RefusedError):
                await h.resume("g", refused)
            assert await h._call("state", state) == libvirt.VIR_DOMAIN_PAUSED
            await h.resume("g")
            assert await h._call("state", state) == libvirt.VIR_DOMAIN_RUNNING
            await h.resume("g", refused)  # already running: no call, so no permit asked for
            await h.destroy("g")
            with pytest.raises(HypervisorError, match="not running here"):
                await h.resume("g")
        finally:
            await h.close()

    asyncio.run(scenario())


def test_migrate_refusals_are_hypervisor_errors(node_uri: str) -> None:
    async def scenario() -> None:
        h = LibvirtHypervisor(node_uri)
        await h.open()
        try:
            with pytest.raises(HypervisorError, match="not defined on the source"):
                await h.migrate("g", "test:///default", "C", "n2", 4, 5.0)
            await h.start("g", GUEST_XML, "C", "n1", 3)
            await h.destroy("g")
            with pytest.raises(HypervisorError, match="not running on the source"):
                await h.migrate("g", "test:///default", "C", "n2", 4, 5.0)
            await h.start("g", GUEST_XML, "C", "n1", 3)
            with pytest.raises(RefusedError):
                await h.migrate("g", "test:///default", "C", "n2", 4, 5.0, refused)
            # The test driver cannot migrate: libvirt's refusal arrives as HypervisorError.
            with pytest.raises(HypervisorError, match="libvirt error code"):
                await h.migrate("g", "test:///default", "C", "n2", 4, 5.0)
            assert (await h.domains())["g"].running
            for bad in ({"generation": -1}, {"timeout_s": 0.0}):
                args = {"generation": 4, "timeout_s": 5.0} | bad
                with pytest.raises(ValueError):
                    await h.migrate("g", "test:///default", "C", "n2", **args)  # type: ignore[arg-type]
        finally:
            await h.close()

    asyncio.run(scenario())


# --- run_migration: timeout, abort, late outcomes --------------------------------------------


class Job:
    """A migration call stand-in: ends when `finish` is called, or when aborted if
    `abortable`; records the aborts it received."""

    def __init__(self, *, abortable: bool = True, abort_error: bool = False) -> None:
        self.done = asyncio.Event()
        self.outcome: BaseException | None = None
        self.aborts = 0
        self.abortable = abortable
        self.abort_error = abort_error

    async def perform(self) -> None:
        await self.done.wait()
        if self.outcome is not None:
            raise self.outcome

    def finish(self, outcome: BaseException | None = None) -> None:
        self.outcome = outcome
        self.done.set()

    async def abort(self) -> str:
        self.aborts += 1
        if self.abort_error:
            raise HypervisorError("no job")
        if self.abortable:
            self.finish(HypervisorError("operation aborted: canceled by client"))
        return "job aborted"


def run(job: Job, timeout_s: float, grace_s: float = 5.0) -> None:
    asyncio.run(run_migration("migrate g", job.perform(), job.abort, timeout_s, grace_s))


def test_a_migration_that_ends_in_time_is_not_aborted() -> None:
    async def scenario() -> None:
        job = Job()
        asyncio.get_running_loop().call_later(0.01, job.finish)
        await run_migration("migrate g", job.perform(), job.abort, 5.0, 5.0)
        assert job.aborts == 0
        failing = Job()
        asyncio.get_running_loop().call_later(0.01, failing.finish, HypervisorError("refused"))
        with pytest.raises(HypervisorError, match=r"^refused$"):
            await run_migration("migrate g", failing.perform(), failing.abort, 5.0, 5.0)
        assert failing.aborts == 0

    asyncio.run(scenario())


def test_timeout_aborts_and_raises_once_the_job_ended() -> None:
    job = Job()
    with pytest.raises(HypervisorError, match=r"timed out after 0\.05 s \(job aborted\)") as err:
        run(job, 0.05)
    assert not isinstance(err.value, UnknownOutcomeError)
    assert job.aborts == 1


def test_a_job_that_completes_despite_the_abort_is_reported_done() -> None:
    """The abort came too late (QEMU had switched over): the truth is "migrated"."""
    job = Job(abortable=False)

    async def scenario() -> None:
        asyncio.get_running_loop().call_later(0.2, job.finish)
        await run_migration("migrate g", job.perform(), job.abort, 0.05, 5.0)

    asyncio.run(scenario())
    assert job.aborts == 1


def test_a_job_that_outlives_its_abort_is_unknown() -> None:
    job = Job(abortable=False, abort_error=True)
    with pytest.raises(UnknownOutcomeError, match=r"abort failed: no job.*outcome unknown"):
        run(job, 0.05, grace_s=0.1)


def test_a_cancelled_caller_aborts_the_job() -> None:
    async def scenario() -> None:
        job = Job()
        task = asyncio.ensure_future(run_migration("migrate g", job.perform(), job.abort, 5.0, 5.0))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(5):
            await job.done.wait()
        assert job.aborts == 1

    asyncio.run(scenario())
