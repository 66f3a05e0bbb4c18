"""The public surface: one sorted, complete __all__, and a version."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import midvary
from midvary._errors import ERROR_CLASSES


def test_all_is_sorted_and_complete() -> None:
    """__all__ lists every public name exactly once, sorted, and each one exists."""
    public = {name for name in vars(midvary) if not name.startswith("_") and name.upper() != name}
    public -= {name for name, value in vars(midvary).items() if inspect.ismodule(value)}
    public -= {"VERSION"}
    exported = set(midvary.__all__)
    assert public <= exported, public - exported
    assert len(midvary.__all__) == len(exported)
    assert all(hasattr(midvary, name) for name in midvary.__all__)
    # ruff's RUF022 order: CONSTANTS, then Classes, then everything else (functions, dunders).
    key = [(0 if n.isupper() else 1 if n[0].isupper() else 2, n) for n in midvary.__all__]
    assert key == sorted(key)


def test_every_error_descends_from_midvary_error() -> None:
    """Every exported exception class is in the one tree rooted at MidvaryError."""
    errors = [
        v for v in vars(midvary).values() if isinstance(v, type) and issubclass(v, BaseException)
    ]
    assert len(errors) >= 18
    assert all(issubclass(e, midvary.MidvaryError) for e in errors)
    assert issubclass(midvary.TaskTimeoutError, TimeoutError)
    assert issubclass(midvary.SubmitUncertainError, midvary.TransportError)


def test_error_table_covers_every_documented_code() -> None:
    """Each documented envelope code maps to its own APIError subclass."""
    assert sorted(ERROR_CLASSES) == [400, 401, 402, 404, 422, 429, 455, 500, 501, 505]
    assert all(issubclass(cls, midvary.APIError) for cls in ERROR_CLASSES.values())


def test_version_comes_from_metadata() -> None:
    """__version__ is the installed distribution's version."""
    assert midvary.__version__ == version("midvary")


def test_public_callables_are_documented() -> None:
    """Every public class, method and function has a docstring."""
    missing = []
    for name in midvary.__all__:
        obj = getattr(midvary, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if not inspect.getdoc(obj):
                missing.append(name)
            for attr, member in vars(obj).items() if inspect.isclass(obj) else ():
                if not attr.startswith("_") and callable(member) and not inspect.getdoc(member):
                    missing.append(f"{name}.{attr}")
    assert missing == []


def test_submit_all_takes_the_keyword_arguments_of_submit_many() -> None:
    """submit_all shows (and accepts) exactly submit_many's parameters, with its own return type."""
    many = inspect.signature(midvary.Session.submit_many)
    every = inspect.signature(midvary.Session.submit_all)
    assert list(every.parameters.values()) == list(many.parameters.values())
    assert "concurrency" in every.parameters
    assert every.return_annotation != many.return_annotation
