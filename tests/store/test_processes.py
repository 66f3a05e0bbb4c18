"""Several real processes on one store: one owner per key, one window for all."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from .redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4


def run_workers(*args: str) -> list[object]:
    """Start PROCESSES workers at once with ``args``; wait for all; their JSON results."""
    procs = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "tests.store.worker", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(PROCESSES)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))
    return results


@pytest.fixture(params=["sqlite", "redis"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the workers' store is: a SQLite file, or a real Redis server's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "shared.sqlite")
    server: RedisServer = request.getfixturevalue("redis_session_server")
    return server.url


def test_each_key_has_exactly_one_owner(where: str, namespace: str) -> None:
    """Processes claiming the same 20 keys at once: exactly one CLAIMED per key, others BUSY."""
    results = run_workers("claims", where, namespace, "20")
    for i in range(20):
        states = Counter(result[f"k{i}"] for result in results)  # type: ignore[index]
        assert states == {"CLAIMED": 1, "BUSY": PROCESSES - 1}, (i, states)


def test_window_holds_across_processes(where: str, namespace: str) -> None:
    """Processes sharing a (4, 0.3 s) window: no 5 of the store's stamps within 0.3 s."""
    count, window, per_process = 4, 0.3, 4
    results = run_workers("slots", where, namespace, str(count), str(window), str(per_process))
    stamps = sorted(s for result in results for s in result)  # type: ignore[attr-defined]
    assert len(stamps) == PROCESSES * per_process
    gaps = [stamps[i + count] - stamps[i] for i in range(len(stamps) - count)]
    assert min(gaps) >= window - 1e-6
