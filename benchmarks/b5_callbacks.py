"""B5 callbacks: B3's measurement with a ``CallbackReceiver``; runs inside B3's period.

A session with a receiver (HMAC-signed deliveries, default safety poll) runs B3's two
phases (a warm-up of 20 tasks, then 100 tasks) against the same fake provider, alongside
the other clients of B3. Available once ``midvary.CallbackReceiver`` exists.
"""

from __future__ import annotations

from typing import Any

import midvary

from ._harness import (
    HEADER,
    FakeServer,
    Figures,
    Report,
    Sample,
    mean,
    median,
    run_tasks,
    session_options,
)

HMAC_KEY = "benchmark-webhook-key"
TARGET_POLLS = 1.1
TARGET_DELAY = 0.5


class Participant:
    """A session with its own callback receiver, on the loopback interface."""

    def __init__(self, receiver_class: Any) -> None:
        self._receiver_class = receiver_class
        self._receiver: Any = None
        self._session: midvary.Session | None = None

    @classmethod
    def create(cls) -> Participant | None:
        """A participant, or ``None`` when this midvary has no ``CallbackReceiver``."""
        receiver_class = getattr(midvary, "CallbackReceiver", None)
        return None if receiver_class is None else cls(receiver_class)

    async def start(self, fake: FakeServer) -> None:
        """Start the receiver (a free loopback port) and open the session."""
        self._receiver = self._receiver_class(hmac_key=HMAC_KEY)
        await self._receiver.start()
        options = session_options(submit_rate=None, callbacks=self._receiver)
        self._session = midvary.Session(api_key=fake.api_key, base_url=fake.base_url, **options)
        await self._session.__aenter__()

    async def run(self, count: int) -> list[Sample]:
        """Submit ``count`` tasks at once and await each."""
        assert self._session is not None
        return await run_tasks(self._session, count)

    async def stop(self) -> None:
        """Close the session, then stop the receiver."""
        if self._session is not None:
            await self._session.aclose()
        if self._receiver is not None:
            await self._receiver.stop()


def report(figures: Figures | None) -> Report:
    """B5's report from the callback session's figures (``None``: not available)."""
    report = Report(name="B5", title="callbacks: B3 with a CallbackReceiver")
    if figures is None:
        report.available = False
        report.say("not available yet: midvary.CallbackReceiver is not on this branch")
        report.check("polls per task", f"<= {TARGET_POLLS:g}", "not available yet", None)
        report.check("median detection delay", f"<= {TARGET_DELAY:g} s", "not available yet", None)
        return report
    report.say(
        f"{len(figures.samples)} tasks, measured in B3's second phase, alongside B3's clients; "
        "a receiver on a loopback port, HMAC-signed deliveries, the default safety poll."
    )
    report.say("")
    report.say(HEADER)
    report.say(figures.row())
    polls = mean(figures.polls)
    delay = median(s.delay for s in figures.samples)
    report.check("polls per task", f"<= {TARGET_POLLS:g}", f"{polls:.2f}", polls <= TARGET_POLLS)
    report.check(
        "median detection delay", f"<= {TARGET_DELAY:g} s", f"{delay:.3f} s", delay <= TARGET_DELAY
    )
    return report
