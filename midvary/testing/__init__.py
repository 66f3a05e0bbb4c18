"""A fake kie.ai Midjourney provider, to test code that uses midvary without the network.

:class:`FakeProvider` serves the provider's contract over loopback, with knobs
(:class:`FakeSettings`) for its awkward habits, failures and faults, and figures
(:class:`FakeStats`) about what clients did to it::

    from midvary.testing import FakeProvider, FakeSettings

    async with FakeProvider(settings=FakeSettings(task_duration=(0.1, 0.5))) as fake:
        ...  # point a client at fake.base_url with fake.api_key

pytest users can enable the fixtures of :mod:`midvary.testing.pytest_plugin` instead.

The fast test mode is :data:`FAST_POLL` and :data:`FAST_RETRY`: policies in milliseconds for
a session that talks to the fake (the plugin's ``midvary_session`` uses them)::

    midvary.Session(..., poll=midvary.testing.FAST_POLL, retry=midvary.testing.FAST_RETRY)

or, for every session built without policies in this process and the processes it starts
(the CLI, workers), one switch, :func:`set_testing` (a context manager too), or the
environment variable ``MIDVARY_TESTING=1``::

    midvary.testing.set_testing(True)  # in conftest.py
"""

from .._testmode import FAST_POLL, FAST_RETRY, TESTING_ENV, TestingMode, is_testing, set_testing
from ._clock import ManualClock
from ._images import PNG_SIGNATURE
from ._provider import FakeProvider
from ._settings import FAULT_KINDS, Endpoint, FakeSettings, FaultKind, TimeFormat
from ._state import SubmitKind, SuccessFlag, TaskSnapshot
from ._stats import CallbackFailure, FakeStats
from ._wire import callback_signature

__all__ = [
    "FAST_POLL",
    "FAST_RETRY",
    "FAULT_KINDS",
    "PNG_SIGNATURE",
    "TESTING_ENV",
    "CallbackFailure",
    "Endpoint",
    "FakeProvider",
    "FakeSettings",
    "FakeStats",
    "FaultKind",
    "ManualClock",
    "SubmitKind",
    "SuccessFlag",
    "TaskSnapshot",
    "TestingMode",
    "TimeFormat",
    "callback_signature",
    "is_testing",
    "set_testing",
]
