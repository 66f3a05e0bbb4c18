"""What a bulk run left on disk, read the way a person would check it with ``sqlite3``.

``midvary bulk`` keeps its jobs in an ``SQLiteStore`` beside the JOBS file
(``JOBS.store.sqlite``): a job's *run claim* ``bulk/<JOBS sha256>/<job key>`` holds its
result line once it finished, its *submission key* ``<JOBS sha256>/<job key>`` the steps of
its submission. :func:`job_rows` folds both into one row per job, in the words the results
file uses. :func:`write_old_journal` writes the journal an earlier midvary kept instead
(format ``midvary-bulk-journal/1``, the schema that midvary created, copied here on
purpose: it is the format being migrated).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from midvary._cli.jobs import read_jobs

#: A submission key's state, in the words of the results file (and of the old journal).
_STATES = {"claimed": "pending", "sending": "submitting", "done": "submitted"}


def store_path(jobs: Path) -> Path:
    """The default store of a JOBS file."""
    return jobs.with_name(jobs.name + ".store.sqlite")


def job_rows(path: Path) -> list[tuple[str, str, str | None]]:
    """``(job key, state, task id)`` of every job a bulk store knows; empty if not there yet.

    ``state``: ``pending`` (claimed, nothing sent), ``submitting`` (its POST may be in
    flight), ``submitted``, or a finished job's ``status`` (done, failed, uncertain).
    """
    if not path.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            # Unfinished keys, then finished ones (which keep only their task id).
            rows = db.execute(
                "SELECT key, state, task_id FROM midvary_keys "
                "UNION ALL SELECT key, 'done', task_id FROM midvary_done"
            ).fetchall()
    except sqlite3.Error:
        return []
    jobs: dict[str, tuple[str, str | None]] = {}
    finished: dict[str, tuple[str, str | None]] = {}
    for key, state, task in rows:
        if key.startswith("bulk/"):  # a run claim; a finished job's result line as its task
            job = key.split("/", 2)[2]
            if task:
                line = json.loads(task)
                own = line["vary_task_id"] if "vary_task_id" in line else line["task_id"]
                finished[job] = (line["status"], own)
            else:
                jobs.setdefault(job, ("pending", None))
        else:
            jobs[key.split("/", 1)[1]] = (_STATES.get(state, state), task)
    jobs.update(finished)
    return [(key, state, task) for key, (state, task) in jobs.items()]


def job_states(path: Path) -> dict[str, str]:
    """Job key -> state, from a bulk store (see :func:`job_rows`)."""
    return {key: state for key, state, _task in job_rows(path)}


def write_old_journal(jobs: Path, rows: Iterable[tuple[str, str, str | None, str | None]]) -> Path:
    """The journal an earlier midvary kept for ``jobs``: ``(key, state, task_id, result)``.

    Every other job of the file is pending, as that midvary registered them.
    """
    jobs_file = read_jobs(jobs)
    path = jobs.with_name(jobs.name + ".journal.sqlite")
    given = {key: (state, task, result) for key, state, task, result in rows}
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute(
            """CREATE TABLE jobs (
                key TEXT PRIMARY KEY,
                line INTEGER NOT NULL,
                content TEXT NOT NULL,
                state TEXT NOT NULL,
                task_id TEXT,
                result TEXT,
                posts INTEGER NOT NULL DEFAULT 0,
                updated REAL NOT NULL
            )"""
        )
        db.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [
                ("format", "midvary-bulk-journal/1"),
                ("jobs_file", jobs.name),
                ("jobs_sha256", jobs_file.sha256),
            ],
        )
        for job in jobs_file.jobs:
            state, task, result = given.pop(job.key, ("pending", None, None))
            db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job.key, job.line, job.content, state, task, result, 1, time.time()),
            )
    assert not given, f"no such jobs in {jobs}: {sorted(given)}"
    return path
