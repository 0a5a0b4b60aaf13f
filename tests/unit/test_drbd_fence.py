"""The fence-peer handler (a real subprocess, as DRBD runs it) against a real FenceServer on a
unix socket, with a scripted FenceAuthority standing in for the daemon."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from haagent.resources.drbd_fence import (
    PROTOCOL,
    FenceAnswer,
    FenceRequest,
    FenceServer,
    Op,
    ProtocolError,
    Verdict,
    exit_code,
)

REPO = Path(__file__).resolve().parents[2]
HAAGENT = REPO / ".venv" / "bin" / "haagent"
DRBD_ENV = {
    "DRBD_RESOURCE": "r0",
    "DRBD_PEER": "hv2",
    "DRBD_PEERS": "hv2",
    "DRBD_PEER_ADDRESS": "10.99.1.2",
    "DRBD_PEER_AF": "ipv4",
    "DRBD_MINOR": "0",
    "DRBD_CONF": "/etc/drbd.conf",
}


class ScriptedAuthority:
    """Answers with the next verdict of a script (the last one repeats); records requests."""

    def __init__(self, *verdicts: Verdict, delay_s: float = 0.0) -> None:
        self.verdicts = list(verdicts)
        self.delay_s = delay_s
        self.requests: list[FenceRequest] = []

    async def _next(self, request: FenceRequest) -> FenceAnswer:
        self.requests.append(request)
        await asyncio.sleep(self.delay_s)
        verdict = self.verdicts.pop(0) if len(self.verdicts) > 1 else self.verdicts[0]
        return FenceAnswer(verdict, f"scripted {verdict}")

    async def ensure_peer_cannot_write(self, request: FenceRequest) -> FenceAnswer:
        return await self._next(request)

    async def peer_may_write_again(self, request: FenceRequest) -> FenceAnswer:
        return await self._next(request)


async def handler(
    sock: Path, *args: str, env: dict[str, str] | None = None, cli: bool = False
) -> tuple[int, str]:
    """Run the handler as DRBD would: a process with DRBD_* in its environment."""
    argv = [str(HAAGENT), "drbd"] if cli else [sys.executable, "-m", "haagent.resources.drbd_fence"]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        *args,
        "--socket",
        str(sock),
        env={**os.environ, **(DRBD_ENV if env is None else env)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "run" / "fence.sock"


@pytest.mark.parametrize(
    ("verdict", "code"),
    [
        (Verdict.PEER_INCONSISTENT, 3),
        (Verdict.PEER_OUTDATED, 4),
        (Verdict.PEER_UNREACHABLE, 5),
        (Verdict.PEER_PRIMARY, 6),
        (Verdict.PEER_FENCED, 7),
        (Verdict.REFUSED, 1),
        (Verdict.ERROR, 1),
        (Verdict.UNFENCED, 1),  # not an answer to fence-peer
    ],
)
async def test_fence_peer_exit_codes(sock: Path, verdict: Verdict, code: int) -> None:
    authority = ScriptedAuthority(verdict)
    server = FenceServer(sock, authority)
    await server.start()
    try:
        rc, out = await handler(sock, "fence-peer")
    finally:
        await server.close()
    assert rc == code, out
    (req,) = authority.requests
    assert req == FenceRequest(Op.FENCE_PEER, "r0", "hv2", "10.99.1.2", None, "0", None)


async def test_socket_is_private_and_removed(sock: Path) -> None:
    server = FenceServer(sock, ScriptedAuthority(Verdict.PEER_FENCED))
    await server.start()
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    finally:
        await server.close()
    assert not sock.exists()


async def test_no_majority_never_succeeds_and_retries_until_the_deadline(sock: Path) -> None:
    authority = ScriptedAuthority(Verdict.NO_MAJORITY)
    server = FenceServer(sock, authority)
    await server.start()
    try:
        t0 = time.monotonic()
        rc, out = await handler(sock, "fence-peer", "--timeout-s", "2.5")
        took = time.monotonic() - t0
    finally:
        await server.close()
    assert rc == 1 and "no-majority" in out
    assert len(authority.requests) >= 2  # it asked again while the deadline allowed
    assert 2.0 <= took < 15


async def test_a_majority_that_comes_back_in_time_lets_io_resume(sock: Path) -> None:
    authority = ScriptedAuthority(Verdict.NO_MAJORITY, Verdict.PEER_OUTDATED)
    server = FenceServer(sock, authority)
    await server.start()
    try:
        rc, _ = await handler(sock, "fence-peer", "--timeout-s", "20")
    finally:
        await server.close()
    assert rc == 4 and len(authority.requests) == 2


async def test_an_agent_that_does_not_decide_in_time_is_no_majority(sock: Path) -> None:
    server = FenceServer(sock, ScriptedAuthority(Verdict.PEER_FENCED, delay_s=30), 0.3)
    await server.start()
    try:
        rc, out = await handler(sock, "fence-peer", "--timeout-s", "1")
    finally:
        await server.close()
    assert rc == 1 and "no-majority" in out


class BrokenAuthority(ScriptedAuthority):
    async def ensure_peer_cannot_write(self, request: FenceRequest) -> FenceAnswer:
        raise RuntimeError("a bug")


async def test_a_failing_authority_is_an_error_not_a_success(sock: Path) -> None:
    server = FenceServer(sock, BrokenAuthority(Verdict.PEER_FENCED))
    await server.start()
    try:
        rc, out = await handler(sock, "fence-peer", "--timeout-s", "1")
    finally:
        await server.close()
    assert rc == 1 and "agent error: RuntimeError: a bug" in out


async def test_no_agent_is_a_failure(sock: Path) -> None:
    rc, out = await handler(sock, "fence-peer", "--timeout-s", "1")
    assert rc == 1 and "not reachable" in out


async def test_garbage_from_the_socket_is_a_failure(sock: Path) -> None:
    sock.parent.mkdir(parents=True)

    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readline()
        w.write(b'{"protocol": "something-else/9", "verdict": "peer-fenced"}\n')
        await w.drain()
        w.close()

    server = await asyncio.start_unix_server(garbage, path=str(sock))
    try:
        rc, out = await handler(sock, "fence-peer", "--timeout-s", "1")
    finally:
        server.close()
        await server.wait_closed()
    assert rc == 1 and "unknown protocol" in out


async def test_unfence_peer_and_the_cli_entry_point(sock: Path) -> None:
    authority = ScriptedAuthority(Verdict.UNFENCED)
    server = FenceServer(sock, authority)
    await server.start()
    try:
        rc, out = await handler(sock, "unfence-peer", cli=True)
        rc_fail, _ = await handler(sock, "unfence-peer", "r1", env={"DRBD_PEER": "hv2"})
    finally:
        await server.close()
    assert rc == 0, out
    assert authority.requests[0].op is Op.UNFENCE_PEER
    assert rc_fail == 0 and authority.requests[1].resource == "r1"  # argv beats environment


async def test_without_a_resource_the_handler_refuses(sock: Path) -> None:
    rc, out = await handler(sock, "fence-peer", env={})
    assert rc == 2 and "DRBD_RESOURCE" in out


def test_messages_round_trip_and_reject_foreign_input() -> None:
    req = FenceRequest(Op.FENCE_PEER, "r0", "hv2", peer_address="10.0.0.2")
    assert FenceRequest.from_json(req.to_json()) == req
    ans = FenceAnswer(Verdict.PEER_OUTDATED, "committed")
    assert FenceAnswer.from_json(ans.to_json()) == ans
    for raw in (
        b"not json\n",
        b"[]\n",
        b'{"protocol": "x"}\n',
        f'{{"protocol": "{PROTOCOL}", "op": "fence-peer", "resource": 3, "peer": "a"}}\n'.encode(),
        f'{{"protocol": "{PROTOCOL}", "verdict": "maybe"}}\n'.encode(),
    ):
        with pytest.raises(ProtocolError):
            if b"verdict" in raw:
                FenceAnswer.from_json(raw)
            else:
                FenceRequest.from_json(raw)


def test_exit_codes_only_succeed_on_the_five_outcomes() -> None:
    ok = {v: exit_code(Op.FENCE_PEER, v) for v in Verdict if exit_code(Op.FENCE_PEER, v) != 1}
    assert ok == {
        Verdict.PEER_INCONSISTENT: 3,
        Verdict.PEER_OUTDATED: 4,
        Verdict.PEER_UNREACHABLE: 5,
        Verdict.PEER_PRIMARY: 6,
        Verdict.PEER_FENCED: 7,
    }
    assert exit_code(Op.FENCE_PEER, Verdict.NO_MAJORITY) == 1
    assert exit_code(Op.UNFENCE_PEER, Verdict.NO_MAJORITY) == 1
