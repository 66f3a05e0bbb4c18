"""Fixtures for integration tests: midvary's public API against the fake provider over loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import attrs
import pytest

import midvary
import midvary.testing
from midvary.testing import FakeProvider, FakeSettings, ManualClock

#: The fake's wall clock at start (Unix seconds), so that reported times can be predicted.
WALL_START = 1_700_000_000.0
#: The manual clock's reading at start.
CLOCK_START = 1000.0

#: Fast, clean knobs; each test changes what it exercises.
BASE_SETTINGS: dict[str, Any] = {
    "task_duration": (0.05, 0.2),
    "invisible_for": 0.01,
    "submit_limit": None,
}

#: The fast test mode: polling and retries in milliseconds (see midvary.testing).
FAST_POLL = midvary.testing.FAST_POLL
FAST_RETRY = midvary.testing.FAST_RETRY


class StartFake(Protocol):
    """The type of the ``start_fake`` fixture."""

    def __call__(
        self, *, clock: ManualClock | None = ..., seed: int = ..., **settings: Any
    ) -> Awaitable[FakeProvider]:
        """Start a fake provider with ``settings`` over the test defaults."""
        ...


class OpenSession(Protocol):
    """The type of the ``open_session`` fixture."""

    def __call__(
        self,
        fake: FakeProvider,
        *,
        api_key: str | None = ...,
        retry: midvary.RetryPolicy = ...,
        index_base: int = ...,
        **poll_changes: Any,
    ) -> Awaitable[midvary.Session]:
        """Open a session against ``fake`` (its key unless ``api_key``), FAST_POLL changed."""
        ...


@pytest.fixture
def clock() -> ManualClock:
    """A clock for the fake that moves only when the test advances it."""
    return ManualClock(CLOCK_START)


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    """Closes what a test opened, in reverse order (sessions before their fake)."""
    async with contextlib.AsyncExitStack() as exits:
        yield exits


@pytest.fixture
def start_fake(stack: contextlib.AsyncExitStack) -> StartFake:
    """Start fake providers on loopback; closed after the test."""

    async def start(
        *, clock: ManualClock | None = None, seed: int = 0, **settings: Any
    ) -> FakeProvider:
        fake = FakeProvider(
            settings=FakeSettings(**{**BASE_SETTINGS, **settings}),
            seed=seed,
            clock=clock,
            wall_clock=(lambda: WALL_START) if clock is not None else None,
        )
        return await stack.enter_async_context(fake)

    return start


@pytest.fixture
def open_session(stack: contextlib.AsyncExitStack) -> OpenSession:
    """Open midvary sessions against a fake with fast policies; closed after the test."""

    async def open_(
        fake: FakeProvider,
        *,
        api_key: str | None = None,
        retry: midvary.RetryPolicy = FAST_RETRY,
        index_base: int = 0,
        **poll_changes: Any,
    ) -> midvary.Session:
        session = midvary.Session(
            api_key=api_key if api_key is not None else fake.api_key,
            base_url=fake.base_url,
            poll=attrs.evolve(FAST_POLL, **poll_changes),
            retry=retry,
            index_base=index_base,
            seed=7,
            submit_rate=None,  # like the fake's default here: no submit limit
        )
        return await stack.enter_async_context(session)

    return open_


def wall(reading: float) -> datetime:
    """The time the fake reports for its manual clock's ``reading``."""
    return datetime.fromtimestamp(WALL_START + reading - CLOCK_START, UTC)


def close_to(when: datetime | None, expected: datetime) -> bool:
    """Whether a reported time matches to the millisecond the wire carries."""
    return when is not None and abs(when - expected) <= timedelta(milliseconds=1)


def finish(clock: ManualClock, fake: FakeProvider, task_id: str) -> None:
    """Advance the manual clock just past the task's finish."""
    clock.advance(max(0.0, fake.task(task_id).finished_at - clock()) + 0.001)


def polls(fake: FakeProvider, task_id: str) -> int:
    """record-info requests the fake counted for ``task_id``."""
    return fake.stats.polls.get(task_id, 0)
