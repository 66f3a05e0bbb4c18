"""Reading the journal an earlier midvary's ``bulk`` kept, once, to move it into the store.

Before the store beside the JOBS file, ``midvary bulk`` kept a SQLite journal
(``JOBS.journal.sqlite``, format ``midvary-bulk-journal/1``): one row per job with its
state, its task id and its result line. :func:`open_journal` reads it (after taking the
lock that journal's runs took, so an earlier midvary still running it is refused), checks
that it belongs to this JOBS file, and returns what it knew of each job; the ledger then
records that in the store (:meth:`.ledger.Ledger.adopt`) and :func:`retire_journal`
renames the file ``JOBS.journal.sqlite.migrated``, so it is read once. A migration cut
short is simply done again: recording a job the store already knows changes nothing.

Everything here blocks (SQLite, file renames): callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Final

import attrs

from ._kit import UsageError, exclusive_lock

#: The only journal format an earlier midvary wrote.
FORMAT: Final = "midvary-bulk-journal/1"
#: The suffix of the journal an earlier midvary kept beside the JOBS file.
JOURNAL_SUFFIX: Final = ".journal.sqlite"


@attrs.frozen(kw_only=True)
class JournalRow:
    """One job as the journal recorded it (``state`` in the journal's words)."""

    key: str
    state: str
    task_id: str | None
    result: str | None


def earlier_journal(jobs_path: Path) -> Path | None:
    """The journal an earlier midvary kept beside ``jobs_path``, if there is one."""
    path = jobs_path.with_name(jobs_path.name + JOURNAL_SUFFIX)
    return path if path.exists() else None


def open_journal(path: Path, contents: Mapping[str, str]) -> tuple[IO[bytes], list[JournalRow]]:
    """The journal's lock (close it to release) and what it knew of this JOBS file's jobs.

    The lock is the one every run of an earlier midvary held on ``path``; ``contents`` maps
    this JOBS file's job keys to their contents.

    Raises:
        UsageError: An earlier midvary's run holds it (let it end, then run again); the file
            is not such a journal, cannot be read, or belongs to another JOBS file (a key
            names another job there, or none of its jobs is here): the message says to
            move it away.

    """
    if not path.exists():
        raise UsageError(f"no journal at {path}")
    lock = exclusive_lock(
        path.with_name(path.name + ".lock"),
        f"{path} is in use by a bulk run of an earlier midvary: let it end, then run again "
        "(its jobs are then moved into the store)",
    )
    try:
        return lock, _read_journal(path, contents)
    except BaseException:
        lock.close()
        raise


def _read_journal(path: Path, contents: Mapping[str, str]) -> list[JournalRow]:
    try:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
            # A read-write connection: it replays a WAL left by a killed run, then folds it
            # into the file when it closes, so the renamed file is whole.
            found = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if found is None or found[0] != FORMAT:
                raise UsageError(f"{path} is not a journal of midvary bulk ({found!r})")
            rows = db.execute("SELECT key, content, state, task_id, result FROM jobs").fetchall()
    except sqlite3.Error as exc:
        raise UsageError(f"cannot read the journal {path}: {exc}") from None
    other = [key for key, content, *_ in rows if key in contents and contents[key] != content]
    if other or (rows and not any(key in contents for key, *_ in rows)):
        named = f" (ids {', '.join(other[:5])})" if other else ""
        raise UsageError(
            f"the journal {path} belongs to another JOBS file{named}: move it away (nothing "
            "was run)"
        )
    return [
        JournalRow(key=key, state=state, task_id=task_id, result=result)
        for key, _content, state, task_id, result in rows
        if key in contents
    ]


def retire_journal(path: Path) -> Path:
    """Rename the journal (now in the store) ``<path>.migrated``; drop its lock file."""
    done = path.with_name(path.name + ".migrated")
    path.replace(done)
    with contextlib.suppress(OSError):
        path.with_name(path.name + ".lock").unlink()
    return done
