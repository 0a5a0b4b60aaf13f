"""A private OpenSSH server on 127.0.0.1 for tests (Debian's openssh-server, not the system's).

It stands in for a remote host's sshd: its own host key, config, pid file and port, key-only
login for the user running the tests, no PAM. `close()` stops the sshd it started (by pid) and
its session children go with it; temp files live in the test's tmp dir.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.helpers.drbd_guest import free_port

SSHD = "/usr/sbin/sshd"
START_TIMEOUT_S = 20.0


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path.with_suffix(".pub").read_text().strip()


class SshServer:
    """`user`, `key` (client private key), `known_hosts` (holding this server's host key) and
    `port` are what a client needs."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "sshd"
        self.dir.mkdir(parents=True)
        os.chmod(self.dir, 0o700)
        self.port = free_port()
        self.user = getpass.getuser()
        host_pub = _keygen(self.dir / "host_key")
        self.key = self.dir / "client_key"
        client_pub = _keygen(self.key)
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text(client_pub + "\n")
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub}\n")
        self.log = self.dir / "sshd.log"
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.dir / 'host_key'}\n"
            f"PidFile {self.dir / 'sshd.pid'}\nAuthorizedKeysFile {self.authorized_keys}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUseDNS no\n"
            "LogLevel VERBOSE\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # sshd wants its privilege separation directory (systemd creates it on real hosts).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._greets():
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited {self.proc.returncode}: {self.log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"sshd not answering within {START_TIMEOUT_S} s")
            time.sleep(0.05)

    def _greets(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                return conn.recv(8).startswith(b"SSH-2.0")
        except OSError:
            return False

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None
