"""What a bulk run does with each job, from what its :class:`~.ledger.Ledger` knows of it.

A job is placed when the fan-out has room for it (:class:`~.feed.Feed`): skipped (finished
earlier, here or by another run: its result line is written to this run's results file),
reported uncertain (its POST was in flight when an earlier run stopped), or run (a job an
earlier run submitted re-attaches to its task through its submission key, with no POST); a
child waits for its parent. A finished job is recorded in the ledger first, then in the
results file.
"""

from __future__ import annotations

import argparse
import sqlite3

import attrs

import midvary

from .feed import Feed
from .jobs import BulkJob
from .ledger import KnownJob, Ledger
from .progress import Progress
from .results import ResultsFile, outcome_line, uncertain_line
from .summary import BulkSummary
from .tally import Ending


@attrs.define(kw_only=True)
class Placer:
    """Places the jobs of one run and records them when they end."""

    args: argparse.Namespace
    ledger: Ledger
    results: ResultsFile
    summary: BulkSummary
    progress: Progress
    feed: Feed
    #: What this run knows of each job it placed (updated when one ends here).
    known: dict[str, KnownJob] = attrs.field(factory=dict)
    _reopened: set[str] = attrs.field(factory=set)

    async def place(self, job: BulkJob) -> bool:
        """Decide what this run does with ``job``; ``False``: another run holds it for now."""
        if job.parent is not None and job.parent not in self.known:
            return False  # its parent is another run's: so are its children, for now
        known = await self.ledger.take(job)
        if known is None:
            return False
        self.known[job.key] = known
        ending, kind = known.ending, known.error.get("type")
        # Refused (an earlier version recorded a 402, 401, 505, an outage as failed):
        # nothing was billed, so it is pending, sent by a plain re-run. Failed: only with
        # --retry-failed. Uncertain: only with --resubmit-uncertain. Each once a run.
        refused = kind in REFUSED_TYPES and known.task_id is None
        uncertain = known.sent or ending is Ending.UNCERTAIN
        if job.key in self._reopened:
            again = False
        elif ending is Ending.FAILED:
            again = refused or (self.args.retry_failed and kind in FAILED_TYPES)
        else:
            again = uncertain and self.args.resubmit_uncertain
        if again:
            self._reopened.add(job.key)
            if not await self.ledger.reopen(job):
                del self.known[job.key]  # another run runs it again: look later
                return False
            if uncertain:
                self.summary.resubmitted += 1
            elif not refused:
                self.summary.retried += 1
            self._submit(job)
        elif ending in (Ending.DONE, Ending.FAILED):
            await self._skip(job, known)
        elif uncertain:
            await self._uncertain(job, known)
        else:
            self._submit(job)
        return True

    async def _skip(self, job: BulkJob, known: KnownJob) -> None:
        """A job finished earlier (by this run's predecessors or by another run)."""
        self.summary.skipped += 1
        if known.result is not None:
            await self.results.ensure(job.key, known.result)
        if known.ending is Ending.DONE:
            self.progress.ended(Ending.DONE)
        else:
            self.summary.problems.append((job, "failed", _recorded_error(known)))
            self.progress.ended(Ending.FAILED)

    async def _uncertain(self, job: BulkJob, known: KnownJob) -> None:
        """A job whose submission may or may not have been accepted: reported, not sent."""
        self.progress.ended(Ending.UNCERTAIN)
        if known.sent:
            why = "its submission was in flight when an earlier run stopped"
        else:  # the earlier run ended it uncertain and kept why in its result line
            why = _recorded_error(known)
            if known.result is not None:
                await self.results.ensure(job.key, known.result)
        message = (
            f"{why}: the task may exist and be billed; check the provider's "
            "dashboard, or run again with --resubmit-uncertain"
        )
        self.summary.problems.append((job, "uncertain", message))
        if known.sent:
            request = self.ledger.request_of(job, self._parent_task(job))
            line = uncertain_line(job, message, request)
            await self.ledger.finished(job.key, line)
            await self.results.write(job.key, line)

    def _submit(self, job: BulkJob) -> None:
        """Submit ``job`` in this run: now, once its parent succeeds, or never (orphan)."""
        if job.parent is None:
            self.feed.add(job, self.ledger.request_of(job, None))
        else:
            self.feed.add_child(job, self._parent_task(job))

    def _parent_task(self, job: BulkJob) -> str | None:
        """A child's parent task, if the parent succeeded and does not run again here."""
        parent = self.known.get(job.parent or "")
        if parent is None or parent.ending is not Ending.DONE or job.parent in self.feed.running:
            return None
        return parent.task_id

    async def record(self, job: BulkJob, outcome: midvary.JobOutcome) -> None:
        """Record a job that ended in this run: the ledger, then its results line.

        A job whose submission was certainly refused for now (429 or 455 past its wait, no
        connection, an account refusal) has no result: it stays pending in the ledger.
        """
        if refused_for_now(outcome):
            await self.pend(job)
            return
        if outcome.task_id is not None and _not_saved(outcome.error):
            self._unfinished(job, outcome.task_id, outcome.error)
            return
        ending = Ending.of(outcome)
        line = outcome_line(job, outcome)
        await self.ledger.finished(job.key, line)
        self.known[job.key] = KnownJob(ending=ending, task_id=outcome.task_id, result=line)
        await self.results.write(job.key, line)
        if outcome.task_id is not None and _task_ended(outcome):
            await self.ledger.task_final(job, outcome.task_id)
        self.summary.ran += 1
        self.summary.recovered += outcome.recovered
        if ending is Ending.DONE:
            self.progress.ended(ending)
            return
        message = f"{type(outcome.error).__name__}: {outcome.error}"
        self.summary.problems.append((job, ending.value, message))
        self.progress.ended(ending, f"line {job.line} ({job.key}) {ending.value}: {message}")

    async def pend(self, job: BulkJob) -> None:
        """``job`` was not sent, or certainly refused: pending in the ledger (no result)."""
        await self.ledger.release(job.key)
        self.feed.ended(job, None)

    def _unfinished(self, job: BulkJob, task_id: str, error: BaseException | None) -> None:
        """A billed task whose result could not be saved here: left submitted, not failed.

        The store keeps the job's submission key with its task id (the session recorded
        it when the task was accepted), and its run claim gets no result (this run releases
        it when it ends), so the next run re-attaches to the task (no POST) and downloads
        it again.
        """
        self.summary.ran += 1
        message = (
            f"task {task_id} made, its result not saved ({type(error).__name__}: {error}); "
            "run the same command again to finish it"
        )
        self.summary.problems.append((job, Ending.UNFINISHED.value, message))
        self.progress.ended(Ending.UNFINISHED, f"line {job.line} ({job.key}) unfinished: {message}")


def _task_ended(outcome: midvary.JobOutcome) -> bool:
    """Whether ``outcome``'s task reached its end at the provider (not a wait given up)."""
    return outcome.ok or isinstance(outcome.error, midvary.TaskFailedError)


def _not_saved(error: BaseException | None) -> bool:
    """Whether ``error``, after the task was made, is a failure to save its result here.

    A local write (``OSError``: a full disk, a read-only folder; ``sqlite3.Error``: the
    ledger) or a download (the result host's HTTP error, the network); not a download
    midvary refused for good (a URL that is not http(s), a file over the size limit:
    ``DownloadError.reason``), nor the submission's uncertainty.
    """
    if isinstance(error, midvary.DownloadError):
        return error.reason is None
    if isinstance(error, midvary.SubmitUncertainError):
        return False
    return isinstance(error, OSError | sqlite3.Error | midvary.TransportError)


#: Errors that fail a job for good (``--retry-failed`` sends it again): the task failed at
#: the provider, or the request was refused as invalid.
FAILED_TYPES = frozenset(
    ("TaskFailedError", "GenerationFailedError", "BadRequestError", "ValidationError")
)
#: Errors of a submission certainly refused for now (nothing billed): a plain re-run sends
#: the job. Only when no task id was recorded (a 401 on a poll is a task's, not a refusal).
REFUSED_TYPES = frozenset(
    (
        "AuthenticationError",
        "InsufficientCreditsError",
        "FeatureDisabledError",
        "RateLimitError",
        "ServiceUnavailableError",
        "TransportError",
    )
)


def refused_for_now(outcome: midvary.JobOutcome) -> bool:
    """Whether ``outcome`` is a submission certainly refused for now: the job stays pending."""
    error = outcome.error
    if error is None or outcome.task_id is not None or outcome.uncertain:
        return False
    if isinstance(error, midvary.TransportError):
        return not error.sent
    return type(error).__name__ in REFUSED_TYPES


def _recorded_error(known: KnownJob) -> str:
    return f"{known.error.get('type')}: {known.error.get('message')} (in an earlier run)"
