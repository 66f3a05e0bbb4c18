"""Callback deliveries: one scheduler task that sleeps until the next task finishes."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import itertools
import logging
from collections.abc import Callable

import aiohttp
import yarl

from ._settings import FakeSettings
from ._state import Task
from ._stats import CallbackFailure, FakeStats
from ._wire import callback_payload, callback_signature

logger = logging.getLogger(__name__)

# Deliveries in flight at once; more wait their turn, so a flood of finishing tasks cannot
# open thousands of sockets.
_MAX_CONCURRENT_DELIVERIES = 32


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` points at this machine (``localhost`` or a loopback address)."""
    host = yarl.URL(url).host
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CallbackScheduler:
    """Delivers each finished task's callback when the provider's clock reaches its finish.

    One asyncio task waits for the earliest due delivery (or a wake-up) and hands due ones
    to short delivery tasks. Failures are recorded in the figures, never raised.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        wall: Callable[[float], float],
        settings: Callable[[], FakeSettings],
        results_base: Callable[[], str],
        stats: FakeStats,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._settings = settings
        self._results_base = results_base
        self._stats = stats
        self._heap: list[tuple[float, int, Task, int]] = []
        self._serial = itertools.count()
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(_MAX_CONCURRENT_DELIVERIES)
        self._deliveries: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def pending(self) -> int:
        """Deliveries scheduled or in flight."""
        return len(self._heap) + len(self._deliveries)

    def start(self) -> None:
        """Start the scheduler task and the session deliveries use."""
        self._session = aiohttp.ClientSession()
        self._runner = asyncio.create_task(self._run(), name="fake-provider-callbacks")

    async def close(self) -> None:
        """Cancel the scheduler and every delivery in flight, and close the session."""
        tasks = [*self._deliveries, *([self._runner] if self._runner else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runner = None
        self._heap.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def schedule(self, task: Task, copies: int) -> None:
        """Deliver ``task``'s callback ``copies`` times once it finishes."""
        for _ in range(copies):
            self._push(task.finished_at, task, 1)
        self.wake()

    def wake(self) -> None:
        """Make the scheduler look at the clock again (after the clock jumped, say)."""
        self._wake.set()

    async def settle(self) -> None:
        """Wait until every delivery due by now has been answered or has failed."""
        while self._runner is not None and not self._runner.done():
            if self._heap and self._heap[0][0] <= self._clock():
                self.wake()
                await asyncio.sleep(0)  # let the scheduler hand them out
            elif self._deliveries:
                await asyncio.wait(set(self._deliveries))
            else:
                return

    def _push(self, due: float, task: Task, attempt: int) -> None:
        heapq.heappush(self._heap, (due, next(self._serial), task, attempt))

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                _, _, task, attempt = heapq.heappop(self._heap)
                delivery = asyncio.create_task(self._deliver(task, attempt))
                self._deliveries.add(delivery)
                delivery.add_done_callback(self._deliveries.discard)
            timeout = self._heap[0][0] - now if self._heap else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _deliver(self, task: Task, attempt: int) -> None:
        async with self._limit:
            reason = await self._post(task)
        if reason is None:
            self._stats.callbacks_delivered += 1
            return
        url = task.params.callback_url or ""
        self._stats.callback_failures.append(
            CallbackFailure(task_id=task.task_id, url=url, attempt=attempt, reason=reason),
        )
        logger.debug("callback for %s to %s failed: %s", task.task_id, url, reason)
        delays = self._settings().callback_retry_delays
        if attempt <= len(delays):
            self._push(self._clock() + delays[attempt - 1], task, attempt + 1)
            self.wake()

    async def _post(self, task: Task) -> str | None:
        """POST one callback; return why it failed, or ``None`` when it got HTTP 200."""
        settings = self._settings()
        url = task.params.callback_url
        assert url is not None  # noqa: S101  # only tasks with a callBackUrl are scheduled
        assert self._session is not None  # noqa: S101  # deliveries run between start and close
        self._stats.callbacks_sent += 1
        if settings.callback_loopback_only and not is_loopback_url(url):
            return "not sent: the host is not loopback (callback_loopback_only)"
        headers = {}
        if settings.callback_hmac_key is not None:
            timestamp = str(int(self._wall(self._clock())))
            headers["X-Webhook-Timestamp"] = timestamp
            headers["X-Webhook-Signature"] = callback_signature(
                settings.callback_hmac_key,
                task.task_id,
                timestamp,
            )
        try:
            async with self._session.post(
                url,
                json=callback_payload(task, self._results_base()),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=settings.callback_timeout),
            ) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if response.status == 200 else f"HTTP {response.status}"
