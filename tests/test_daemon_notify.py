"""systemd notify over real AF_UNIX datagram sockets (a path and an abstract name)."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaylee_sync.daemon.notify import Notifier


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer than that.
    with tempfile.TemporaryDirectory(prefix="ks-") as name:
        yield Path(name)


@pytest.fixture
def systemd(short_dir: Path) -> Iterator[tuple[str, socket.socket]]:
    """(NOTIFY_SOCKET value, the socket systemd would read) for a socket file."""
    path = str(short_dir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2)
        yield path, sock


@pytest.fixture
def abstract_systemd() -> Iterator[tuple[str, socket.socket]]:
    name = f"kaylee-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        yield "@" + name, sock


def test_ready_sends_ready_and_the_status(systemd: tuple[str, socket.socket]) -> None:
    address, sock = systemd
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready("waiting for leadership")
    assert sock.recv(4096) == b"READY=1\nSTATUS=waiting for leadership"
    assert notifier.ready()
    assert sock.recv(4096) == b"READY=1"


def test_status_watchdog_and_stopping(systemd: tuple[str, socket.socket]) -> None:
    address, sock = systemd
    notifier = Notifier({"NOTIFY_SOCKET": address})
    notifier.status("leader; synced 0123abcd")
    notifier.watchdog()
    notifier.stopping()
    assert [sock.recv(4096) for _ in range(3)] == [
        b"STATUS=leader; synced 0123abcd",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]


def test_an_abstract_socket_name_is_reached(abstract_systemd: tuple[str, socket.socket]) -> None:
    address, sock = abstract_systemd
    assert Notifier({"NOTIFY_SOCKET": address}).ready("up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_a_status_cannot_smuggle_another_assignment(systemd: tuple[str, socket.socket]) -> None:
    address, sock = systemd
    Notifier({"NOTIFY_SOCKET": address}).status("failed:\nREADY=1\r\nMAINPID=1")
    assert sock.recv(4096) == b"STATUS=failed: READY=1 MAINPID=1"


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    assert notifier.watchdog_interval is None


def test_by_default_the_process_environment_is_read(
    systemd: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, sock = systemd
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    assert notifier.watchdog_interval == 2.0
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_a_socket_nobody_listens_on_is_logged_once_and_never_raises(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(short_dir / "gone")})
    with caplog.at_level(logging.DEBUG, logger="kaylee_sync.daemon.notify"):
        assert not notifier.ready("x")
        assert not notifier.watchdog()
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING, logging.DEBUG]


def test_a_notify_socket_that_is_not_a_unix_path_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="kaylee_sync.daemon.notify"):
        notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "not a unix socket path" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # someone else's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_ping_period_is_half_of_watchdog_usec(
    env: dict[str, str], expected: float | None
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", **env}, pid=4242)
    assert notifier.watchdog_interval == expected


def test_no_watchdog_without_a_notify_socket() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval is None


def test_a_service_manager_that_stops_reading_does_not_block_us(
    systemd: tuple[str, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    address, sock = systemd
    notifier = Notifier({"NOTIFY_SOCKET": address})
    # Nobody reads: the socket's queue fills, and then each send gives up after its timeout.
    sent = 0
    while notifier.watchdog():
        sent += 1
        assert sent < 100_000, "the queue never filled"
    assert "cannot notify systemd" in caplog.text
    assert sock.recv(4096) == b"WATCHDOG=1"  # what was queued is still there
