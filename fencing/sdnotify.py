"""A minimal sd_notify client (systemd `Type=notify` and `WatchdogSec=`), without dependencies.

systemd hands a service the address of its notification socket in NOTIFY_SOCKET (a path, or
an abstract name written with a leading '@'), and, when `WatchdogSec=` is set, the watchdog
period in WATCHDOG_USEC (with WATCHDOG_PID naming the process it is meant for). The service
sends datagrams of newline-separated `KEY=value` lines: READY=1, STATUS=..., WATCHDOG=1,
STOPPING=1.

Contracts: without NOTIFY_SOCKET every method is a no-op, so the daemon calls them
unconditionally. Sending never raises and never blocks (the socket is non-blocking): a lost
notification is logged at debug level, and systemd's own timeouts deal with the consequences.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends notifications to `address` (a path, or an abstract name starting with NUL).

    `watchdog_usec` is systemd's watchdog period for this process, or None when there is no
    watchdog for it.
    """

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """A notifier configured from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.

        An unusable NOTIFY_SOCKET (empty, or a kind this client does not speak, such as
        systemd 254's `vsock:`) gives a no-op notifier. WATCHDOG_USEC counts only when it is a
        positive integer and WATCHDOG_PID is unset or names this process: a child that
        inherited its parent's environment must not pet its parent's watchdog.
        """
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address: str | None
        if raw.startswith("@"):
            address = "\0" + raw[1:]
        elif raw.startswith("/"):
            address = raw
        else:
            if raw:
                log.debug("sd_notify: unsupported NOTIFY_SOCKET %r; notifications off", raw)
            address = None
        return cls(address, _watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        """True when notifications go somewhere."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half of systemd's period (systemd's own advice), or
        None when systemd watches nothing for this process."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def ready(self) -> bool:
        """Startup finished (READY=1)."""
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """A one-line status for `systemctl status` (line breaks become blanks)."""
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """Pet systemd's per-service watchdog (WATCHDOG=1)."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """A clean shutdown has begun (STOPPING=1)."""
        return self.notify("STOPPING=1")

    def notify(self, *fields: str) -> bool:
        """Send `fields` as one datagram. True if it was sent; False when disabled or on any
        send error (logged at debug level). Never raises."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(message, self._address)
        except OSError as exc:
            log.debug("sd_notify: cannot send %r: %s", message, exc)
            return False
        return True

    def close(self) -> None:
        """Release the socket. Sending again later reopens it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec
