"""The sd_notify client against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from haagent.fencing.sdnotify import SystemdNotifier


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        sock.settimeout(5.0)
        yield sock, path
    finally:
        sock.close()


def _receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_notifications_arrive(
    systemd_socket: tuple[socket.socket, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = systemd_socket
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = SystemdNotifier.from_env()
    try:
        assert notifier.enabled
        assert notifier.watchdog_interval_s == 5.0

        assert notifier.ready()
        assert _receive(sock) == "READY=1"
        assert notifier.watchdog()
        assert _receive(sock) == "WATCHDOG=1"
        assert notifier.status("3 guests running\non node1")
        assert _receive(sock) == "STATUS=3 guests running on node1"
        assert notifier.stopping()
        assert _receive(sock) == "STOPPING=1"
    finally:
        notifier.close()


def test_abstract_socket_name(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"haagent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = SystemdNotifier.from_env()
        try:
            assert notifier.ready()
            assert _receive(sock) == "READY=1"
        finally:
            notifier.close()


def test_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    notifier = SystemdNotifier.from_env()
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.status("x")
    assert not notifier.stopping()


def test_watchdog_meant_for_another_process_is_ignored(
    systemd_socket: tuple[socket.socket, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = systemd_socket
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert SystemdNotifier.from_env().watchdog_interval_s is None
    monkeypatch.delenv("WATCHDOG_PID")
    assert SystemdNotifier.from_env().watchdog_interval_s == 5.0
    monkeypatch.setenv("WATCHDOG_USEC", "garbage")
    assert SystemdNotifier.from_env().watchdog_interval_s is None


def test_send_errors_are_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    notifier = SystemdNotifier.from_env()
    try:
        assert notifier.enabled
        assert not notifier.ready()
    finally:
        notifier.close()


def test_a_full_socket_never_blocks(
    systemd_socket: tuple[socket.socket, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nobody reads: the receive queue fills up (net.unix.max_dgram_qlen) and sending must fail
    # at once instead of blocking the daemon's event loop.
    _, path = systemd_socket
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    notifier = SystemdNotifier.from_env()
    try:
        results = [notifier.watchdog() for _ in range(10_000)]
        assert results[0]
        assert not all(results)
    finally:
        notifier.close()
