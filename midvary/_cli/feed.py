"""The bulk command's input: jobs handed to the fan-out as they are taken and become ready.

Each job is *placed* (see :mod:`.placing`) when the fan-out asks for its next item, so a run
takes a job only when it has room to run it: runs sharing a store split the work. A job
another run holds is placed again later; a generate row's children (its ``then`` column)
join when it succeeds, with requests made from its task id.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import midvary

from .jobs import BulkJob


class Feed:
    """The jobs of one run, handed to the fan-out as they become ready.

    Args:
        jobs: Every job of the JOBS file, in order (a child right after its parent).
        place: Decides what this run does with a job (queue it, wait for its parent,
            skip it); ``False`` means another run holds it: place it again later.
        retry_after: Seconds to wait before placing again the jobs another run held.
        key_of: The submission key of a job's request (``None``: no key).

    The input ends when every job is placed, the queue is empty and no parent of a waiting
    child is still running.
    """

    def __init__(
        self,
        jobs: Iterable[BulkJob],
        *,
        place: Callable[[BulkJob], Awaitable[bool]],
        retry_after: Callable[[], float],
        key_of: Callable[[BulkJob], str | None],
    ) -> None:
        self.queue: collections.deque[tuple[BulkJob, Any]] = collections.deque()
        #: The jobs in the order the fan-out received them (its outcome index).
        self.to_run: list[BulkJob] = []
        #: The keys of the jobs queued or running in this run.
        self.running: set[str] = set()
        self._pending = collections.deque(jobs)
        self._deferred: list[BulkJob] = []
        self._place = place
        self._retry_after = retry_after
        self._key_of = key_of
        self._waiting: dict[str, list[BulkJob]] = {}
        self._orphans: list[BulkJob] = []
        self._wake = asyncio.Event()
        self._succeeded: dict[str, str] = {}

    def add(self, job: BulkJob, request: Any) -> None:
        """Queue ``job`` with its request."""
        self.queue.append((job, request))
        self.running.add(job.key)

    def child_request(self, job: BulkJob, parent_task_id: str) -> Any:
        """A child's request, keyed, once its parent task ``parent_task_id`` succeeded."""
        return job.request_for(parent_task_id, key=self._key_of(job))

    def add_child(self, job: BulkJob, parent_task_id: str | None = None) -> None:
        """Queue child ``job``: now if its parent's task is known, later if it runs here.

        ``parent_task_id`` is the parent's task if it succeeded in an earlier run; one that
        succeeded in this run is known here. A child whose parent neither succeeded nor runs
        is an orphan (see :meth:`orphans`).
        """
        assert job.parent is not None  # noqa: S101 - only children have a parent
        task_id = parent_task_id or self._succeeded.get(job.parent)
        if task_id is not None:
            self.add(job, self.child_request(job, task_id))
        elif job.parent in self.running:
            self._waiting.setdefault(job.parent, []).append(job)
        else:
            self._orphans.append(job)

    def ended(self, job: BulkJob, outcome: midvary.JobOutcome | None) -> None:
        """``job`` ended: queue its waiting children if it succeeded.

        ``outcome`` is ``None`` for a job left pending (not sent, or refused for now).
        """
        self.running.discard(job.key)
        task_id = outcome.task_id if outcome is not None and outcome.ok else None
        children = self._waiting.pop(job.key, [])
        if task_id is None:
            self._orphans.extend(children)
        else:
            self._succeeded[job.key] = task_id
            for child in children:
                self.add(child, self.child_request(child, task_id))
        if children:  # only then: a wake cuts short the wait for jobs other runs hold
            self._wake.set()

    def orphans(self) -> list[BulkJob]:
        """The children that did not run because their parent did not succeed."""
        return [*self._orphans, *(c for cs in self._waiting.values() for c in cs)]

    async def items(self) -> AsyncIterator[Any]:
        """The fan-out's input: jobs as they are placed, children as their parents succeed."""
        while True:
            while self.queue:
                job, item = self.queue.popleft()
                self.to_run.append(job)
                yield item
            if self._pending:
                job = self._pending.popleft()
                if not await self._place(job):
                    self._deferred.append(job)
                continue
            if not self._waiting and not self._deferred:
                return
            self._wake.clear()
            if self._deferred:  # held by other runs: look again after a while
                try:
                    async with asyncio.timeout(self._retry_after()):
                        await self._wake.wait()
                except TimeoutError:
                    self._pending.extend(self._deferred)
                    self._deferred.clear()
            else:
                await self._wake.wait()
