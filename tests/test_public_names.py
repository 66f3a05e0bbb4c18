"""Public names say they are ``midvary.X`` in reprs, tracebacks and pickles."""

from __future__ import annotations

import inspect
import pickle
import traceback

import pytest

import midvary


def public_classes_and_functions() -> list[str]:
    """The names in ``midvary.__all__`` bound to a class or a function."""
    return [
        name
        for name in midvary.__all__
        if inspect.isclass(getattr(midvary, name)) or inspect.isfunction(getattr(midvary, name))
    ]


def test_every_public_class_and_function_lives_in_midvary() -> None:
    """Each public class and function has __module__ == "midvary" and is found there by name."""
    names = public_classes_and_functions()
    assert len(names) >= 30
    wrong = {
        n: getattr(midvary, n).__module__
        for n in names
        if getattr(midvary, n).__module__ != "midvary"
    }
    assert wrong == {}
    assert all(
        getattr(midvary, getattr(midvary, n).__qualname__) is getattr(midvary, n) for n in names
    )


def test_a_traceback_names_midvary_task_failed_error() -> None:
    """A raised TaskFailedError prints as midvary.TaskFailedError, with no private module."""
    record = midvary.TaskRecord(
        task_id="task-7", status=midvary.TaskStatus.GENERATE_FAILED, error_message="banned prompt"
    )
    text = "".join(traceback.format_exception(midvary.TaskFailedError(record)))
    assert "midvary.TaskFailedError: task task-7 ended GENERATE_FAILED: banned prompt" in text
    assert "midvary._errors" not in text
    assert "midvary._" not in repr(midvary.TaskFailedError)
    assert repr(midvary.TaskFailedError) == "<class 'midvary.TaskFailedError'>"


@pytest.mark.parametrize(
    "value",
    [
        midvary.MidvaryError("boom"),
        midvary.SessionClosedError("closed"),
        midvary.ProtocolError("not JSON"),
        midvary.TaskStatus.SUCCESS,
        midvary.VaryRequest(task_id="parent-1", image_index=2, water_mark="wm"),
        midvary.TaskRecord(task_id="task-1", status=midvary.TaskStatus.SUCCESS),
        midvary.PollPolicy(),
    ],
    ids=lambda value: type(value).__name__,
)
def test_public_values_still_pickle(value: object) -> None:
    """Values of public classes pickle by their midvary.X name and come back equal."""
    data = pickle.dumps(value)
    assert b"midvary._" not in data
    back = pickle.loads(data)  # noqa: S301 - our own bytes
    assert type(back) is type(value)
    if isinstance(value, BaseException):
        assert isinstance(back, BaseException)
        assert back.args == value.args
    else:
        assert back == value
