"""Local validation: bad input raises before any request is sent."""

from __future__ import annotations

import sys

import attrs
import pytest

import midvary

from .mockapi import MockAPI


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "words"),
    [
        (("p", True), {}, TypeError, "image_index must be an int"),
        (("p", 1.0), {}, TypeError, "image_index must be an int"),
        (("p", "1"), {}, TypeError, "image_index must be an int"),
        (("p", 4), {}, ValueError, "0, 1, 2 or 3"),
        (("p", -1), {}, ValueError, "0, 1, 2 or 3"),
        (("", 0), {}, ValueError, "non-empty task id"),
        (("a b", 0), {}, ValueError, "without whitespace"),
        ((None, 0), {}, TypeError, "task_id must be a str"),
        (("p", 0), {"water_mark": 5}, TypeError, "water_mark must be a str"),
        (("p", 0), {"callback_url": "ftp://x.test/cb"}, ValueError, "http:// or https://"),
        (("p", 0), {"callback_url": "/relative/cb"}, ValueError, "http:// or https://"),
        (("p", 0), {"callback_url": 7}, TypeError, "callback_url must be a str"),
    ],
)
async def test_invalid_vary_arguments_send_nothing(
    session: midvary.Session,
    api: MockAPI,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    error: type[Exception],
    words: str,
) -> None:
    """Each invalid argument raises a clear error that says what is allowed; 0 requests."""
    with pytest.raises(error, match=words):
        await session.vary(*args, **kwargs)  # type: ignore[arg-type]
    assert api.count() == 0


class _Index(int):
    """An int subclass: not the fast path's exact int, still a valid image index."""


class _Text(str):
    """A str subclass: not the fast path's exact str, still valid text."""


def test_vary_request_subclassed_values_go_through_the_full_checks() -> None:
    """int/str subclasses are judged by the field checkers: valid ones kept, bad ones refused."""
    request = midvary.VaryRequest(task_id=_Text("p1"), image_index=_Index(3), water_mark=_Text("w"))
    assert (request.task_id, request.image_index, request.water_mark) == ("p1", 3, "w")
    with pytest.raises(ValueError, match="0, 1, 2 or 3"):
        midvary.VaryRequest(task_id="p1", image_index=_Index(4))
    with pytest.raises(ValueError, match="without whitespace"):
        midvary.VaryRequest(task_id=_Text("p 1"), image_index=0)
    with pytest.raises(ValueError, match="http:// or https://"):
        attrs.evolve(request, callback_url="ftp://x.test/cb")


@pytest.mark.parametrize("bad", ["", " ", "a b", 5])
async def test_invalid_task_ids_for_lookups(
    session: midvary.Session, api: MockAPI, bad: object
) -> None:
    """task() and get_task() validate the id before any I/O."""
    with pytest.raises((TypeError, ValueError)):
        session.task(bad)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError)):
        await session.get_task(bad)  # type: ignore[arg-type]
    assert api.count() == 0


# Every character str.isspace() accepts (tab, NBSP, ideographic space, \x1c ...), not just " ".
_WHITESPACE = [chr(code) for code in range(sys.maxunicode + 1) if chr(code).isspace()]


@pytest.mark.parametrize("space", _WHITESPACE, ids=lambda space: f"U+{ord(space):04X}")
def test_task_ids_with_any_whitespace_are_refused(space: str) -> None:
    """A task id holding any Unicode whitespace character is refused; without it, accepted."""
    with pytest.raises(ValueError, match="without whitespace"):
        midvary.VaryRequest(task_id=f"abc{space}def", image_index=0)
    assert midvary.VaryRequest(task_id="abc-def", image_index=0).task_id == "abc-def"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_delay": 0},
        {"initial_delay": -1},
        {"factor": 0.5},
        {"max_delay": 0},
        {"jitter": -0.1},
        {"timeout": 0},
        {"not_found_grace": -1},
        {"initial_delay": "2"},
    ],
)
def test_poll_policy_validates(kwargs: dict[str, object]) -> None:
    """PollPolicy rejects nonsense on construction."""
    with pytest.raises((TypeError, ValueError)):
        midvary.PollPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"attempts": True}, {"wait_initial": 0}, {"max_retry_after": -1}]
)
def test_retry_policy_validates(kwargs: dict[str, object]) -> None:
    """RetryPolicy rejects nonsense on construction."""
    with pytest.raises((TypeError, ValueError)):
        midvary.RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policies_are_frozen_and_keyword_only() -> None:
    """Policies are immutable and take keywords only."""
    policy = midvary.PollPolicy()
    with pytest.raises(AttributeError):
        policy.timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        midvary.PollPolicy(1.0)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"base_url": "api.kie.ai"}, ValueError),
        ({"base_url": "ftp://api.kie.ai"}, ValueError),
        ({"base_url": "https://api.kie.ai?x=1"}, ValueError),
        ({"request_timeout": 0}, ValueError),
        ({"index_base": 2}, ValueError),
        ({"poll": {"timeout": 1}}, TypeError),
        ({"api_key": "two words"}, ValueError),
        ({"api_key": 42}, TypeError),
    ],
)
def test_session_arguments_validate(kwargs: dict[str, object], error: type[Exception]) -> None:
    """Bad session settings fail at construction with a clear error."""
    kwargs.setdefault("api_key", "k")
    with pytest.raises(error):
        midvary.Session(**kwargs)  # type: ignore[arg-type]
