"""``midvary fake-server`` that cannot start says so in one line, and its help is plain text."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from midvary._cli import main


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port some other socket is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_port_in_use_is_one_line_and_exit_2(
    busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """--port of a port in use: exit 2, one line on stderr naming the port, no traceback."""
    assert main(["fake-server", "--port", str(busy_port)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("fake-server: cannot listen on 127.0.0.1 port")
    assert str(busy_port) in line
    assert "--port 0" in line


def test_a_host_that_cannot_be_bound_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--host of an address this machine does not have: exit 2, one line, no traceback."""
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never a local address, and no DNS lookup.
    assert main(["fake-server", "--host", "192.0.2.1"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("fake-server: cannot listen on 192.0.2.1")
    assert "Traceback" not in line


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    """fake-server --help shows no reStructuredText markup (``literals``, :class: roles)."""
    assert main(["fake-server", "--help"]) == 0
    out = capsys.readouterr().out
    assert "export MIDVARY_BASE_URL" in out
    assert "``" not in out
    assert ":class:" not in out
