"""One count of how jobs ended: done, failed, uncertain, not run, or unfinished.

Bulk's summary (:class:`midvary._cli.summary.BulkSummary`), the live progress
(:class:`midvary._cli.progress.Progress`), the demo's check
(:class:`midvary._cli.demo.assess.DemoTally`) and the test campaigns' figures extend or hold a
:class:`Tally`, so the three words mean the same everywhere:

- ``done``: the job's task succeeded (:attr:`midvary.JobOutcome.ok`);
- ``uncertain``: its submission may or may not have been accepted (and billed), and was not
  re-sent (:attr:`midvary.JobOutcome.uncertain`);
- ``failed``: any other end (refused, the task failed, timed out...);
- ``not run``: a child job (a generate row's ``then``) never sent, because its parent did
  not succeed;
- ``unfinished``: its task exists (billed) but saving its result here failed (a download, a
  full disk): left submitted, its task id kept, so the next run re-attaches and finishes it.

The values of :class:`Ending` are the ``status`` words of the bulk results file.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

import midvary


class Ending(enum.Enum):
    """How one job ended; the value is the results file's ``status`` word."""

    DONE = "done"
    FAILED = "failed"
    UNCERTAIN = "uncertain"
    NOT_RUN = "not run"
    UNFINISHED = "unfinished"

    @classmethod
    def of(cls, outcome: midvary.JobOutcome) -> Ending:
        """How ``outcome`` ended."""
        if outcome.ok:
            return cls.DONE
        return cls.UNCERTAIN if outcome.uncertain else cls.FAILED


@attrs.define(kw_only=True)
class Tally:
    """Jobs counted by how they ended: one counter per :class:`Ending` (see the module)."""

    done: int = 0
    failed: int = 0
    uncertain: int = 0
    not_run: int = 0
    unfinished: int = 0

    @property
    def ended(self) -> int:
        """Jobs counted, however they ended."""
        return self.done + self.failed + self.uncertain + self.not_run + self.unfinished

    def count(self, ending: Ending, jobs: int = 1) -> None:
        """Count ``jobs`` jobs (default 1) that ended as ``ending``."""
        name = ending.name.lower()  # each ending's counter: done, failed, ..., not_run
        setattr(self, name, getattr(self, name) + jobs)

    def add(self, outcome: midvary.JobOutcome) -> Ending:
        """Count one outcome; return how it ended."""
        ending = Ending.of(outcome)
        self.count(ending)
        return ending

    def add_all(self, outcomes: Iterable[midvary.JobOutcome]) -> None:
        """Count every outcome of ``outcomes``."""
        for outcome in outcomes:
            self.add(outcome)
