"""The account's submission window in a store, shaped like the in-process limiter.

:class:`StoreLimiter` has the shape of the in-process ``SubmitLimiter`` (``slot()``,
``slow_down()``, ``close()``), backed by a store's shared window: the limiter of a
session with a store, for its POSTs whose claim does not take the slot itself.
"""

from __future__ import annotations

import logging

from .._errors import StoreError
from .._ratelimit import Slot, WindowLimiter
from .._validate import finite_seconds
from ._base import Store
from ._hold import SLOT_LEASE

logger = logging.getLogger("midvary._store")


class StoreLimiter(WindowLimiter):
    """The account's submission window in a store, shaped like the in-process limiter.

    Submissions of this process queue first come, first served; the store arbitrates
    between processes. Ending a slot is best effort: if the store fails then, the slot's
    lease expires into a stamp, and the POST's result is kept. A store that fails before
    the slot is taken raises :class:`~midvary.StoreError` from :meth:`slot` (nothing to
    send).

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
        super().__init__(rate)
        self.store = store
        self.namespace = namespace
        self._slot_lease_s = finite_seconds(slot_lease_s, "slot_lease_s")

    def __repr__(self) -> str:
        return f"<StoreLimiter rate={self.rate!r} store={self.store!r}>"

    async def _acquire(self, slot_id: str) -> float:
        assert self.rate is not None  # noqa: S101 - a store's limiter always has a rate
        return await self.store.acquire_slot(
            self.namespace, rate=self.rate, slot_id=slot_id, lease_s=self._slot_lease_s
        )

    async def _end(self, slot: Slot) -> None:
        try:
            await self.store.end_slot(self.namespace, slot.slot_id, refunded=slot.refunded)
        except StoreError as exc:
            logger.warning("could not end a submission slot in the store: %s", exc)

    async def pause(self, seconds: float) -> None:
        """Pause every process's submissions on the account for ``seconds`` (shared)."""
        left = await self.store.pause(self.namespace, pause_s=max(seconds, 0.0))
        logger.info("submissions on this account paused for %.3g s (shared)", left)

    async def slow_down(self, pause: float) -> int:
        """A 429 got through: halve the shared allowance and pause everyone ``pause`` s.

        Returns the new allowance (submissions per window, shared by every process).
        """
        assert self.rate is not None  # noqa: S101 - a store's limiter always has a rate
        allowance = await self.store.slow_down(
            self.namespace, rate=self.rate, pause_s=max(pause, 0.0)
        )
        logger.info(
            "rate limited by the provider: now at most %d submissions per %g s (shared)",
            allowance,
            self.rate[1],
        )
        return allowance
