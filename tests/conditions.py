"""Awaiting a condition that nothing signals (a counter in the fake provider, a file)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "") -> None:
    """Return once ``predicate()`` is true; fail after ``timeout`` seconds.

    Used only where the system under test offers no event to await; the interval is short
    and the bound makes a broken condition a failure, not a hang.
    """
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - nothing signals these conditions
            await asyncio.sleep(0.005)
    del what
