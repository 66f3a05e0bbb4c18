"""Where a bulk run keeps what it knows of each job: one interface, two implementations.

:class:`Ledger` is what ``midvary bulk`` asks: may this run take a job, and what is known of
it (:meth:`~Ledger.take`); the submission's steps (``submitting``, ``submitted``,
``refused``); a finished job's result line (:meth:`~Ledger.finished`).

- :class:`LocalLedger` (the default): the local SQLite journal (:mod:`.journal`), one run at
  a time (it holds the journal's lock), every step durable before the POST. Submissions
  carry no key: the journal itself re-attaches by task id.
- :class:`StoreLedger` (``--store``): a shared store (``RedisStore``: several machines;
  ``SQLiteStore``: several processes on one machine) that many runs of the same JOBS file
  share. Before running a job a run takes its *run claim* in the store (a claim on the key
  ``bulk/<JOBS sha256>/<job key>``, renewed while the run lives); a job whose claim another
  live run holds is left to it and looked at again later (taken over once that run's claim
  lapses). A finished job's claim is recorded with its result line in place of a task id,
  so any later run reads the line back instead of running the job. The submissions go
  through ``Session(store=...)`` with ``key=<JOBS sha256>/<job key>``: a job taken over from
  a dead run re-attaches to its task with no POST, or is reported uncertain if its POST was
  in flight; the store, not this ledger, keeps those steps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import midvary

from .._gallery_lines import line_task_ids
from .._validate import MAX_KEY_LENGTH
from ._kit import UsageError, say
from .journal import JobState, Journal, JournalBusyError, JournaledJob, JournalMismatchError

if TYPE_CHECKING:
    from .jobs import BulkJob, JobsFile

Store = midvary.RedisStore | midvary.SQLiteStore

logger = logging.getLogger(__name__)


class Ledger(Protocol):
    """What a bulk run keeps, and where: see the module docstring."""

    #: Where the ledger lives, for the summary (a Redis URL without its password).
    where: str
    #: Seconds to wait before looking again at the jobs another live run holds.
    retry_after: float

    def submission_key(self, job: BulkJob) -> str | None:
        """The ``key=`` of ``job``'s request, or ``None`` (no key: the local journal)."""

    async def take(self, job: BulkJob) -> JournaledJob | None:
        """Take ``job`` for this run; what is known of it, or ``None`` if another run has it."""

    async def reopen(self, job: BulkJob) -> bool:
        """Allow ``job`` (finished: failed or uncertain) to be submitted again.

        Returns ``False`` when another run took it first.
        """

    def submitting(self, key: str) -> None:
        """A POST for ``key`` is about to be sent (durable when this returns)."""

    def submitted(self, key: str, task_id: str) -> None:
        """The provider accepted ``key``'s submission as ``task_id``."""

    def refused(self, key: str) -> None:
        """``key``'s POST was refused (429) and will be retried: it is not in flight."""

    async def finished(self, key: str, state: JobState, task_id: str | None, line: str) -> None:
        """``key`` ended in ``state`` with its result ``line``."""

    async def release(self, key: str) -> None:
        """``key`` was certainly not accepted (refused, or held back): it stays pending."""


class LocalLedger:
    """The local SQLite journal as a :class:`Ledger` (one run at a time: it holds the lock)."""

    retry_after = 1.0

    def __init__(self, journal: Journal, view: dict[str, JournaledJob]) -> None:
        self.where = str(journal.path)
        self._journal = journal
        self._view = view

    def submission_key(self, job: BulkJob) -> str | None:
        """None: the journal re-attaches by task id itself."""
        return None

    async def take(self, job: BulkJob) -> JournaledJob | None:
        """What the journal knew of ``job`` when the run started (no other run can run)."""
        return self._view[job.key]

    async def reopen(self, job: BulkJob) -> bool:
        """Always allowed: no other run holds the journal."""
        return True

    def submitting(self, key: str) -> None:
        """See :meth:`Ledger.submitting`."""
        self._journal.submitting(key)

    def submitted(self, key: str, task_id: str) -> None:
        """See :meth:`Ledger.submitted`."""
        self._journal.submitted(key, task_id)

    def refused(self, key: str) -> None:
        """See :meth:`Ledger.refused`."""
        self._journal.refused(key)

    async def finished(self, key: str, state: JobState, task_id: str | None, line: str) -> None:
        """See :meth:`Ledger.finished`."""
        self._journal.finished(key, state, task_id, line)

    async def release(self, key: str) -> None:
        """See :meth:`Ledger.release`."""
        self._journal.refused(key)


class StoreLedger:
    """A shared store as a :class:`Ledger` for every run of one JOBS file (see the module).

    Args:
        store: An open ``RedisStore`` or ``SQLiteStore`` (the caller closes it).
        namespace: The account's namespace on it (``store.namespace_for(api_key)``).
        scope: The JOBS file's SHA-256: the runs of the same file share their jobs.
        lease_s: Seconds a run's claim on a job lives without renewal (renewed every third
            of it): how long a dead run's jobs wait before another run takes them over.

    Use it as ``async with``: that renews the claims and, on exit, releases the claims of
    the jobs this run did not finish, so another run may take them at once.
    """

    def __init__(self, store: Store, namespace: str, scope: str, *, lease_s: float) -> None:
        self.where = repr(store).strip("<>")
        self.retry_after = lease_s / 3
        self._store = store
        self._namespace = namespace
        self._scope = scope
        self._lease = lease_s
        self._holder = uuid.uuid4().hex  # this run
        self._held: set[str] = set()
        self._renewer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StoreLedger:
        self._renewer = asyncio.get_running_loop().create_task(self._renew())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for key in sorted(self._held):
            with contextlib.suppress(midvary.StoreError):
                await self._store.release(self._namespace, key, holder=self._holder)
        self._held.clear()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            for key in list(self._held):
                try:
                    kept = await self._store.renew(
                        self._namespace, key, holder=self._holder, lease_s=self._lease
                    )
                except midvary.StoreError as exc:
                    logger.warning("could not renew the run claim of %s: %s", key, exc)
                    continue
                if not kept:  # we stalled past the lease: another run may take the job
                    self._held.discard(key)
                    logger.warning("lost the run claim of %s (its lease lapsed)", key)

    def _claim_key(self, key: str) -> str:
        return self.claim_key(self._scope, key)

    @staticmethod
    def claim_key(scope: str, key: str) -> str:
        """The store key of the run claim of job ``key`` of the JOBS file ``scope``."""
        return f"bulk/{scope}/{key}"

    def submission_key(self, job: BulkJob) -> str:
        """``<JOBS sha256>/<job key>``: the same job has the same key in every run."""
        return f"{self._scope}/{job.key}"

    async def take(self, job: BulkJob) -> JournaledJob | None:
        """Claim ``job`` for this run; its result line if a run finished it already."""
        key = self._claim_key(job.key)
        for _attempt in range(2):
            claim = await self._store.claim(
                self._namespace,
                key,
                fingerprint=job.content,
                request={"bulk": self._scope, "job": job.key},
                holder=self._holder,
                lease_s=self._lease,
            )
            state = claim.state.value  # the store's ClaimState: claimed, known, busy, uncertain
            if state == "claimed":
                self._held.add(key)
                return _pending(job)
            if state == "known" and claim.task_id:
                return _from_line(job, claim.task_id)
            if state == "busy":
                self.retry_after = min(self._lease / 3, claim.retry_after or self._lease)
                return None
            # A run claim is never marked sending, so it cannot turn uncertain; if it did,
            # dropping it is safe: the submission's own key still guards the POST.
            await self._store.forget(key, namespace=self._namespace)
        return None

    async def reopen(self, job: BulkJob) -> bool:
        """Drop ``job``'s result and its submission key, then take it again."""
        key = self._claim_key(job.key)
        await self._store.forget(key, namespace=self._namespace)
        known = await self.take(job)
        if known is None or known.state is not JobState.PENDING:
            return False  # another run reopened it first
        await self._store.forget(self.submission_key(job), namespace=self._namespace)
        return True

    def submitting(self, key: str) -> None:
        """Nothing: the session's store marks the key sending before the POST."""

    def submitted(self, key: str, task_id: str) -> None:
        """Nothing: the session's store records the task id."""

    def refused(self, key: str) -> None:
        """Nothing: the session's store puts the key back."""

    async def release(self, key: str) -> None:
        """Let go of ``key``'s run claim at once: another run (or the next) may send it."""
        claim_key = self._claim_key(key)
        if claim_key in self._held:
            self._held.discard(claim_key)
            with contextlib.suppress(midvary.StoreError):
                await self._store.release(self._namespace, claim_key, holder=self._holder)

    async def finished(self, key: str, state: JobState, task_id: str | None, line: str) -> None:
        """Record ``line`` as the job's result, for every later run to read back."""
        claim_key = self._claim_key(key)
        recorded = await self._store.record_task(
            self._namespace, claim_key, holder=self._holder, task_id=line
        )
        self._held.discard(claim_key)
        if recorded:
            await self._store.mark_done(self._namespace, claim_key, task_id=line)
        else:
            logger.warning(
                "job %s finished here after another run took it over (its claim lapsed); "
                "its result is in this run's results file only",
                key,
            )


def _pending(job: BulkJob) -> JournaledJob:
    return JournaledJob(
        key=job.key, content=job.content, state=JobState.PENDING, task_id=None, result=None
    )


def _from_line(job: BulkJob, line: str) -> JournaledJob:
    """What a result line recorded by some run says of ``job``."""
    try:
        data = json.loads(line)
        state = JobState(data["status"])
        _parent, task_id = line_task_ids(data)
    except (ValueError, KeyError, TypeError):
        raise midvary.StoreError(
            f"the store holds an unreadable result for job {job.key!r}"
        ) from None
    return JournaledJob(
        key=job.key,
        content=job.content,
        state=state,
        task_id=task_id if isinstance(task_id, str) else None,
        result=line,
    )


@contextlib.asynccontextmanager
async def open_ledger(
    args: argparse.Namespace, jobs_path: Path, jobs_file: JobsFile
) -> AsyncIterator[tuple[Ledger, Store | None]]:
    """The run's ledger (``--store``, else the local journal) and the store to submit through.

    Raises:
        UsageError: The journal or the store cannot be used (the message names it, never a
            Redis password).

    """
    if args.store is None:
        path: Path = args.journal or jobs_path.with_name(jobs_path.name + ".journal.sqlite")
        with _local_journal(path) as journal:
            try:
                view, warnings = journal.register(
                    jobs_path.name,
                    jobs_file.sha256,
                    ((job.key, job.line, job.content) for job in jobs_file.jobs),
                )
            except JournalMismatchError as exc:
                raise UsageError(str(exc)) from None
            for warning in warnings:
                say(f"warning: {warning}", stream=sys.stderr)
            yield LocalLedger(journal, view), None
        return
    if args.journal is not None:
        raise UsageError("--journal and --store exclude each other: the store is the journal")
    _check_keys(jobs_path, jobs_file)
    store = _store(args.store, lease_s=args.claim_lease)
    try:
        await store.open()
    except midvary.StoreError as exc:
        raise UsageError(f"cannot use the store: {exc}") from None
    try:
        namespace = store.namespace_for(_api_key(args))
        async with StoreLedger(
            store, namespace, jobs_file.sha256, lease_s=args.claim_lease
        ) as ledger:
            yield ledger, store
    finally:
        await store.close()


def _check_keys(jobs_path: Path, jobs_file: JobsFile) -> None:
    """Every job's store keys fit the key limit (before the store opens, so nothing is sent).

    Raises:
        UsageError: A job's id (with a child's step) is too long once prefixed; names its line.

    """
    prefix = len(StoreLedger.claim_key(jobs_file.sha256, ""))  # the longer of its two keys
    longest = MAX_KEY_LENGTH - prefix
    for row in jobs_file.jobs:
        for job in (row, *row.children()):
            if len(job.key) > longest:
                raise UsageError(
                    f"{jobs_path}:{job.line}: with --store a job's key is at most {longest} "
                    f"characters (its store keys add {prefix} for the JOBS file's hash), but "
                    f"this one has {len(job.key)}: give it a shorter id (no job was run)"
                )


@contextlib.contextmanager
def _local_journal(path: Path) -> Iterator[Journal]:
    try:
        journal = Journal(path)
    except JournalBusyError as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:  # sqlite3.Error, OSError, JournalMismatchError: not usable
        raise UsageError(f"cannot open journal {path}: {exc}") from None
    try:
        yield journal
    finally:
        journal.close()


def _store(where: str, *, lease_s: float) -> Store:
    """``--store``: a ``redis://`` (``rediss://``, ``unix://``) URL, else an SQLite path."""
    if "://" not in where:
        return midvary.SQLiteStore(where, claim_lease=lease_s)
    try:
        return midvary.RedisStore(where, claim_lease=lease_s)
    except ImportError:
        raise UsageError(
            "--store with a Redis URL needs redis-py: pip install 'midvary[redis]'"
        ) from None


def _api_key(args: argparse.Namespace) -> str:
    """The API key the session uses (as :class:`midvary.Session` resolves it)."""
    if args.api_key is not None:
        return str(args.api_key).strip()
    for name in ("MIDVARY_API_KEY", "KIE_API_KEY"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    raise UsageError("no API key: pass --api-key KEY, or set MIDVARY_API_KEY (or KIE_API_KEY)")
