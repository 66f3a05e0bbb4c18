"""The fast test mode: polling and retry policies measured in milliseconds.

Give them to a session that talks to a :class:`~midvary.testing.FakeProvider` (whose default
tasks take 0.05 to 0.2 s) so that tests wait milliseconds, not the seconds a real provider
needs. ``attrs.evolve`` one to change a single knob for one test.
"""

from __future__ import annotations

from typing import Final

from .._config import PollPolicy, RetryPolicy

#: Polls in milliseconds and no jitter: first poll after 0.02 s, then backoff up to 0.1 s;
#: once durations are learned it aims at a 0.02 s detection delay. Waits give up after 30 s;
#: "not found" is tolerated for the first 5 s.
FAST_POLL: Final = PollPolicy(
    initial_delay=0.02,
    factor=1.5,
    max_delay=0.1,
    jitter=0.0,
    timeout=30.0,
    not_found_grace=5.0,
    target_delay=0.02,
)

#: Retries in milliseconds and no jitter: 8 attempts, waits from 0.01 s up to 0.05 s (a
#: ``Retry-After`` the provider sends is still honoured, as in production).
FAST_RETRY: Final = RetryPolicy(attempts=8, wait_initial=0.01, wait_max=0.05, wait_jitter=0.0)
