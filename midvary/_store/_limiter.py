"""The account's submission window in a store, shaped like the in-process limiter.

:class:`StoreLimiter` has the shape of the in-process ``SubmitLimiter`` (``slot()``,
``slow_down()``, ``close()``), backed by a store's shared window: the limiter of a
session with a store, for its POSTs whose claim does not take the slot itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from .._errors import StoreError
from ._base import Store, check_seconds
from ._hold import SLOT_LEASE, OnWait, new_id

logger = logging.getLogger("midvary._store")


class StoreSlot:
    """One POST's place in the shared window; see :meth:`StoreLimiter.slot`."""

    __slots__ = ("refunded", "slot_id")

    def __init__(self, slot_id: str) -> None:
        self.slot_id = slot_id
        self.refunded = False

    def refund(self) -> None:
        """The POST was certainly not accepted: it does not count against the window."""
        self.refunded = True


class StoreLimiter:
    """The account's submission window in a store, shaped like the in-process limiter.

    Args:
        store: The store holding the window.
        namespace: The account's namespace.
        rate: ``(count, window_seconds)``.
        slot_lease_s: Seconds a slot counts as in flight if its process dies with it.

    """

    def __init__(
        self,
        store: Store,
        namespace: str,
        rate: tuple[int, float],
        *,
        slot_lease_s: float = SLOT_LEASE,
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.rate = rate
        self._slot_lease_s = check_seconds("slot_lease_s", slot_lease_s)
        self._turn = asyncio.Lock()
        self._closed: BaseException | None = None
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<StoreLimiter rate={self.rate!r} store={self.store!r}>"

    @contextlib.asynccontextmanager
    async def slot(self, on_wait: OnWait | None = None) -> AsyncIterator[StoreSlot]:
        """Hold one slot of the shared window for the body (one POST).

        Submissions of this process queue first come, first served; the store arbitrates
        between processes. The slot is stamped when the body ends unless it called
        :meth:`StoreSlot.refund`. Ending the slot is best effort: if the store fails then,
        the slot's lease expires into a stamp, and the body's result is kept.

        Raises:
            StoreError: The store failed before the slot was taken (nothing to send).

        """
        slot = StoreSlot(new_id())
        async with self._turn:
            while True:
                if self._closed is not None:
                    raise self._closed
                wait = await self.store.acquire_slot(
                    self.namespace, rate=self.rate, slot_id=slot.slot_id,
                    lease_s=self._slot_lease_s,
                )  # fmt: skip
                if wait == 0.0:
                    break
                if on_wait is not None:
                    on_wait(wait)
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
        try:
            yield slot
        finally:
            try:
                await self.store.end_slot(self.namespace, slot.slot_id, refunded=slot.refunded)
            except StoreError as exc:
                logger.warning("could not end a submission slot in the store: %s", exc)
            self._changed.set()  # wake this process's next waiter at once

    async def pause(self, seconds: float) -> None:
        """Pause every process's submissions on the account for ``seconds`` (shared)."""
        left = await self.store.pause(self.namespace, pause_s=max(seconds, 0.0))
        logger.info("submissions on this account paused for %.3g s (shared)", left)

    async def slow_down(self, pause: float) -> int:
        """A 429 got through: halve the shared allowance and pause everyone ``pause`` s.

        Returns the new allowance (submissions per window, shared by every process).
        """
        allowance = await self.store.slow_down(
            self.namespace, rate=self.rate, pause_s=max(pause, 0.0)
        )
        logger.info(
            "rate limited by the provider: now at most %d submissions per %g s (shared)",
            allowance,
            self.rate[1],
        )
        return allowance

    def close(self, error: BaseException) -> None:
        """Make every current and later wait for a slot raise ``error``."""
        self._closed = error
        self._changed.set()
