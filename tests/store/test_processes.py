"""Several real processes on one store: one owner per key, one window for all."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import midvary
from midvary.testing import FakeProvider

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


async def run_keyed_workers(
    fake: FakeProvider, where: str, jobs: list[str], *, processes: int, env: dict[str, str]
) -> list[list[dict[str, object]]]:
    """Start ``processes`` keyed workers on the same jobs at once; their JSON lines."""
    environment = {
        **os.environ,
        "MIDVARY_BASE_URL": fake.base_url,
        "MIDVARY_API_KEY": fake.api_key,
        **env,
    }
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.campaigns.keyed_worker",
            where,
            *jobs,
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    lines = []
    for proc in procs:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert proc.returncode == 0, err.decode()
        lines.append([json.loads(line) for line in out.decode().splitlines()])
    return lines


async def test_four_processes_submit_forty_keys_once(
    where: str, namespace: str, fake_provider: FakeProvider
) -> None:
    """4 worker processes given the same 40 keyed jobs: 40 tasks billed, no duplicate."""
    jobs = [f"order-{i}=parent-{i // 4}:{i % 4}" for i in range(40)]
    results = await run_keyed_workers(
        fake_provider, where, jobs, processes=PROCESSES,
        env={"MIDVARY_TEST_NAMESPACE": namespace},
    )  # fmt: skip
    stats = fake_provider.stats
    assert stats.tasks_created == 40
    assert stats.duplicate_submissions == 0
    task_ids: dict[object, set[object]] = {}
    for lines in results:
        done = [line for line in lines if "done" in line]
        assert len(done) == 40
        assert all(line["error"] is None for line in done)
        for line in done:
            task_ids.setdefault(line["done"], set()).add(line["task_id"])
    assert all(len(ids) == 1 for ids in task_ids.values())
    assert len(task_ids) == 40


async def test_stores_opening_a_new_sqlite_file_at_once_all_open(tmp_path: Path) -> None:
    """Two SQLiteStores creating the same new file at once both open (WAL switch waited for)."""
    for attempt in range(40):
        path = tmp_path / f"new-{attempt}.sqlite"
        stores = [midvary.SQLiteStore(path, busy_timeout=10.0) for _ in range(2)]
        try:
            await asyncio.gather(*(store.open() for store in stores))
        finally:
            for store in stores:
                await store.close()
