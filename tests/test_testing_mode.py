"""The test mode: one switch (or one environment variable) for every session and process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import midvary
import midvary.testing

KEY = "sk-TEST-MODE"


def test_the_switch_picks_the_default_policies() -> None:
    """Sessions built without policies take the fast ones only while the mode is on."""
    with midvary.testing.set_testing(False):
        assert not midvary.testing.is_testing()
        production = midvary.Session(api_key=KEY)
        with midvary.testing.set_testing(True):
            fast = midvary.Session(api_key=KEY)
            explicit = midvary.Session(api_key=KEY, poll=midvary.PollPolicy())
        assert not midvary.testing.is_testing()
    assert (production.poll, production.retry) == (midvary.PollPolicy(), midvary.RetryPolicy())
    assert (fast.poll, fast.retry) == (midvary.testing.FAST_POLL, midvary.testing.FAST_RETRY)
    assert explicit.poll == midvary.PollPolicy()


def test_leaving_the_switch_restores_what_it_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset variable is unset again after the block; a set one gets its value back."""
    monkeypatch.delenv(midvary.testing.TESTING_ENV, raising=False)
    with midvary.testing.set_testing(True):
        assert os.environ[midvary.testing.TESTING_ENV] == "1"
    assert midvary.testing.TESTING_ENV not in os.environ
    monkeypatch.setenv(midvary.testing.TESTING_ENV, "yes")
    with midvary.testing.set_testing(False):
        assert not midvary.testing.is_testing()
    assert os.environ[midvary.testing.TESTING_ENV] == "yes"


def test_the_mode_reaches_a_child_process() -> None:
    """A process started inside the switch builds fast sessions; one started outside does not."""
    script = (
        "import midvary, midvary.testing\n"
        "session = midvary.Session(api_key='sk-child')\n"
        "print(session.poll == midvary.testing.FAST_POLL,"
        " session.retry == midvary.testing.FAST_RETRY)\n"
    )
    command = [sys.executable, "-c", script]
    with midvary.testing.set_testing(True):
        inside = subprocess.run(command, capture_output=True, text=True, check=True)  # noqa: S603
    with midvary.testing.set_testing(False):
        outside = subprocess.run(command, capture_output=True, text=True, check=True)  # noqa: S603
    assert inside.stdout.split() == ["True", "True"]
    assert outside.stdout.split() == ["False", "False"]


def test_a_value_that_is_neither_yes_nor_no_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """MIDVARY_TESTING=maybe: a ValueError that names the variable and what it takes."""
    monkeypatch.setenv(midvary.testing.TESTING_ENV, "maybe")
    with pytest.raises(ValueError, match=r"MIDVARY_TESTING must be 1/true/yes/on or 0/false"):
        midvary.Session(api_key=KEY)
