"""What a bulk run did, counted (:class:`BulkSummary`) and printed as rich tables."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from .jobs import BulkJob
from .tally import Tally

if TYPE_CHECKING:
    from rich.table import Table


@attrs.define(kw_only=True)
class BulkSummary(Tally):
    """What one bulk run did, for the table and the exit code.

    The :class:`Tally` counts every job of the JOBS file by how it ended, in this run or an
    earlier one.
    """

    total: int = 0
    #: Jobs that ended in this run (submitted or re-attached here).
    ran: int = 0
    skipped: int = 0
    reattached: int = 0
    resubmitted: int = 0
    #: Jobs of this run whose answer was lost and whose callback named the task
    #: (``--callback-url``): done, never re-sent.
    recovered: int = 0
    retried: int = 0
    bad_rows: int = 0
    rate_limited_waits: int = 0
    #: Jobs left pending in this run: not sent (max_tasks, an account refusal) or refused
    #: for now; nothing was billed for them and the next run sends them.
    pending: int = 0
    #: Submissions of this run that may be billed (accepted or uncertain).
    billable: int = 0
    #: The account refusal (401, 402, 505) that stopped the run, or ``None``.
    stopped_by: Exception | None = None
    #: Whether ``--max-tasks`` held jobs back.
    capped: bool = False
    #: The account's credits before and after the run (``None``: the endpoint did not say).
    credits_before: int | None = None
    credits_after: int | None = None
    problems: list[tuple[BulkJob, str, str]] = attrs.field(factory=list)
    #: The store the run kept its jobs in, for messages (never a password).
    store: str = ""


def summary_table(
    title: str,
    rows: Iterable[tuple[str, object]],
    *,
    columns: tuple[str, str] | None = ("jobs", "count"),
) -> Table:
    """A two-column rich table of ``(label, value)`` rows, values right-aligned.

    ``columns`` are the headings; ``None`` means no heading row.
    """
    from rich.table import Table  # noqa: PLC0415 - rich is optional

    table = Table(title=title, show_header=columns is not None)
    table.add_column(columns[0] if columns else "", justify="left")
    table.add_column(columns[1] if columns else "", justify="right")
    for label, value in rows:
        table.add_row(label, str(value))
    return table


def print_summary(summary: BulkSummary, out_path: Path) -> None:
    """Print the bulk run's tables: its counts, then the jobs that did not succeed."""
    from rich.console import Console  # noqa: PLC0415 - rich is optional
    from rich.table import Table  # noqa: PLC0415

    console = Console()
    # (label, count, shown when 0): the rarer counts show only when they happen.
    rows = (
        ("total (valid rows)", summary.total, True),
        ("done", summary.done, True),
        ("recovered (by callback)", summary.recovered, False),
        ("failed", summary.failed, True),
        ("uncertain", summary.uncertain, True),
        ("not run (parent did not succeed)", summary.not_run, False),
        ("pending (not sent: run again)", summary.pending, False),
        ("unfinished (task made, result not saved: run again)", summary.unfinished, False),
        ("ended in this run", summary.ran, True),
        ("skipped (finished earlier)", summary.skipped, True),
        ("re-attached by task id", summary.reattached, True),
        ("re-submitted (were uncertain)", summary.resubmitted, True),
        ("re-submitted (task failed earlier)", summary.retried, False),
        ("bad rows skipped", summary.bad_rows, True),
        ("rate-limited waits", summary.rate_limited_waits, True),
    )
    shown = [(label, count) for label, count, always in rows if always or count]
    console.print(summary_table("midvary bulk", shown))
    if summary.problems:
        problems = Table(title="jobs that did not succeed", show_header=True)
        for column in ("line", "id", "status", "error"):
            problems.add_column(column)
        # In the JOBS file's order, whatever order the jobs ended in (the same every run).
        ordered = sorted(summary.problems, key=lambda problem: (problem[0].line, problem[0].key))
        for job, status, message in ordered[:20]:
            problems.add_row(str(job.line), job.key, status, message)
        console.print(problems)
        if len(ordered) > 20:
            console.print(f"... and {len(ordered) - 20} more (see {out_path})")
        if any(status == "failed" for _job, status, _message in ordered):
            console.print(
                "to send the failed jobs again: the same command with --retry-failed "
                "(uncertain jobs are never re-sent automatically)",
                markup=False,
                highlight=False,
            )
    console.print(f"results: {out_path}", markup=False, highlight=False)
    console.print(f"store: {summary.store}", markup=False, highlight=False)
