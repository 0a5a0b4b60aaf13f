#!/usr/bin/python3
"""fence_on_holder: run a fence agent on another host (a RAID1 leg's holder) over ssh.

Why: a storage fence such as fence_nbd_leg must run where the NBD server runs (the leg's
holder), while haagent runs a fence device on the node that fences. This wrapper is a fence
agent with the stock interface (no arguments, `key=value` lines on stdin, the answer in the exit
status: 0 = success, and for `status` 0 = ON, 2 = OFF; 1 = failure) that runs the action of
the agent installed on the holder through `ssh` and passes its answer back. Standard library
and OpenSSH's client only.

Parameters (the `ssh_*` and `remote_agent` ones are the wrapper's; every other line, the
action included, goes unchanged to the remote agent's stdin):
    action           off | on | status | monitor | metadata (metadata answers here, no ssh)
    ssh_host         the holder, as ssh reaches it (host name or address)
    ssh_user         the user to log in as on the holder
    ssh_key          the private key file (IdentitiesOnly: no agent, no other key)
    ssh_known_hosts  a known_hosts file holding the holder's host key: the key is checked
                     strictly (a fence must not report success on behalf of an impostor)
    ssh_port         optional, 22 by default
    ssh_timeout      optional, seconds for the whole run (connect included), 60 by default
    remote_agent     the agent's absolute path on the holder, e.g.
                     /opt/haagent/resources/fence_nbd_leg.py

Exit status: the remote agent's, when it ran (so `status` tells ON from OFF exactly as the
remote agent does). Whenever ssh itself failed (no route, refused, unknown or changed host key,
key refused, timeout: ssh exits 255, or the wrapper killed it) the wrapper exits 1 with the
reason on stderr, never 0 or 2: an unreachable holder is not evidence that the node is cut off.
ssh reads no config file (`-F none`) and never asks a question (`BatchMode=yes`), so what a
fencing node's `~/.ssh/config` says cannot change what a fence does.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterable

METADATA = """<?xml version="1.0" ?>
<resource-agent name="fence_on_holder" shortdesc="Run a fence agent on another host over ssh">
<longdesc>Runs the action of a fence agent installed on another host (such as fence_nbd_leg
on a RAID1 leg's holder) over ssh; every parameter but the ssh_* ones and remote_agent is
passed to it on stdin. Its exit status is the remote agent's; any ssh failure is a failure.
</longdesc>
<parameters>
<parameter name="action" unique="1" required="1"><content type="string" default="off"/>
<shortdesc lang="en">off, on, status, monitor or metadata</shortdesc></parameter>
<parameter name="ssh_host" unique="0" required="1"><content type="string"/>
<shortdesc lang="en">the host that runs the agent</shortdesc></parameter>
<parameter name="ssh_user" unique="0" required="1"><content type="string"/>
<shortdesc lang="en">user on that host</shortdesc></parameter>
<parameter name="ssh_key" unique="0" required="1"><content type="string"/>
<shortdesc lang="en">private key file</shortdesc></parameter>
<parameter name="ssh_known_hosts" unique="0" required="1"><content type="string"/>
<shortdesc lang="en">known_hosts file with that host's key</shortdesc></parameter>
<parameter name="ssh_port" unique="0" required="0"><content type="integer" default="22"/>
<shortdesc lang="en">ssh port</shortdesc></parameter>
<parameter name="ssh_timeout" unique="0" required="0"><content type="second" default="60"/>
<shortdesc lang="en">seconds for the whole remote run</shortdesc></parameter>
<parameter name="remote_agent" unique="0" required="1"><content type="string"/>
<shortdesc lang="en">absolute path of the agent on that host</shortdesc></parameter>
</parameters>
<actions><action name="off"/><action name="on"/><action name="status"/><action name="monitor"/>
<action name="metadata"/></actions>
</resource-agent>
"""

EXIT_OK, EXIT_FAIL = 0, 1
SSH_FAILED = 255  # what ssh exits with for its own errors
ACTIONS = ("off", "on", "status", "monitor")
REQUIRED = ("ssh_host", "ssh_user", "ssh_key", "ssh_known_hosts", "remote_agent")


class RefusedError(Exception):
    """The action cannot be run (the message says why)."""


def read_params(lines: Iterable[str]) -> dict[str, str]:
    """The stdin protocol: `key=value` lines; blank lines and `#` comments are skipped."""
    params: dict[str, str] = {}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise RefusedError(f"bad parameter line {line!r} (expected key=value)")
        params[key.strip()] = value.strip()
    return params


def _number(params: dict[str, str], key: str, default: float, low: float, high: float) -> float:
    text = params.get(key, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise RefusedError(f"{key}={text!r} is not a number") from None
    if not low <= value <= high:
        raise RefusedError(f"{key}={text} is out of range ({low:g}-{high:g})")
    return value


def ssh_command(params: dict[str, str]) -> tuple[list[str], float]:
    """The ssh command line and the run's timeout in seconds. Raises RefusedError for a
    missing or malformed parameter."""
    missing = [key for key in REQUIRED if not params.get(key)]
    if missing:
        raise RefusedError(f"missing parameter(s): {', '.join(missing)}")
    if not params["remote_agent"].startswith("/"):
        raise RefusedError(f"remote_agent={params['remote_agent']!r}: give an absolute path")
    for key in ("ssh_host", "ssh_user"):
        if params[key].startswith("-") or not params[key].isprintable() or " " in params[key]:
            raise RefusedError(f"{key}={params[key]!r}: not a plain host or user name")
    port = int(_number(params, "ssh_port", 22, 1, 65535))
    timeout_s = _number(params, "ssh_timeout", 60.0, 1.0, 3600.0)
    command = [
        "ssh",
        "-F", "none",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={params['ssh_known_hosts']}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=yes",
        "-o", f"ConnectTimeout={max(1, int(timeout_s / 2))}",
        "-o", "ServerAliveInterval=5",
        "-o", "ServerAliveCountMax=2",
        "-i", params["ssh_key"],
        "-p", str(port),
        "-l", params["ssh_user"],
        "--", params["ssh_host"],
        shlex.quote(params["remote_agent"]),
    ]  # fmt: skip
    return command, timeout_s


def run(params: dict[str, str]) -> int:
    """Run the action on the holder; the remote agent's exit status, or EXIT_FAIL."""
    action = params.get("action", "off")
    if action not in ACTIONS:
        raise RefusedError(f"unsupported action {action!r} (off, on, status, monitor, metadata)")
    command, timeout_s = ssh_command(params)
    remote = {k: v for k, v in params.items() if k not in REQUIRED and not k.startswith("ssh_")}
    remote["action"] = action
    stdin = "".join(f"{k}={v}\n" for k, v in remote.items())
    where = f"{params['ssh_user']}@{params['ssh_host']}"
    try:
        done = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise RefusedError(f"{action} on {where}: no answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise RefusedError(f"cannot run ssh: {exc}") from None
    sys.stdout.write(done.stdout)
    if done.returncode == SSH_FAILED:
        why = done.stderr.strip().splitlines()
        raise RefusedError(
            f"{action} on {where}: ssh failed: {why[-1] if why else 'exit status 255'}"
        )
    sys.stderr.write(done.stderr)
    if done.returncode not in (0, 1, 2):
        # 126/127: the shell could not run the agent; anything else is no agent's answer.
        raise RefusedError(
            f"{action} on {where}: {params['remote_agent']} exited {done.returncode}"
        )
    return done.returncode


def main(argv: list[str]) -> int:
    try:
        if argv[1:] in (["-o", "metadata"], ["--action=metadata"]):
            params = {"action": "metadata"}
        else:
            params = read_params(sys.stdin)
        if params.get("action", "off") == "metadata":
            sys.stdout.write(METADATA)
            return EXIT_OK
        return run(params)
    except RefusedError as exc:
        print(f"fence_on_holder: {exc}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main(sys.argv))
