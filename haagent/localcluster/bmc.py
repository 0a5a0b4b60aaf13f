"""A simulated BMC: OpenIPMI's `ipmi_sim` on loopback, with power control run by chassis.sh.

One `SimulatedBmc` is one node's IPMI-over-LAN controller. The stock `fence_ipmilan` (and
`ipmitool`) talk to it exactly as to hardware. Powering it off runs `<workdir>/<host>.hook
power 0` (see chassis.sh), which the local demo cluster uses to SIGKILL that node's agent and
tests use to kill a victim process. Always use `lanplus=1` and `cipher=3` (`-C 3`): without a
fixed cipher suite ipmitool first asks for the channel's cipher suites, which ipmi_sim does not
answer, and every call waits for a timeout (14 s for a status, 45 s for an off).

Importing this module has no side effects; `start()` spawns the process and `stop()` kills
exactly that process (by the pid it started), never anything found by name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from haagent.localcluster.ports import port_free

CHASSIS_SCRIPT = Path(__file__).with_name("chassis.sh")

_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# lan.conf quotes strings with '"' and ipmi_sim splits chassis_control on blanks.
_UNSAFE_PATH_CHARS = re.compile(r"[\s\"'\\]")

_EMU = """\
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
"""


class BmcError(RuntimeError):
    """The simulated BMC could not be started (missing ipmi_sim, port taken, no answer)."""


class SimulatedBmc:
    """ipmi_sim serving IPMI 2.0 (lanplus) on `address:port` for the simulated node `host`.

    Files under `workdir`: lan.conf, `<host>.emu`, `state/` (ipmi_sim's persisted users and
    SDRs; wiped at every start, because persisted users would otherwise override lan.conf's),
    `<host>.power` (1 or 0), `<host>.events` (one line per power change) and ipmi_sim.log.
    `hook_path`, when given, is linked as `<workdir>/<host>.hook`; chassis.sh runs it with
    `power 0|1`, `reset 1`, ... before recording the new state, and a failing hook makes the
    power change fail, so it must be idempotent.
    """

    def __init__(
        self,
        workdir: str | Path,
        host: str,
        port: int,
        hook_path: str | Path | None = None,
        *,
        address: str = "127.0.0.1",
        username: str = "admin",
        password: str = "secret",
        netns: str | None = None,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        if not _HOST_RE.match(host):
            raise ValueError(f"invalid host name {host!r}")
        for path in (self.workdir, CHASSIS_SCRIPT):
            if _UNSAFE_PATH_CHARS.search(str(path)):
                raise ValueError(f"path {str(path)!r} has blanks or quotes; ipmi_sim cannot")
        for name, value in (("username", username), ("password", password)):
            if _UNSAFE_PATH_CHARS.search(value) or not value:
                raise ValueError(f"{name} must be non-empty, without blanks or quotes")
        self.host = host
        self.port = port
        self.address = address
        self.username = username
        self.password = password
        self.hook_path = Path(hook_path).absolute() if hook_path is not None else None
        # Run ipmi_sim (and our own ipmitool calls) inside this network namespace: `address`
        # then exists only there (tests put BMCs on a lab switch that host faults cannot cut).
        self.netns = netns
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def power_file(self) -> Path:
        return self.workdir / f"{self.host}.power"

    @property
    def events_file(self) -> Path:
        return self.workdir / f"{self.host}.events"

    @property
    def hook_link(self) -> Path:
        return self.workdir / f"{self.host}.hook"

    @property
    def log_file(self) -> Path:
        return self.workdir / "ipmi_sim.log"

    @property
    def pid(self) -> int | None:
        """The pid of the running ipmi_sim, or None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def power(self) -> int | None:
        """The simulated power state recorded by chassis.sh (1 on, 0 off), None before the
        first query."""
        try:
            return int(self.power_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def fence_params(self) -> dict[str, str]:
        """stdin parameters for `fence_ipmilan` against this BMC."""
        return {
            "ip": self.address,
            "ipport": str(self.port),
            "username": self.username,
            "password": self.password,
            "lanplus": "1",
            "cipher": "3",
        }

    def _in_netns(self, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *command] if self.netns else command

    def _ipmitool(self, args: list[str], timeout_s: float) -> tuple[bool, str]:
        """Run ipmitool against this BMC (from its namespace): (succeeded, its output)."""
        ipmitool = shutil.which("ipmitool")
        if ipmitool is None:
            raise BmcError("ipmitool not found (Debian package ipmitool)")
        # -E takes the password from IPMI_PASSWORD, keeping it off the command line.
        command = [
            ipmitool, "-I", "lanplus", "-C", "3", "-H", self.address, "-p", str(self.port),
            "-U", self.username, "-E", *args,
        ]  # fmt: skip
        try:
            done = subprocess.run(
                self._in_netns(command),
                env={**os.environ, "IPMI_PASSWORD": self.password},
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False, "ipmitool timed out"
        return done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace").strip()

    def chassis(self, *args: str, timeout_s: float = 30.0) -> str:
        """Run `ipmitool ... chassis ARGS` against this BMC, as an admin would:
        `chassis("power", "on")`. Raises BmcError when ipmitool fails."""
        ok, output = self._ipmitool(["chassis", *args], timeout_s)
        if not ok:
            raise BmcError(f"ipmitool chassis {' '.join(args)}: {output}")
        return output

    def write_config(self) -> None:
        """Write lan.conf and the emu file, wipe the state dir and link the hook."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = self.workdir / "state"
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir()
        (self.workdir / "lan.conf").write_text(
            f'name "{self.host}bmc"\n'
            "set_working_mc 0x20\n"
            "  startlan 1\n"
            f"    addr {self.address} {self.port}\n"
            "    priv_limit admin\n"
            "    allowed_auths_callback none md2 md5 straight\n"
            "    allowed_auths_user none md2 md5 straight\n"
            "    allowed_auths_operator none md2 md5 straight\n"
            "    allowed_auths_admin none md2 md5 straight\n"
            "    guid a123456789abcdefa123456789abcd01\n"
            "  endlan\n"
            # /bin/sh runs the script, so an install that lost its exec bit still works.
            f'  chassis_control "/bin/sh {CHASSIS_SCRIPT} {self.workdir} {self.host}"\n'
            f'  user 2 true "{self.username}" "{self.password}" admin 10 none md2 md5 straight\n'
        )
        (self.workdir / f"{self.host}.emu").write_text(_EMU)
        if self.hook_path is not None and self.hook_path != self.hook_link:
            self.hook_link.unlink(missing_ok=True)
            self.hook_link.symlink_to(self.hook_path)

    def start(self, timeout_s: float = 10.0) -> None:
        """Start ipmi_sim and return once it answers an IPMI `chassis power status`.

        Raises BmcError (after stopping the process) if ipmi_sim is missing, exits, or does
        not answer within `timeout_s`.
        """
        if self._proc is not None:
            raise RuntimeError(f"BMC {self.host} already started")
        executable = shutil.which("ipmi_sim")
        if executable is None:
            raise BmcError("ipmi_sim not found (Debian package openipmi)")
        self.write_config()
        with self.log_file.open("ab") as log_file:
            self._proc = subprocess.Popen(
                self._in_netns(
                    [
                        executable,
                        "-c",
                        str(self.workdir / "lan.conf"),
                        "-f",
                        str(self.workdir / f"{self.host}.emu"),
                        "-s",
                        str(self.workdir / "state"),
                        "-n",
                    ]
                ),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise BmcError(
                    f"ipmi_sim for {self.host} exited with {self._proc.returncode}: "
                    f"{self._log_tail()}"
                )
            # Probe with ipmitool only once the port is bound: before that each probe would
            # wait for its own retransmission timeout. (Inside a namespace the port cannot be
            # checked from here: probe directly.)
            if self.netns or not port_free(self.address, self.port, socket.SOCK_DGRAM):
                ok, last = self._probe(max(0.1, deadline - time.monotonic()))
                if ok:
                    return
            time.sleep(0.02)
        raise BmcError(
            f"ipmi_sim for {self.host} on {self.address}:{self.port} did not answer within"
            f" {timeout_s:g} s: {last}; log: {self._log_tail()}"
        )

    def _probe(self, timeout_s: float) -> tuple[bool, str]:
        return self._ipmitool(["-N", "1", "-R", "1", "chassis", "power", "status"], timeout_s)

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-500:].strip() or "(empty)"
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the ipmi_sim this object started (SIGTERM, then SIGKILL) and reap it.
        Idempotent; safe after a failed start."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # Until it is reaped, its pid (also its process group id) cannot be reused.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> SimulatedBmc:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
