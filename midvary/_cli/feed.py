"""The bulk command's input: jobs handed to the fan-out as they become ready.

Rows run at once; a generate row's children (its ``then`` column) join when it succeeds,
with requests made from its task id.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import midvary

from .jobs import BulkJob


class Feed:
    """The jobs of one run, handed to the fan-out as they become ready.

    A child waits for its parent (a generate row run in this run) to succeed; then its
    request is made from the parent's task id and it joins the queue. The input ends when
    the queue is empty and no parent of a waiting child is still running.
    """

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[BulkJob, Any]] = collections.deque()
        #: The jobs in the order the fan-out received them (its outcome index).
        self.to_run: list[BulkJob] = []
        self._waiting: dict[str, list[BulkJob]] = {}
        self._running_parents: set[str] = set()
        self._orphans: list[BulkJob] = []
        self._wake = asyncio.Event()
        self._requests: dict[str, Any] = {}

    def add(self, job: BulkJob, item: Any, request: Any = None) -> None:
        """Queue ``job`` with its fan-out item (a request or a re-attached handle).

        ``request`` is what the job submitted, for a re-attached handle (which has none).
        """
        self.queue.append((job, item))
        if request is not None:
            self._requests[job.key] = request

    def request_of(self, job: BulkJob) -> Any:
        """What ``job`` submitted, when it is known (else ``None``)."""
        return self._requests.get(job.key, job.request)

    def wait_for_parent(self, job: BulkJob) -> None:
        """Hold child ``job`` until its parent's outcome."""
        assert job.parent is not None  # noqa: S101 - only children wait
        self._waiting.setdefault(job.parent, []).append(job)

    def start(self) -> None:
        """Every job is placed: children whose parent does not run now are orphans."""
        queued = {job.key for job, _item in self.queue}
        for parent in list(self._waiting):
            if parent in queued:
                self._running_parents.add(parent)
            else:
                self._orphans.extend(self._waiting.pop(parent))

    def parent_ended(self, job: BulkJob, outcome: midvary.VaryOutcome) -> None:
        """``job`` ended: queue its waiting children if it succeeded."""
        children = self._waiting.pop(job.key, None)
        if children is None:
            return
        self._running_parents.discard(job.key)
        if outcome.ok and outcome.task_id is not None:
            for child in children:
                self.add(child, child.request_for(outcome.task_id))
        else:
            self._orphans.extend(children)
        self._wake.set()

    def orphans(self) -> list[BulkJob]:
        """The children that did not run because their parent did not succeed."""
        return [*self._orphans, *(c for cs in self._waiting.values() for c in cs)]

    async def items(self) -> AsyncIterator[Any]:
        """The fan-out's input: queued items, then children as their parents succeed."""
        while True:
            while self.queue:
                job, item = self.queue.popleft()
                self.to_run.append(job)
                yield item
            if not self._running_parents:
                return
            self._wake.clear()
            await self._wake.wait()
