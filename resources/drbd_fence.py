"""DRBD's fence-peer / unfence-peer handler, and the agent side of its local socket.

DRBD (`fencing resource-and-stonith;`) freezes a Primary's I/O when it loses its peer and runs
the `fence-peer` handler; I/O resumes only when the handler exits with one of the codes below,
and stays frozen for any other exit (DRBD's user's guide, "The peer fencing interface";
drbd-utils' crm-fence-peer.9.sh):

    3  the peer's disk was already Inconsistent
    4  the peer's disk is Outdated (it was outdated, or was already)
    5  the peer could not be reached (DRBD treats it as outdated only if our disk is UpToDate)
    6  the peer refused: it is Primary (or has better data); DRBD outdates *this* side
    7  the peer's node was fenced (powered off): only with resource-and-stonith
    1  anything else: "fence-peer helper broken", I/O stays frozen

`haagent drbd fence-peer` (this module's `main`) does not decide: it asks the local agent
over a unix socket to make sure the peer cannot write, and maps the agent's verdict to the
exit code. Without a majority the agent cannot commit anything, so it answers `no-majority`
and the handler exits 1: I/O stays frozen, which is safe (the node is about to lose its lease
and stop its guests anyway). Every other failure (no agent, no answer in time, garbage) is
exit 1 too. The handler retries until `--timeout-s` while the agent is unreachable or answers
`no-majority`, so a short loss of the majority does not leave I/O frozen for good.

Protocol (one request per connection, newline-terminated JSON each way, UTF-8):

    request   {"protocol": "haagent-drbd-fence/1", "op": "fence-peer" | "unfence-peer",
               "resource": "r0", "peer": "hv2", "peer_address": "10.0.0.2",
               "peer_node_id": null, "minor": "0", "volume": null}
    response  {"protocol": "haagent-drbd-fence/1", "verdict": VERDICT, "detail": "..."}

`peer` is DRBD_PEER (the peer's host name in drbd.conf, which must be its haagent node name);
the other fields are what DRBD put in the handler's environment (null when absent). VERDICT
is a `Verdict` value. The server (`FenceServer`, run by the daemon) answers through a
`FenceAuthority`, the interface the daemon implements: `ensure_peer_cannot_write` and
`peer_may_write_again`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("haagent.drbd.fence")

PROTOCOL = "haagent-drbd-fence/1"
DEFAULT_SOCKET = "/run/haagent/drbd-fence.sock"
SOCKET_ENV = "HAAGENT_DRBD_FENCE_SOCKET"
MAX_MESSAGE_BYTES = 64 * 1024

EXIT_FAILED = 1  # DRBD: "helper broken"; I/O stays frozen
EXIT_USAGE = 2


class Op(StrEnum):
    FENCE_PEER = "fence-peer"
    UNFENCE_PEER = "unfence-peer"


class Verdict(StrEnum):
    """What the agent did or found. Only the first five let DRBD resume I/O."""

    PEER_INCONSISTENT = "peer-inconsistent"  # 3
    PEER_OUTDATED = "peer-outdated"  # 4: "peer outdated" committed through Raft
    PEER_UNREACHABLE = "peer-unreachable"  # 5: peer's node known down (committed), not fenced
    PEER_PRIMARY = "peer-primary"  # 6: the peer owns the guest: outdate this side instead
    PEER_FENCED = "peer-fenced"  # 7: the peer's node was powered off, committed
    UNFENCED = "unfenced"  # unfence-peer: the peer's mark was cleared (or was not there)
    NO_MAJORITY = "no-majority"  # nothing could be committed: never a success
    REFUSED = "refused"  # the agent will not vouch for it (e.g. not the owner)
    ERROR = "error"  # the agent failed to decide


FENCE_EXIT_CODES: Mapping[Verdict, int] = {
    Verdict.PEER_INCONSISTENT: 3,
    Verdict.PEER_OUTDATED: 4,
    Verdict.PEER_UNREACHABLE: 5,
    Verdict.PEER_PRIMARY: 6,
    Verdict.PEER_FENCED: 7,
}
RETRY_VERDICTS = (Verdict.NO_MAJORITY,)


def exit_code(op: Op, verdict: Verdict) -> int:
    """The handler's exit status for a verdict. Anything but the five fence outcomes is 1."""
    if op is Op.UNFENCE_PEER:
        return 0 if verdict is Verdict.UNFENCED else EXIT_FAILED
    return FENCE_EXIT_CODES.get(verdict, EXIT_FAILED)


@dataclass(frozen=True)
class FenceRequest:
    op: Op
    resource: str
    peer: str
    peer_address: str | None = None
    peer_node_id: str | None = None
    minor: str | None = None
    volume: str | None = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {"protocol": PROTOCOL, **asdict(self), "op": self.op.value}
        return json.dumps(doc, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> FenceRequest:
        doc = _decode(raw)
        try:
            op = Op(doc["op"])
            resource, peer = doc["resource"], doc["peer"]
        except (KeyError, ValueError) as exc:
            raise ProtocolError(f"bad request: {exc}") from None
        if not isinstance(resource, str) or not resource or not isinstance(peer, str):
            raise ProtocolError("bad request: resource and peer must be strings")
        opt = {}
        for key in ("peer_address", "peer_node_id", "minor", "volume"):
            value = doc.get(key)
            if value is not None and not isinstance(value, str):
                raise ProtocolError(f"bad request: {key} must be a string or null")
            opt[key] = value
        return cls(op, resource, peer, **opt)


@dataclass(frozen=True)
class FenceAnswer:
    verdict: Verdict
    detail: str = ""

    def to_json(self) -> bytes:
        doc = {"protocol": PROTOCOL, "verdict": self.verdict.value, "detail": self.detail}
        return json.dumps(doc, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> FenceAnswer:
        doc = _decode(raw)
        try:
            verdict = Verdict(doc["verdict"])
        except (KeyError, ValueError) as exc:
            raise ProtocolError(f"bad answer: {exc}") from None
        detail = doc.get("detail", "")
        return cls(verdict, detail if isinstance(detail, str) else str(detail))


class ProtocolError(ValueError):
    pass


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("not a JSON object")
    if doc.get("protocol") != PROTOCOL:
        raise ProtocolError(f"unknown protocol {doc.get('protocol')!r} (want {PROTOCOL})")
    return doc


# --- the server side (the daemon) ------------------------------------------------------------


class FenceAuthority(Protocol):
    """What the daemon implements for the handler. Both calls must be bounded in time (the
    daemon uses its commit timeout) and must never answer a success they cannot prove with a
    committed write: a stale local view is not enough (DESIGN rule 2)."""

    async def ensure_peer_cannot_write(self, request: FenceRequest) -> FenceAnswer:
        """Make sure `request.peer` cannot write to `request.resource` any more: commit "peer
        outdated" (ReplicaOutdated) as the guest's owner, or find the peer's node committed as
        fenced. PEER_PRIMARY when the committed state says the peer owns the guest."""
        ...

    async def peer_may_write_again(self, request: FenceRequest) -> FenceAnswer:
        """The peer resynchronised (unfence-peer): commit ReplicaUpToDate. UNFENCED or a
        failure verdict."""
        ...


class FenceServer:
    """Unix-socket server for the handler, in the daemon's event loop.

    The socket is created mode 0600 in a 0700 directory and a connecting process must run
    as root or as this process's user (SO_PEERCRED): DRBD runs its handlers as root."""

    def __init__(
        self, path: str | Path, authority: FenceAuthority, request_timeout_s: float = 30.0
    ) -> None:
        self.path = Path(path)
        self._authority = authority
        self._timeout_s = request_timeout_s
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            answer = await self._answer(reader, writer)
            writer.write(answer.to_json())
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.warning("drbd fence handler went away: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> FenceAnswer:
        uid = _peer_uid(writer)
        if uid is not None and uid not in (0, os.getuid()):
            return FenceAnswer(Verdict.REFUSED, f"uid {uid} may not ask for fencing")
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\n"), 5.0)
            request = FenceRequest.from_json(raw)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            return FenceAnswer(Verdict.ERROR, f"no request: {type(exc).__name__}")
        except ProtocolError as exc:
            return FenceAnswer(Verdict.ERROR, str(exc))
        log.info("drbd %s %s peer=%s: asked", request.op, request.resource, request.peer)
        try:
            if request.op is Op.FENCE_PEER:
                call = self._authority.ensure_peer_cannot_write(request)
            else:
                call = self._authority.peer_may_write_again(request)
            answer = await asyncio.wait_for(call, self._timeout_s)
        except TimeoutError:
            answer = FenceAnswer(Verdict.NO_MAJORITY, f"no decision in {self._timeout_s}s")
        except Exception as exc:  # A bug in the authority: never a success, and say so.
            log.exception("drbd %s %s: the fence authority failed", request.op, request.resource)
            answer = FenceAnswer(Verdict.ERROR, f"agent error: {type(exc).__name__}: {exc}")
        log.info(
            "drbd %s %s peer=%s: %s %s",
            request.op,
            request.resource,
            request.peer,
            answer.verdict,
            answer.detail,
        )
        return answer


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


# --- the handler (what DRBD runs) ------------------------------------------------------------


def ask(path: str, request: FenceRequest, timeout_s: float) -> FenceAnswer:
    """One request/answer over the socket; raises OSError or ProtocolError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(path)
        s.sendall(request.to_json())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_MESSAGE_BYTES:
                raise ProtocolError("answer too long")
        if not buf:
            raise ProtocolError("the agent closed the connection without an answer")
        return FenceAnswer.from_json(buf)


def request_from_env(op: Op, env: Mapping[str, str], resource: str | None) -> FenceRequest:
    """DRBD passes DRBD_RESOURCE and DRBD_PEER (8.4 and 9), DRBD_PEER_ADDRESS, DRBD_MINOR,
    DRBD_VOLUME and (9 only) DRBD_PEER_NODE_ID in the handler's environment."""
    res = resource or env.get("DRBD_RESOURCE", "")
    if not res:
        raise ValueError("no resource: DRBD_RESOURCE is not set and none was given")
    return FenceRequest(
        op,
        res,
        env.get("DRBD_PEER", ""),
        peer_address=env.get("DRBD_PEER_ADDRESS") or None,
        peer_node_id=env.get("DRBD_PEER_NODE_ID") or None,
        minor=env.get("DRBD_MINOR") or None,
        volume=env.get("DRBD_VOLUME") or None,
    )


def run_handler(
    op: Op,
    request: FenceRequest,
    path: str,
    timeout_s: float,
    retry_s: float = 1.0,
) -> tuple[int, str]:
    """Ask the agent until it gives a definite answer or `timeout_s` passes.
    Returns (exit status, one line for the log)."""
    deadline = time.monotonic() + timeout_s
    last = "no attempt"
    while True:
        left = deadline - time.monotonic()
        try:
            answer = ask(path, request, max(left, 0.5))
        except (OSError, ProtocolError) as exc:
            last = f"agent not reachable at {path}: {exc}"
        else:
            if answer.verdict not in RETRY_VERDICTS:
                code = exit_code(op, answer.verdict)
                return code, f"{answer.verdict}: {answer.detail}"
            last = f"{answer.verdict}: {answer.detail}"
        if time.monotonic() + retry_s >= deadline:
            return EXIT_FAILED, f"gave up after {timeout_s}s: {last}"
        time.sleep(retry_s)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("op", choices=[o.value for o in Op], help="what DRBD called the handler for")
    p.add_argument("resource", nargs="?", help="DRBD resource (default: $DRBD_RESOURCE)")
    p.add_argument(
        "--socket",
        default=os.environ.get(SOCKET_ENV, DEFAULT_SOCKET),
        help=f"the agent's fence socket (default ${SOCKET_ENV} or {DEFAULT_SOCKET})",
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=60.0,
        help="give up (exit 1, I/O stays frozen) after this long without a definite answer",
    )


def run_from_args(args: argparse.Namespace) -> int:
    op = Op(args.op)
    try:
        request = request_from_env(op, os.environ, args.resource)
    except ValueError as exc:
        print(f"haagent drbd {op}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    code, line = run_handler(op, request, args.socket, args.timeout_s)
    print(
        f"haagent drbd {op} {request.resource} peer={request.peer or '?'}: exit {code}: {line}",
        file=sys.stderr,
    )
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m haagent.resources.drbd_fence fence-peer|unfence-peer [RESOURCE]`: the same
    handler as `haagent drbd ...`, without importing the CLI (quicker to start while DRBD
    holds I/O frozen)."""
    p = argparse.ArgumentParser(prog="haagent drbd", description="DRBD fence-peer handler")
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
