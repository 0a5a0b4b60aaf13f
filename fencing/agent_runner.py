"""Run one stock fence-agents executable (fence_ipmilan, fence_redfish, fence_dummy, ...).

The agents are driven the way Pacemaker's fencer drives them: no command-line arguments, one
`key=value` line per parameter on stdin, plus `action=<action>`. The exit status carries the
answer (fence-agents convention):

* `status`: 0 = the target is powered ON, 2 = it is OFF, anything else = the agent failed;
* `off` (and `on`, `reboot`, `monitor`): 0 = success, anything else = failure.

Contracts of `AgentRunner.run`:

* It never raises for operating errors. A missing executable, an invalid parameter, a failure
  to spawn, a timeout or a bad exit status all come back as an `AgentResult`.
* It never leaves a child behind. The agent runs in its own session (so its process group
  holds it and whatever it spawns, e.g. `ipmitool`); on timeout or cancellation the whole group
  gets SIGKILL and the agent is reaped before `run` returns.
* It never puts a secret in a log line or in a result: values of parameters named like
  `*passw*` (and a few other obviously secret names, see `is_secret_param`) are replaced by
  `***`, both in logged parameters and wherever they appear in the agent's output. Agents do
  echo stdin lines back, e.g. "Parse error: Ignoring unknown option 'password=...'".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)

# Fence agents live in sbin directories, which a daemon's or a test's PATH may lack.
AGENT_DIRS = ("/usr/sbin", "/sbin")

REDACTED = "***"

# Parameter names (lower-cased) containing one of these are secrets. `passw` is the fence-agents
# spelling family (password, passwd, passwd_script); the others cover agents for clouds and
# IPMI's BMC key (hexadecimal_kg).
_SECRET_MARKERS = ("passw", "secret", "token", "access_key", "hexadecimal_kg")

# Keys the agents' stdin parser accepts: option names with '_' or '-'.
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_MAX_VALUE_CHARS = 4096

# The environment a daemon under systemd has; a fence agent must not inherit the right to talk
# to systemd on the daemon's behalf or the daemon's socket activation.
_DROPPED_ENV = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    # The agent's own Python environment: the stock agents are Python scripts that import
    # `fencing` from /usr/share/fence, and an agent started with its checkout on PYTHONPATH
    # made every one of them import this package instead and fail (no node could be fenced).
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
)

_DETAIL_MAX_CHARS = 240

# The agents prefix their log lines with a timestamp, which adds nothing to a detail string.
_TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+\s+")


class PowerState(StrEnum):
    """What a `status` call says about the target's power."""

    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"  # the agent failed, timed out or could not run: nothing is known


# fence-agents exit statuses.
EXIT_SUCCESS = 0
EXIT_STATUS_OFF = 2


def is_secret_param(key: str) -> bool:
    """True for parameter names whose values must never be logged or returned."""
    lowered = key.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


def redact_params(params: Mapping[str, str]) -> dict[str, str]:
    """A copy of `params` that is safe to log: secret values are replaced by `***`."""
    return {k: (REDACTED if is_secret_param(k) else v) for k, v in params.items()}


def redact_text(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every occurrence of every non-empty secret replaced by `***`.

    Longer secrets go first so that a secret containing a shorter one is replaced whole.
    """
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def resolve_agent(agent: str, path: str | None = None) -> str | None:
    """The absolute path of the executable for `agent`, or None if there is none.

    A bare name (`fence_ipmilan`) is looked up on `path` (default: $PATH) followed by
    /usr/sbin and /sbin. A name containing '/' is taken as a path and must be executable;
    that is how tests and sites run agents that are not installed system-wide.
    """
    if "/" in agent:
        if os.path.isfile(agent) and os.access(agent, os.X_OK):
            return os.path.abspath(agent)
        return None
    base = os.environ.get("PATH", "") if path is None else path
    dirs = [d for d in base.split(os.pathsep) if d]
    dirs += [d for d in AGENT_DIRS if d not in dirs]
    return shutil.which(agent, path=os.pathsep.join(dirs))


def agent_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a fence agent runs with: the daemon's, minus systemd's per-service
    variables and the daemon's own Python search path, plus PYTHONWARNINGS=ignore (the Python
    agents otherwise print a DeprecationWarning about the `pipes` module on every call) and
    the sbin directories on PATH (agents call helpers such as ipmitool by name)."""
    env = {k: v for k, v in (os.environ if base is None else base).items()}
    for key in _DROPPED_ENV:
        env.pop(key, None)
    env["PYTHONWARNINGS"] = "ignore"
    dirs = [d for d in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep) if d]
    dirs += [d for d in AGENT_DIRS if d not in dirs]
    env["PATH"] = os.pathsep.join(dirs)
    return env


def validate_params(action: str, params: Mapping[str, str]) -> str | None:
    """Why `params` cannot be sent over the stdin protocol, or None if they can.

    The one check of fence parameters: the runner makes it before every call, and the config
    loader makes it at check time, so a device that loads is never refused when its node has
    to be fenced. The agents read stdin line by line and strip each line, so a line break
    (or any other control character, or a Unicode line separator) in a value could smuggle in
    another parameter, and surrounding blanks would be lost silently. Names are matched in
    full. `action` is set by the runner, never by the params.
    """
    if not _KEY_RE.fullmatch(action):
        return f"invalid action {action!r}"
    for key, value in params.items():
        if not _KEY_RE.fullmatch(key):
            return f"invalid parameter name {key.encode('unicode_escape').decode()!r}"
        if key == "action":
            return "parameter 'action' is set by the runner, not by the device"
        shown = REDACTED if is_secret_param(key) else repr(value[:80])
        if any(not (c.isprintable() or c == " ") for c in value):
            return f"parameter {key!r} contains a line break or another control character: {shown}"
        if value != value.strip():
            return f"parameter {key!r} has leading or trailing blanks: {shown}"
        if len(value) > _MAX_VALUE_CHARS:
            return f"parameter {key!r} is longer than {_MAX_VALUE_CHARS} characters"
    return None


def stdin_payload(action: str, params: Mapping[str, str]) -> bytes:
    """The agent's stdin: `action=...` then one `key=value` line per parameter."""
    lines = [f"action={action}"] + [f"{k}={v}" for k, v in params.items()]
    return ("\n".join(lines) + "\n").encode()


@dataclass(frozen=True)
class AgentResult:
    """The outcome of one agent call. Secrets are already redacted from every field.

    `exit_code` is None when the agent never ran (`error` says why); negative when a signal
    ended it (as in `subprocess`). `timed_out` means the runner killed it.
    """

    agent: str
    action: str
    exit_code: int | None
    stdout_tail: str
    stderr_tail: str
    duration_s: float
    timed_out: bool = False
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        """Exit status 0 within the time limit (for `off`: the target was powered off)."""
        return self.error is None and not self.timed_out and self.exit_code == EXIT_SUCCESS

    @property
    def power(self) -> PowerState:
        """The power state a `status` call reported (0 = ON, 2 = OFF, anything else UNKNOWN).

        Meaningless for other actions: for them exit 2 is simply a failure.
        """
        if self.error is not None or self.timed_out:
            return PowerState.UNKNOWN
        if self.exit_code == EXIT_SUCCESS:
            return PowerState.ON
        if self.exit_code == EXIT_STATUS_OFF:
            return PowerState.OFF
        return PowerState.UNKNOWN

    def reason(self) -> str:
        """One short line for humans: why it failed, or how it ended."""
        if self.error is not None:
            return self.error
        if self.timed_out:
            return f"timed out after {self.duration_s:.2f} s (killed)"
        message = _last_message(self.stderr_tail) or _last_message(self.stdout_tail)
        code = f"exit {self.exit_code}"
        if self.exit_code is not None and self.exit_code < 0:
            code = f"killed by signal {-self.exit_code}"
        return f"{code}: {message}" if message else code


def _last_message(text: str) -> str:
    """The most telling line of an agent's output: the last line mentioning a failure or an
    error, else the last non-blank line, shortened to fit in a detail string."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    telling = [ln for ln in lines if "fail" in ln.lower() or "error" in ln.lower()]
    line = _TIMESTAMP_RE.sub("", (telling or lines)[-1])
    if len(line) > _DETAIL_MAX_CHARS:
        line = line[: _DETAIL_MAX_CHARS - 3] + "..."
    return line


class _Tail:
    """Keeps the last `limit` bytes of a stream."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(4096):
            self._buffer += chunk
            if len(self._buffer) > self._limit:
                del self._buffer[: len(self._buffer) - self._limit]

    def text(self, secrets: tuple[str, ...]) -> str:
        return redact_text(self._buffer.decode("utf-8", errors="replace"), secrets)


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group `pgid`; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class AgentRunner:
    """Runs fence agents; see the module docstring for the contracts.

    `search_path` replaces $PATH for finding agents (the sbin directories are always added).
    `tail_bytes` bounds how much of each output stream is kept. `reap_grace_s` bounds how long
    the runner waits for output pipes to close after the agent exited, and for a killed agent
    to be reaped.
    """

    def __init__(
        self,
        *,
        search_path: str | None = None,
        tail_bytes: int = 4096,
        reap_grace_s: float = 2.0,
    ) -> None:
        self._search_path = search_path
        self._tail_bytes = tail_bytes
        self._reap_grace_s = reap_grace_s

    async def run(
        self, agent: str, action: str, params: Mapping[str, str], timeout_s: float
    ) -> AgentResult:
        """Run `agent` with `action=<action>` and `params` on stdin; kill it after `timeout_s`.

        See the module docstring: never raises for operating errors, never leaves a child,
        never returns or logs a secret.
        """
        started = time.monotonic()
        secrets = tuple(v for k, v in params.items() if is_secret_param(k))

        def early(error: str, *, timed_out: bool = False) -> AgentResult:
            result = AgentResult(
                agent=agent,
                action=action,
                exit_code=None,
                stdout_tail="",
                stderr_tail="",
                duration_s=time.monotonic() - started,
                timed_out=timed_out,
                error=redact_text(error, secrets),
            )
            log.warning("fence agent %s %s not run: %s", agent, action, result.error)
            return result

        problem = validate_params(action, params)
        if problem is not None:
            return early(problem)
        executable = resolve_agent(agent, self._search_path)
        if executable is None:
            where = "an executable file" if "/" in agent else "on PATH, /usr/sbin or /sbin"
            return early(f"fence agent {agent!r} not found ({where})")
        if timeout_s <= 0:
            return early("no time left to run the agent", timed_out=True)

        log.debug(
            "fence agent %s action=%s params=%s timeout_s=%.2f",
            executable,
            action,
            redact_params(params),
            timeout_s,
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                executable,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=agent_environment(),
                start_new_session=True,
            )
        except OSError as exc:
            return early(f"cannot start {executable}: {exc.strerror or exc}")

        out = _Tail(self._tail_bytes)
        err = _Tail(self._tail_bytes)
        readers = [
            asyncio.create_task(out.drain(proc.stdout)),
            asyncio.create_task(err.drain(proc.stderr)),
        ]
        timed_out = False
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._feed(proc, stdin_payload(action, params))
                    await proc.wait()
            except TimeoutError:
                timed_out = True
        finally:
            # Reached on success, on timeout and on cancellation of the caller alike.
            if proc.returncode is None:
                # The agent has not been reaped, so its pid (= its group id) is still ours.
                _kill_group(proc.pid)
                try:
                    async with asyncio.timeout(self._reap_grace_s):
                        await proc.wait()
                except TimeoutError:
                    log.error("fence agent %s (pid %d) survived SIGKILL", agent, proc.pid)
            await self._close_readers(proc.pid, readers)

        result = AgentResult(
            agent=agent,
            action=action,
            exit_code=proc.returncode,
            stdout_tail=out.text(secrets),
            stderr_tail=err.text(secrets),
            duration_s=time.monotonic() - started,
            timed_out=timed_out,
        )
        log.debug(
            "fence agent %s %s: %s in %.2f s", agent, action, result.reason(), result.duration_s
        )
        return result

    @staticmethod
    async def _feed(proc: asyncio.subprocess.Process, payload: bytes) -> None:
        """Write the parameters and close stdin; an agent that exits without reading is fine
        (its exit status tells what happened)."""
        stdin = proc.stdin
        if stdin is None:
            return
        try:
            stdin.write(payload)
            await stdin.drain()
            stdin.close()
            await stdin.wait_closed()
        except (BrokenPipeError, ConnectionResetError):
            pass

    async def _close_readers(self, pgid: int, readers: list[asyncio.Task[None]]) -> None:
        """Wait for the output pipes to reach EOF.

        A pipe still open after the agent is gone means a descendant of the agent holds it.
        Such a descendant is in the agent's process group (agents do not start sessions of
        their own), and a group with a live member keeps its id from being reused, so killing
        the group then hits only the agent's leftovers.
        """
        _, pending = await asyncio.wait(readers, timeout=self._reap_grace_s)
        if pending:
            log.warning("fence agent group %d left a process holding its output; killing", pgid)
            _kill_group(pgid)
            _, pending = await asyncio.wait(pending, timeout=self._reap_grace_s)
        for task in pending:
            task.cancel()
        for task in readers:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
