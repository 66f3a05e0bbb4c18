"""The test mode: one switch that makes every session's default policies the fast ones.

A session built without ``poll=`` or ``retry=`` takes :func:`default_poll` and
:func:`default_retry`: the production policies, or, in the test mode, :data:`FAST_POLL` and
:data:`FAST_RETRY` (milliseconds instead of seconds, for a session that talks to the fake
provider). The mode is on when :func:`set_testing` turned it on, or else when the
``MIDVARY_TESTING`` environment variable is ``1`` (``true``, ``yes`` and ``on`` count too).
:func:`set_testing` also sets that variable, so the processes a test starts (the CLI, arq or
Celery workers) are in the test mode too.
"""

from __future__ import annotations

import os
from typing import Final

from ._config import PollPolicy, RetryPolicy

#: The environment variable that turns the test mode on in a process (and its children).
TESTING_ENV: Final = "MIDVARY_TESTING"
_ON: Final = frozenset({"1", "true", "yes", "on"})
_OFF: Final = frozenset({"", "0", "false", "no", "off"})

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
#: ``Retry-After`` the provider sends is still honoured, as in production); an outage (455,
#: no connection) is tried again after 0.01 s, doubling up to 0.1 s, and waited out for 5 s.
FAST_RETRY: Final = RetryPolicy(
    attempts=8,
    wait_initial=0.01,
    wait_max=0.05,
    wait_jitter=0.0,
    outage_budget=5.0,
    outage_probe=0.01,
    outage_probe_max=0.1,
)


def is_testing() -> bool:
    """Whether the test mode is on in this process (see the module docstring).

    Raises:
        ValueError: ``MIDVARY_TESTING`` holds something other than a yes or a no.

    """
    value = os.environ.get(TESTING_ENV, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(
        f"{TESTING_ENV} must be 1/true/yes/on or 0/false/no/off (or unset), got {value!r}"
    )


def default_poll() -> PollPolicy:
    """The poll policy of a session built without one: :data:`FAST_POLL` in the test mode."""
    return FAST_POLL if is_testing() else PollPolicy()


def default_retry() -> RetryPolicy:
    """The retry policy of a session built without one: :data:`FAST_RETRY` in the test mode."""
    return FAST_RETRY if is_testing() else RetryPolicy()


class TestingMode:
    """What :func:`set_testing` returns: leaving it as a context manager restores the mode.

    Not needed when the mode is set for good (a test suite's ``conftest.py``).
    """

    __slots__ = ("_previous",)

    def __init__(self, previous: str | None) -> None:
        self._previous = previous

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        if self._previous is None:
            os.environ.pop(TESTING_ENV, None)
        else:
            os.environ[TESTING_ENV] = self._previous


def set_testing(testing: bool) -> TestingMode:
    """Turn the test mode on or off for this process and the processes it starts.

    Sessions built afterwards without ``poll=``/``retry=`` take the fast policies (or the
    production ones again); a session's policies never change once it is built. It sets
    ``MIDVARY_TESTING``, so child processes inherit the mode. Use it once (a ``conftest.py``)
    or as a context manager, which restores the mode it found::

        with midvary.testing.set_testing(True):
            subprocess.run(["midvary", "bulk", "jobs.csv"], check=True)

    Args:
        testing: ``True`` for the fast policies, ``False`` for the production ones.

    """
    previous = os.environ.get(TESTING_ENV)
    os.environ[TESTING_ENV] = "1" if testing else "0"
    return TestingMode(previous)
