"""The fake provider for blocking tests: served from a thread (and loop) of its own."""

from __future__ import annotations

import asyncio
import threading

from midvary.testing import FakeProvider, FakeSettings


class FakeThread:
    """The fake provider served from a thread of its own (as a real provider is elsewhere)."""

    def __init__(self, settings: FakeSettings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-provider")
        self.thread.start()

        async def start() -> FakeProvider:
            fake = FakeProvider(settings=settings)
            await fake.start()
            return fake

        self.fake = asyncio.run_coroutine_threadsafe(start(), self.loop).result()

    def close(self) -> None:
        """Close the fake and join its thread."""
        asyncio.run_coroutine_threadsafe(self.fake.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()
