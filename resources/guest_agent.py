"""Reading files inside a guest through qemu-guest-agent, over libvirt (blocking calls).

The guest-RAID1 adapter needs `/proc/mdstat` and a few sysfs files from inside a running guest.
qemu-guest-agent (the `qemu-ga` daemon on the guest's virtio-serial port
`org.qemu.guest_agent.0`) answers `guest-file-open`/`guest-file-read`/`guest-file-close`, which
libvirt forwards with `libvirt_qemu.qemuAgentCommand` (libvirt issues the agent's
`guest-sync` handshake itself). File commands are the narrowest interface that does the job:
they work with agents whose `--allow-rpcs`/`--block-rpcs` keep `guest-exec` off, as hardened
guests often do. `exec_in_guest` (guest-exec) exists for tests and tools that prepare a guest.

Every function here blocks; callers run them in a worker thread (see
haagent.resources.mirrors). A guest without a connected agent, an agent that does not answer
within `timeout_s` or an error answer becomes `GuestAgentError`; a file the guest does not
have becomes `GuestFileMissingError` (a member that md removed between two reads, for example).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import libvirt
import libvirt_qemu

__all__ = [
    "GuestAgentError",
    "GuestFileMissingError",
    "agent_command",
    "exec_in_guest",
    "read_file",
]

_CHUNK = 65536
_MAX_FILE_BYTES = 1 << 20  # /proc/mdstat of a few hundred arrays stays far below this


class GuestAgentError(RuntimeError):
    """The guest agent could not be reached, timed out, or answered with an error."""


class GuestFileMissingError(GuestAgentError):
    """The guest has no such file."""


def agent_command(dom: libvirt.virDomain, command: str, timeout_s: int, **arguments: Any) -> Any:
    """Run one agent command; return its `return` value. `timeout_s` >= 1 bounds the wait."""
    request: dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    try:
        answer = libvirt_qemu.qemuAgentCommand(dom, json.dumps(request), max(1, timeout_s), 0)
    except libvirt.libvirtError as exc:
        message = exc.get_error_message() or str(exc)
        if "No such file" in message:
            raise GuestFileMissingError(f"{command}: {message}") from exc
        raise GuestAgentError(f"{command}: {message}") from exc
    try:
        return json.loads(answer)["return"]
    except (ValueError, KeyError, TypeError) as exc:
        raise GuestAgentError(f"{command}: unreadable answer {answer[:200]!r}") from exc


def read_file(dom: libvirt.virDomain, path: str, timeout_s: int) -> str:
    """The whole text of `path` inside the guest (UTF-8, undecodable bytes replaced)."""
    handle = agent_command(dom, "guest-file-open", timeout_s, path=path, mode="r")
    if not isinstance(handle, int):
        raise GuestAgentError(f"guest-file-open {path}: handle {handle!r} is not a number")
    data = b""
    try:
        while True:
            chunk = agent_command(dom, "guest-file-read", timeout_s, handle=handle, count=_CHUNK)
            data += base64.b64decode(chunk.get("buf-b64", ""))
            if chunk.get("eof") or not chunk.get("count"):
                break
            if len(data) > _MAX_FILE_BYTES:
                raise GuestAgentError(f"{path}: longer than {_MAX_FILE_BYTES} bytes")
    finally:
        agent_command(dom, "guest-file-close", timeout_s, handle=handle)
    return data.decode(errors="replace")


def exec_in_guest(
    dom: libvirt.virDomain, argv: list[str], timeout_s: float, poll_s: float = 0.1
) -> tuple[int, str]:
    """Run `argv` inside the guest (guest-exec); return (exit status, stdout + stderr).

    Raises GuestAgentError if the command did not end within `timeout_s` (it is left running:
    the agent has no way to kill it) or ended by a signal.
    """
    started = agent_command(
        dom,
        "guest-exec",
        int(timeout_s) + 1,
        path=argv[0],
        arg=argv[1:],
        **{"capture-output": True},
    )
    pid = started["pid"]
    deadline = time.monotonic() + timeout_s
    while True:
        status = agent_command(dom, "guest-exec-status", int(timeout_s) + 1, pid=pid)
        if status.get("exited"):
            out = base64.b64decode(status.get("out-data", "")) + base64.b64decode(
                status.get("err-data", "")
            )
            if "exitcode" not in status:
                raise GuestAgentError(f"{argv!r} ended by signal {status.get('signal')}")
            return int(status["exitcode"]), out.decode(errors="replace")
        if time.monotonic() > deadline:
            raise GuestAgentError(f"{argv!r} did not end within {timeout_s} s")
        time.sleep(poll_s)
