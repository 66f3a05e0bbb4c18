"""Clocks the fake provider can run on."""

from __future__ import annotations

from collections.abc import Callable


class ManualClock:
    """A clock that moves only when told to, for tests that must not sleep.

    Pass it as ``FakeProvider(clock=...)``: task durations, invisibility, submit-limit
    windows, maintenance windows, detection delays and callback due times then follow it.
    (Request ``latency`` is still real time: it is a delay on the socket.)

    Args:
        start: The clock's initial reading, in seconds.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._listeners: list[Callable[[], None]] = []

    def __call__(self) -> float:
        """The current reading, in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (>= 0) and wake whoever waits on it."""
        if not seconds >= 0:
            raise ValueError(f"a clock only moves forward; got {seconds!r} seconds")
        self._now += seconds
        for listener in list(self._listeners):
            listener()

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after every ``advance``; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)
