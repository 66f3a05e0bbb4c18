"""The bulk command's crash-safe journal: one SQLite row per job, durable before each POST.

Every state change is its own committed transaction in WAL mode with ``synchronous=FULL``,
so when :meth:`Journal.submitting` returns, the row is on disk; only then is the POST sent.
After a crash (or Ctrl-C, or SIGKILL) a re-run reads the journal and

- skips ``done`` and ``failed`` jobs (their result lines are kept here and re-appended to
  the results file if the crash came between the two writes),
- re-attaches ``submitted`` jobs by task id instead of submitting them again,
- reports ``submitting`` jobs (the POST was in flight) as ``uncertain``: they may exist and be
  billed, and are sent again only when the user says so (``--resubmit-uncertain``).

Job identity: a row's own ``id``, else a key made of a hash of the job's content (parent
task id, image index, watermark) and its occurrence number among identical rows, so editing
or reordering other rows never changes a job's key. Each key also stores its content hash:
a journal whose keys name different jobs than the JOBS file is refused.

The API key is never written here.
"""

from __future__ import annotations

import contextlib
import enum
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Final

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; concurrent runs are not detected
    fcntl = None  # type: ignore[assignment]

import attrs

FORMAT: Final = "midvary-bulk-journal/1"


class JobState(enum.Enum):
    """A job's state in the journal."""

    PENDING = "pending"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    DONE = "done"
    FAILED = "failed"
    UNCERTAIN = "uncertain"

    @property
    def finished(self) -> bool:
        """Whether the job has a result line (it is skipped by a resume)."""
        return self in (JobState.DONE, JobState.FAILED)


@attrs.frozen(kw_only=True)
class JournaledJob:
    """What the journal knows about one job."""

    key: str
    content: str
    state: JobState
    task_id: str | None
    result: str | None


class JournalMismatchError(Exception):
    """The journal belongs to another JOBS file."""


class JournalBusyError(Exception):
    """Another run is using the journal."""


class Journal:
    """One bulk run's journal file. Not thread-safe; use it from the event loop's thread.

    While open, it holds an exclusive ``flock`` on ``<journal>.lock`` (where the platform has
    one), so two runs of the same jobs at once cannot both submit them.

    Raises:
        JournalBusyError: Another run holds the journal.
        JournalMismatchError: The file is some other SQLite database.
        sqlite3.Error, OSError: The file cannot be used.

    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = _lock(path.with_name(path.name + ".lock"))
        try:
            self._open(path)
        except BaseException:
            self._lock.close()
            raise

    def _open(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit is fsynced before it returns, so the row precedes the POST.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._transaction():
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            self._db.execute(
                """CREATE TABLE IF NOT EXISTS jobs (
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
            found = self._meta("format")
            if found is None:
                self._set_meta("format", FORMAT)
            elif found != FORMAT:
                raise JournalMismatchError(f"{path} is not a midvary bulk journal ({found!r})")

    def close(self) -> None:
        """Close the database and release the lock."""
        self._db.close()
        self._lock.close()

    def _transaction(self) -> sqlite3.Connection:
        # The connection as a context manager commits (or rolls back) a BEGIN ... block.
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def register(
        self, jobs_name: str, jobs_hash: str, jobs: Iterable[tuple[str, int, str]]
    ) -> tuple[dict[str, JournaledJob], list[str]]:
        """Record the JOBS file's jobs (``key, line, content``); return the journal's view.

        Returns:
            Every job of the file as the journal knows it, by key, and warnings to show.

        Raises:
            JournalMismatchError: A key names a different job here than in the file, or the
                journal holds jobs of which the file has none.

        """
        jobs = list(jobs)
        known = {
            row[0]: JournaledJob(
                key=row[0],
                content=row[1],
                state=JobState(row[2]),
                task_id=row[3],
                result=row[4],
            )
            for row in self._db.execute("SELECT key, content, state, task_id, result FROM jobs")
        }
        conflicts = [
            key for key, _line, content in jobs if key in known and known[key].content != content
        ]
        if conflicts:
            raise JournalMismatchError(
                f"journal {self.path} names other jobs than this JOBS file for ids "
                f"{', '.join(conflicts[:5])}{' ...' if len(conflicts) > 5 else ''}; it belongs "
                "to another JOBS file: pass --journal with a new path"
            )
        recorded_name = self._meta("jobs_file")
        if known and not any(key in known for key, _line, _content in jobs):
            raise JournalMismatchError(
                f"journal {self.path} belongs to another JOBS file ({recorded_name}): none of "
                "its jobs is in this one; pass --journal with a new path"
            )
        warnings: list[str] = []
        recorded_hash = self._meta("jobs_sha256")
        if recorded_hash is not None and recorded_hash != jobs_hash:
            keys = {key for key, _line, _content in jobs}
            gone = sum(1 for key in known if key not in keys)
            new = sum(1 for key in keys if key not in known)
            warnings.append(
                f"the JOBS file changed since this journal was started: {new} new jobs, "
                f"{gone} journaled jobs no longer in the file (left alone)"
            )
        now = time.time()
        with self._transaction():
            self._set_meta("jobs_file", jobs_name)
            self._set_meta("jobs_sha256", jobs_hash)
            self._db.executemany(
                "INSERT OR IGNORE INTO jobs (key, line, content, state, updated) "
                "VALUES (?, ?, ?, 'pending', ?)",
                [(key, line, content, now) for key, line, content in jobs],
            )
            self._db.executemany(
                "UPDATE jobs SET line = ? WHERE key = ?", [(line, key) for key, line, _c in jobs]
            )
        view = {
            key: known.get(key)
            or JournaledJob(
                key=key, content=content, state=JobState.PENDING, task_id=None, result=None
            )
            for key, _line, content in jobs
        }
        return view, warnings

    def _update(self, key: str, sql: str, *args: object) -> None:
        self._db.execute(
            f"UPDATE jobs SET {sql}, updated = ? WHERE key = ?",  # noqa: S608 - fixed fragments
            (*args, time.time(), key),
        )

    def submitting(self, key: str) -> None:
        """A POST for ``key`` is about to be sent (durable when this returns)."""
        self._update(key, "state = 'submitting', posts = posts + 1")

    def refused(self, key: str) -> None:
        """``key``'s POST was refused (429) and will be retried: it is not in flight."""
        self._update(key, "state = 'pending'")

    def submitted(self, key: str, task_id: str) -> None:
        """The provider accepted ``key``'s submission as ``task_id``."""
        self._update(key, "state = 'submitted', task_id = ?", task_id)

    def finished(self, key: str, state: JobState, task_id: str | None, result: str) -> None:
        """``key`` ended in ``state`` (done, failed or uncertain) with its result line."""
        self._update(key, "state = ?, task_id = ?, result = ?", state.value, task_id, result)

    def results(self) -> Mapping[str, str]:
        """Every result line recorded, by key."""
        return {
            str(key): str(result)
            for key, result in self._db.execute(
                "SELECT key, result FROM jobs WHERE result IS NOT NULL"
            )
        }


def _lock(path: Path) -> IO[bytes]:
    """Open ``path`` and take an exclusive, non-blocking ``flock`` on it."""
    file = path.open("ab")
    if fcntl is not None:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            with contextlib.suppress(OSError):
                file.close()
            raise JournalBusyError(
                f"{path.name[: -len('.lock')]} is in use by another bulk run; wait for it to end"
            ) from None
    return file
