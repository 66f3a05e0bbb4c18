"""The fleet campaigns' arq settings: ``python -m arq tests.campaigns.fleet_settings.ArqSettings``.

A subclass of :class:`midvary.arq.WorkerSettings` changing what arq users change (which
is itself under test: arq reads only the class's own ``__dict__``): a short
``job_timeout``, so the jobs of a SIGKILLed worker are re-delivered within seconds (arq
waits ``job_timeout + 10`` s; the campaign sets ``MIDVARY_CLAIM_LEASE=2`` to match), and a
quick queue poll. Its startup makes the session's
polls fast for the fake provider's 0.5-1.5 s tasks.
"""

from __future__ import annotations

from typing import Any

import midvary
from midvary.arq import WorkerSettings, session_of, startup

FAST = midvary.PollPolicy(
    initial_delay=0.3, factor=1.0, max_delay=0.3, jitter=0.1, timeout=30.0, target_delay=None
)


async def fast_startup(ctx: dict[str, Any]) -> None:
    """Run the midvary startup, then make polls fast for the fake provider."""
    await startup(ctx)
    session_of(ctx).poll = FAST


class ArqSettings(WorkerSettings):
    """Short job timeout and quick queue polls; everything else inherited."""

    on_startup = fast_startup
    job_timeout = 6.0
    poll_delay = 0.05
    max_tries = 10


class BenchSettings(ArqSettings):
    """For benchmark B8: jobs may wait long for the shared limit, so a long job timeout."""

    job_timeout = 300.0
