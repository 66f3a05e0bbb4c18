"""The fast test mode: polling and retry policies measured in milliseconds.

Give them to a session that talks to a :class:`~midvary.testing.FakeProvider` (whose default
tasks take 0.05 to 0.2 s) so that tests wait milliseconds, not the seconds a real provider
needs; or turn the test mode on (:func:`set_testing`, ``MIDVARY_TESTING=1``) and every
session built without policies takes them. ``attrs.evolve`` one to change a single knob.
"""

from __future__ import annotations

from .._testmode import FAST_POLL, FAST_RETRY, TESTING_ENV, TestingMode, is_testing, set_testing

__all__ = ["FAST_POLL", "FAST_RETRY", "TESTING_ENV", "TestingMode", "is_testing", "set_testing"]
