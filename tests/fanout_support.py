"""Helpers for the fan-out, download and bulk CLI tests: a fast fake provider and session."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs

import midvary
from midvary.testing import FakeProvider, FakeSettings

from .conftest import FAST_POLL, FAST_RETRY

#: FAST_POLL without the learned schedule, whose step (2 x target_delay) would be seconds.
POLL = attrs.evolve(FAST_POLL, target_delay=None)

#: Fake settings that keep tests fast: short tasks, nearly no invisibility, no submit limit.
FAST_FAKE: dict[str, Any] = {
    "task_duration": (0.02, 0.1),
    "invisible_for": 0.0,
    "submit_limit": None,
}


@contextlib.asynccontextmanager
async def fake_session(
    *, seed: int = 0, submit_rate: tuple[int, float] | None = None, **settings: Any
) -> AsyncIterator[tuple[FakeProvider, midvary.Session]]:
    """A fake provider with fast settings (overridable) and a fast session against it."""
    fake = FakeProvider(settings=FakeSettings(**{**FAST_FAKE, **settings}), seed=seed)
    async with fake:
        session = midvary.Session(
            api_key=fake.api_key,
            base_url=fake.base_url,
            poll=POLL,
            retry=FAST_RETRY,
            seed=seed,
            submit_rate=submit_rate,
        )
        async with session:
            yield fake, session


def requests(count: int, *, prefix: str = "parent-") -> Iterator[midvary.VaryRequest]:
    """``count`` distinct requests (4 images per parent), so no two are duplicates."""
    for n in range(count):
        yield midvary.VaryRequest(task_id=f"{prefix}{n // 4}", image_index=n % 4, id=f"job-{n}")
