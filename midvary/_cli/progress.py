"""The live progress of ``bulk`` and ``demo``: a rich bar on a terminal, plain lines if not."""

from __future__ import annotations

from collections.abc import Callable

import midvary

from .tally import Ending, Tally


class Progress:
    """Counters fed by job events, drawn live by rich on a terminal, as plain lines if not.

    ``label`` names the command in the bar and in the plain lines (``bulk``, ``demo``);
    :meth:`ended` counts into ``tally`` (bulk's summary; ``None``: a tally of its own).
    ``outage`` returns the outage the session waits out (shown
    in the line while it lasts; ``None``: not shown).
    """

    def __init__(
        self,
        total: int,
        *,
        tally: Tally | None = None,
        label: str = "bulk",
        outage: Callable[[], midvary.Outage | None] | None = None,
    ) -> None:
        from rich.console import Console  # noqa: PLC0415 - rich is optional
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress  # noqa: PLC0415

        self.console = Console(stderr=True)
        self.label = label
        self.total = total
        self.submitted = 0
        self.running: set[int] = set()
        self.tally = tally if tally is not None else Tally()
        self.rate_limited = 0
        self._outage = outage
        self._live = self.console.is_terminal
        self._bar = RichProgress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self._live,
        )
        self._task = self._bar.add_task(label, total=total, counts=self.counts())
        self._step = max(1, total // 10)
        self._next_line = self._step
        self._printed = -1

    @property
    def finished(self) -> int:
        """Jobs finished, this run and earlier."""
        return self.tally.ended

    def counts(self) -> str:
        """The counters as one line of text."""
        return (
            f"submitted {self.submitted} · running {len(self.running)} · "
            f"done {self.tally.done} · failed {self.tally.failed} · "
            + (f"uncertain {self.tally.uncertain} · " if self.tally.uncertain else "")
            + (f"not run {self.tally.not_run} · " if self.tally.not_run else "")
            + (f"unfinished {self.tally.unfinished} · " if self.tally.unfinished else "")
            + f"rate-limited waits {self.rate_limited}"
            + self._paused()
        )

    def _paused(self) -> str:
        """The outage the session waits out, for the line (empty when there is none)."""
        outage = self._outage() if self._outage is not None else None
        if outage is None:
            return ""
        since = outage.since.strftime("%H:%M:%S")
        return f" · paused: {outage.what} since {since} UTC, next try {outage.next_try:%H:%M:%S}"

    def __enter__(self) -> Progress:
        self._bar.start()
        self._refresh()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._refresh()
        self._bar.stop()
        if not self._live and self._printed != self.finished:
            self._print_line()

    def _print_line(self) -> None:
        """One plain progress line, for logs (no terminal)."""
        self._printed = self.finished
        self.console.print(
            f"{self.label}: {self.finished}/{self.total} finished; {self.counts()}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    def _refresh(self) -> None:
        self._bar.update(self._task, completed=self.finished, counts=self.counts())

    def event(self, event: midvary.JobEvent) -> None:
        """Count one job event."""
        kind = event.kind
        if kind is midvary.JobEventKind.SUBMITTED:
            self.submitted += 1
            self.running.add(event.index)
        elif kind is midvary.JobEventKind.RATE_LIMITED:
            self.rate_limited += 1
        elif kind in (midvary.JobEventKind.DONE, midvary.JobEventKind.FAILED):
            self.running.discard(event.index)
        self._refresh()

    def ended(self, ending: Ending, message: str | None = None) -> None:
        """Count one finished job; ``message`` describes a failed or uncertain one."""
        self.tally.count(ending)
        if ending is not Ending.DONE and message is not None:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)
        self._refresh()
        if not self._live and self.finished >= self._next_line:
            self._next_line += self._step
            self._print_line()
