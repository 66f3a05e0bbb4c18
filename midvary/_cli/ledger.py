"""Where a bulk run keeps what it knows of each job: a store, shared by every run of a JOBS file.

:class:`Ledger` is what ``midvary bulk`` asks: may this run take a job, and what is known of
it (:meth:`~Ledger.take`); a finished job's result line (:meth:`~Ledger.finished`).

The store is an ``SQLiteStore`` beside the JOBS file by default (``JOBS.store.sqlite``:
several processes on one machine), or the one ``--store`` names (``RedisStore``: several
machines; another ``SQLiteStore`` file). Before running a job a run takes its *run claim* in
the store (a claim on the key ``bulk/<JOBS sha256>/<job key>``, renewed while the run
lives); a job whose claim another live run holds is left to it and looked at again later
(taken over once that run's claim lapses). A finished job's claim is recorded with its
result line in place of a task id, so any later run reads the line back instead of running
the job. The submissions go through ``Session(store=...)`` with
``key=<JOBS sha256>/<job key>``: a job taken over from a dead run re-attaches to its task
with no POST, or is reported uncertain if its POST was in flight; the store, not this
ledger, keeps those steps (durable before the POST leaves).

A journal written by an earlier midvary (``JOBS.journal.sqlite``) is moved into the store
once by :mod:`.migrate`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

import midvary

from .._bodies import KINDS
from .._submit import identity
from .._validate import MAX_KEY_LENGTH
from ._kit import UsageError, api_key, exclusive_lock, say
from .migrate import JournalRow, earlier_journal, open_journal, retire_journal
from .results import line_task_ids, uncertain_line
from .tally import Ending

if TYPE_CHECKING:
    from midvary._store import Claim  # the type a store's claim() returns: annotations only

    from .jobs import BulkJob, JobsFile

Store = midvary.RedisStore | midvary.SQLiteStore

logger = logging.getLogger(__name__)

#: The default store's file: ``JOBS.store.sqlite``, beside the JOBS file.
STORE_SUFFIX: Final = ".store.sqlite"


@attrs.frozen(kw_only=True)
class KnownJob:
    """What the ledger knows about one job.

    ``ending`` is how a run finished it (its result line's ``status``; ``None``: no run
    did), ``task_id`` the task it made, ``result`` its result line and ``error`` that line's
    ``error`` object (empty when it has none). ``sent``: not finished, but its POST may
    have left in a run that stopped (so it is uncertain).
    """

    ending: Ending | None = None
    sent: bool = False
    task_id: str | None = None
    result: str | None = None
    error: dict[str, Any] = attrs.field(factory=dict)


class Ledger:
    """A store as the ledger of every run of one JOBS file (see the module).

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
        #: The jobs whose POST a stopped run may have sent (see :meth:`settle`).
        self._cut: set[str] = set()

    async def __aenter__(self) -> Ledger:
        self._renewer = asyncio.get_running_loop().create_task(self._renew())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for key in sorted(self._held):
            await self._let_go(key)

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

    async def _claim(self, key: str, fingerprint: str, request: Any) -> Claim:
        """Claim the store key ``key`` for this run."""
        return await self._store.claim(
            self._namespace,
            key,
            fingerprint=fingerprint,
            request=request,
            holder=self._holder,
            lease_s=self._lease,
        )

    async def _claim_run(self, job: BulkJob) -> Claim:
        """Claim ``job``'s run claim for this run (see the module)."""
        request = {"bulk": self._scope, "job": job.key}
        return await self._claim(self._claim_key(job.key), job.content, request)

    async def take(self, job: BulkJob) -> KnownJob | None:
        """Claim ``job`` for this run; its result line if a run finished it already."""
        key = self._claim_key(job.key)
        for _attempt in range(2):
            claim = await self._claim_run(job)
            state = claim.state.value  # the store's ClaimState: claimed, known, busy, uncertain
            if state == "claimed":
                self._held.add(key)
                return KnownJob(sent=job.key in self._cut)
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
        self._cut.discard(job.key)
        known = await self.take(job)
        if known is None or known.ending is not None:
            return False  # another run reopened it first
        await self._store.forget(self.submission_key(job), namespace=self._namespace)
        return True

    async def release(self, key: str) -> None:
        """Let go of ``key``'s run claim at once: another run (or the next) may send it."""
        claim_key = self._claim_key(key)
        if claim_key in self._held:
            await self._let_go(claim_key)

    async def _let_go(self, claim_key: str) -> None:
        self._held.discard(claim_key)
        with contextlib.suppress(midvary.StoreError):
            await self._store.release(self._namespace, claim_key, holder=self._holder)

    async def finished(self, key: str, line: str) -> None:
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

    async def task_final(self, job: BulkJob, task_id: str) -> None:
        """Mark ``job``'s submission key done: its task ``task_id`` ended and was recorded.

        The key keeps the task id (a re-send still re-attaches), but no longer what
        :meth:`midvary.Store.unfinished` lists, and the store keeps less for it.
        """
        await self._store.mark_done(self._namespace, self.submission_key(job), task_id=task_id)

    async def settle(self) -> None:
        """Settle what stopped runs left, when no other run can use the store (its lock).

        Every holder of a claim of this JOBS file is then a dead run: its run claims are
        dropped, and so are its submission keys never marked sending (nothing was sent);
        :meth:`take` says a job whose key was sending (its POST may have left) was ``sent``,
        which the run reports uncertain (and records as such) as it would have had it lived.
        Nothing waits for a lease.
        """
        mine, runs = f"{self._scope}/", self._claim_key("")
        left = await self._store.unfinished(namespace=self._namespace)
        for stored in left:
            if stored.key.startswith((runs, mine)) and stored.state == "claimed":
                await self._store.forget(stored.key, namespace=self._namespace)
            elif stored.key.startswith(mine) and stored.state == "sending":
                self._cut.add(stored.key.removeprefix(mine))

    async def adopt(self, job: BulkJob, row: JournalRow, parent_task: str | None) -> None:
        """Record what an earlier midvary's journal knew of ``job`` (see :mod:`.migrate`).

        A finished job (done, failed, uncertain: its result line) is recorded as this
        ledger records one; a job whose POST was in flight when that run stopped, as
        uncertain; a submitted job's task id under its submission key, where the session
        finds it and re-attaches with no POST. ``parent_task`` is a child's parent task
        (from the same journal), else ``None``. Recording what the store already knows
        changes nothing, so a migration cut short is done again.

        Raises:
            UsageError: The store holds something else for the job (another run uses it).

        """
        if row.state == "submitted" and row.task_id is not None:
            request = self.request_of(job, parent_task)
            if request is not None:
                await self._adopt_task(job, request, row.task_id)
                return
        if row.state in ("done", "failed", "uncertain") and row.result is not None:
            await self._adopt_line(job, row.result)
        elif row.state in ("submitting", "submitted", "uncertain"):
            request = self.request_of(job, parent_task)
            message = "its submission was in flight when a run of an earlier midvary stopped"
            await self._adopt_line(job, uncertain_line(job, message, request))

    def request_of(self, job: BulkJob, parent_task: str | None) -> Any:
        """``job``'s keyed request, a child's made from ``parent_task``; ``None``: not known."""
        key = self.submission_key(job)
        if job.request is not None:
            return attrs.evolve(job.request, key=key)
        return None if parent_task is None else job.request_for(parent_task, key=key)

    async def _adopt_line(self, job: BulkJob, line: str) -> None:
        claim = await self._claim_run(job)
        if claim.state.value == "claimed":
            await self.finished(job.key, line)
        elif claim.state.value != "known":
            raise _in_use(job)

    async def _adopt_task(self, job: BulkJob, request: Any, task_id: str) -> None:
        key = self.submission_key(job)
        # The fingerprint the session's own claim of this key checks (see architecture.md).
        fingerprint, stored = identity(KINDS[type(request)], request)
        try:
            claim = await self._claim(key, fingerprint, stored)
        except midvary.KeyConflictError:
            raise _in_use(job) from None
        if claim.state.value == "claimed":
            await self._store.record_task(
                self._namespace, key, holder=self._holder, task_id=task_id
            )
        elif claim.state.value != "known":
            raise _in_use(job)


def _in_use(job: BulkJob) -> UsageError:
    return UsageError(
        f"the store already holds job {job.key!r} in another state than the journal of an "
        "earlier midvary says; another run may be using it: run again when it has ended"
    )


async def migrate_journal(path: Path, ledger: Ledger, jobs_file: JobsFile) -> None:
    """Move the journal of an earlier midvary at ``path`` into ``ledger``'s store, once.

    Every step off the event loop's thread; the file is renamed ``<path>.migrated`` once
    every job it knew is in the store, and a line on stderr says so.

    Raises:
        UsageError: It cannot be read, belongs to another JOBS file, an earlier midvary runs
            it, or the store disagrees (see :meth:`Ledger.adopt`).

    """
    jobs = {job.key: job for job in jobs_file.jobs}
    contents = {key: job.content for key, job in jobs.items()}
    lock, rows = await asyncio.to_thread(open_journal, path, contents)
    try:
        tasks = {row.key: row.task_id for row in rows if row.state == "done"}
        for row in rows:
            job = jobs[row.key]
            await ledger.adopt(job, row, tasks.get(job.parent or ""))
        kept = await asyncio.to_thread(retire_journal, path)
    finally:
        await asyncio.to_thread(lock.close)
    say(
        f"moved the journal of an earlier midvary ({len(rows)} jobs) into {ledger.where}; "
        f"the old file is kept as {kept}",
        stream=sys.stderr,
    )


def _from_line(job: BulkJob, line: str) -> KnownJob:
    """What a result line recorded by some run says of ``job``."""
    try:
        data = json.loads(line)
        ending = Ending(data["status"])
        _parent, task_id = line_task_ids(data)
    except (ValueError, KeyError, TypeError):
        raise midvary.StoreError(
            f"the store holds an unreadable result for job {job.key!r}"
        ) from None
    error = data.get("error")
    return KnownJob(
        ending=ending,
        task_id=task_id if isinstance(task_id, str) else None,
        result=line,
        error=error if isinstance(error, dict) else {},
    )


@contextlib.asynccontextmanager
async def open_ledger(
    args: argparse.Namespace, jobs_file: JobsFile
) -> AsyncIterator[tuple[Ledger, Store]]:
    """The run's ledger and the store its session submits through.

    The store is ``--store``, else an ``SQLiteStore`` beside the JOBS file
    (``JOBS.store.sqlite``) that one run uses at a time (a lock file beside it), so what an
    earlier run left there is settled at once (:meth:`Ledger.settle`) instead of after its
    claims' lease. A journal of an earlier midvary (``--journal``, else
    ``JOBS.journal.sqlite`` when no ``--store`` is given) is moved into the store first.

    Raises:
        UsageError: The store or the journal cannot be used, or another run uses the
            default store (the message names it, never a Redis password).

    """
    jobs_path: Path = args.jobs
    _check_keys(jobs_path, jobs_file)
    journal: Path | None = args.journal
    lease = args.claim_lease
    store: Store
    async with contextlib.AsyncExitStack() as stack:
        if args.store is None:
            path = jobs_path.with_name(jobs_path.name + STORE_SUFFIX)
            lock = await asyncio.to_thread(
                exclusive_lock,
                path.with_name(path.name + ".lock"),
                f"{path} is in use by another bulk run of {jobs_path.name}; wait for it to end",
            )
            stack.push_async_callback(asyncio.to_thread, lock.close)
            store = midvary.SQLiteStore(path, claim_lease=lease)
            journal = journal or await asyncio.to_thread(earlier_journal, jobs_path)
        else:
            store = _store(args.store, lease_s=lease)
        try:
            await store.open()
        except midvary.StoreError as exc:
            raise UsageError(f"cannot use the store: {exc}") from None
        stack.push_async_callback(store.close)
        namespace = store.namespace_for(api_key(args))
        ledger = await stack.enter_async_context(
            Ledger(store, namespace, jobs_file.sha256, lease_s=lease)
        )
        if args.store is None:
            await ledger.settle()
        if journal is not None:
            await migrate_journal(journal, ledger, jobs_file)
        yield ledger, store


def _check_keys(jobs_path: Path, jobs_file: JobsFile) -> None:
    """Every job's store keys fit the key limit (before the store opens, so nothing is sent).

    Raises:
        UsageError: A job's id (with a child's step) is too long once prefixed; names its line.

    """
    prefix = len(Ledger.claim_key(jobs_file.sha256, ""))  # the longer of its two keys
    longest = MAX_KEY_LENGTH - prefix
    for job in jobs_file.jobs:
        if len(job.key) > longest:
            raise UsageError(
                f"{jobs_path}:{job.line}: a job's key is at most {longest} "
                f"characters (its store keys add {prefix} for the JOBS file's hash), but "
                f"this one has {len(job.key)}: give it a shorter id (no job was run)"
            )


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
