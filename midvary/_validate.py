"""The one home of argument checkers: a wrong type is a TypeError, a wrong value a ValueError.

Every checker returns the value it accepted (normalised where that helps), names the argument
in its message and says what is allowed. They raise before any request is sent. The
``attrs_*`` adapters turn a checker into an attrs field validator that names the field.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import yarl

T = TypeVar("T")

#: Any whitespace character (a task id has none): re's ``\s`` is what ``str.isspace()`` says.
WHITESPACE = re.compile(r"\s")


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _seconds(value: object, name: str, allowed: str, ok: Callable[[float], bool]) -> float:
    if not _is_number(value):
        raise TypeError(f"{name} must be a number of seconds {allowed}, not {value!r}")
    if not ok(value):  # type: ignore[arg-type]  # a number, checked above
        raise ValueError(f"{name} must be a number of seconds {allowed}, got {value!r}")
    return value  # type: ignore[return-value]


def positive_seconds(value: object, name: str) -> float:
    """``value`` if it is a number of seconds > 0."""
    return _seconds(value, name, "> 0", lambda seconds: seconds > 0)


def finite_seconds(value: object, name: str) -> float:
    """``value`` if it is a finite number of seconds > 0 (a store's times, written as ms)."""
    return _seconds(value, name, "> 0, finite", lambda seconds: 0 < seconds < math.inf)


def non_negative_seconds(value: object, name: str) -> float:
    """``value`` if it is a number of seconds >= 0."""
    return _seconds(value, name, ">= 0", lambda seconds: seconds >= 0)


def optional_seconds(value: object, name: str) -> float | None:
    """``value`` if it is ``None`` (no limit) or a number of seconds > 0."""
    if value is None:
        return None
    return _seconds(value, name, "> 0 or None", lambda seconds: seconds > 0)


def factor(value: object, name: str) -> float:
    """``value`` if it is a number >= 1."""
    if not _is_number(value) or value < 1:  # type: ignore[operator]  # a number, checked first
        raise ValueError(f"{name} must be a number >= 1, got {value!r}")
    return value  # type: ignore[return-value]


def count(value: object, name: str) -> int:
    """``value`` if it is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, not {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value}")
    return value


def instance(value: object, name: str, cls: type[T], *, what: str) -> T | None:
    """``value`` if it is ``None`` or an instance of ``cls`` (``what`` names the class)."""
    if value is not None and not isinstance(value, cls):
        raise TypeError(f"{name} must be {what} or None, not {type(value).__name__}")
    return value


def callable_or_none(value: T, name: str) -> T:
    """``value`` if it is ``None`` or callable."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, not {type(value).__name__}")
    return value


def directory(value: object, name: str = "directory") -> Path:
    """``value`` as a :class:`Path` that is a directory or does not exist yet."""
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{name} must be a str or os.PathLike, not {type(value).__name__}")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {str(path)!r} exists and is not a directory")
    return path


def task_id(value: object, name: str = "task_id") -> str:
    """``value`` if it is a usable task id: a non-empty str without whitespace."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str (a Midjourney task id), not {type(value).__name__}")
    if not value or WHITESPACE.search(value):
        raise ValueError(
            f"{name} must be a non-empty task id without whitespace, got {value!r}",
        )
    return value


#: The longest submission key accepted, in characters.
MAX_KEY_LENGTH = 1024
# C0 and C1 control characters and DEL: a key is written to logs and stores as is.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def submission_key(value: object, name: str = "key") -> str | None:
    """``value`` if it is ``None`` or a usable submission key.

    A key is a non-empty str of at most :data:`MAX_KEY_LENGTH` characters without control
    characters (for example ``"order-42/0"``).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
    if not value or len(value) > MAX_KEY_LENGTH or _CONTROL.search(value):
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise ValueError(
            f"{name} must be a non-empty str of at most {MAX_KEY_LENGTH} characters "
            f"without control characters, got {shown!r}"
        )
    return value


def http_url(value: object, name: str) -> str:
    """``value`` if it is an absolute http(s) URL with a host."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str URL, not {type(value).__name__}")
    try:
        url = yarl.URL(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} must be an absolute http(s) URL, got {value!r}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(
            f"{name} must be an absolute http:// or https:// URL with a host, got {value!r}",
        )
    return value


def base_url(value: str, *, name: str) -> yarl.URL:
    """``value`` as a URL prefix: absolute http(s), no query or fragment, no trailing slash."""
    http_url(value, name=name)
    url = yarl.URL(value)
    if url.query_string or url.fragment:
        raise ValueError(f"{name} must not have a query or fragment, got {value!r}")
    return url.with_path(url.path.rstrip("/"))


def submit_rate(value: object) -> tuple[int, float] | None:
    """A ``submit_rate`` setting: ``(count >= 1, window_seconds > 0)`` or ``None``."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(
            "submit_rate must be a (count, window_seconds) pair such as (20, 10.0), or None "
            f"for no limit; got {value!r}"
        )
    number, window = value
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValueError(f"submit_rate count must be an int >= 1, got {number!r}")
    if not _is_number(window) or not window > 0:
        raise ValueError(f"submit_rate window must be a number of seconds > 0, got {window!r}")
    return number, float(window)


def attrs_validator(check: Callable[..., object], *args: Any, **kwargs: Any) -> Callable[..., None]:
    """An attrs field validator that runs ``check(value, field_name, *args, **kwargs)``."""

    def validate(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        check(value, attribute.name, *args, **kwargs)

    return validate


# -- request fields (VaryRequest, GenerateRequest, UpscaleRequest, ExtendRequest) -----------


def index(value: object, name: str, meaning: str) -> int:
    """``value`` if it is an int from 0 to 3 (``meaning`` says what it picks)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int from 0 to 3, not {type(value).__name__} {value!r}")
    if value not in range(4):
        raise ValueError(f"{name} must be 0, 1, 2 or 3 (0-based: {meaning}), got {value}")
    return value


def choice(value: object, name: str, allowed: Sequence[object]) -> Any:
    """``value`` if it is ``None`` or one of ``allowed`` (compared with its own type)."""
    if value is None:
        return None
    listed = ", ".join(repr(item) for item in allowed)
    kinds = {type(item) for item in allowed}
    if type(value) not in kinds:
        raise TypeError(f"{name} must be one of {listed} or None, not {type(value).__name__}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {listed} or None, got {value!r}")
    return value


def int_range(value: object, name: str, low: int, high: int, *, step: int = 1) -> int | None:
    """``value`` if it is ``None`` or an int from ``low`` to ``high`` (in steps of ``step``)."""
    if value is None:
        return None
    steps = f" in steps of {step}" if step > 1 else ""
    allowed = f"an int from {low} to {high}{steps}, or None"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {allowed}, not {type(value).__name__} {value!r}")
    if not low <= value <= high or value % step:
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def http_urls(value: object, name: str) -> tuple[str, ...]:
    """``value`` as a tuple of absolute http(s) URLs (``None`` means none)."""
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(
            f"{name} must be a list of absolute http(s) URLs, not {type(value).__name__}"
        )
    return tuple(http_url(item, name=f"{name}[{number}]") for number, item in enumerate(value))


def prompt(value: object, name: str = "prompt", *, max_chars: int = 2000) -> str:
    """``value`` if it is a str of 1 to ``max_chars`` characters, not only whitespace."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str of 1 to {max_chars} characters, not {value!r}")
    if not value.strip() or len(value) > max_chars:
        raise ValueError(
            f"{name} must have 1 to {max_chars} characters (not only whitespace), got {len(value)}"
        )
    return value


DEFAULT_BASE_URL: Final = "https://api.kie.ai"
_KEY_VARIABLES: Final = ("MIDVARY_API_KEY", "KIE_API_KEY")


def resolve_api_key(api_key: str | None) -> str:
    """The API key: ``api_key``, else ``MIDVARY_API_KEY``, else ``KIE_API_KEY`` (never echoed)."""
    if api_key is None:
        for name in _KEY_VARIABLES:
            value = os.environ.get(name, "").strip()
            if value:
                return value
        raise ValueError(
            "no API key: pass Session(api_key=...) or set MIDVARY_API_KEY (or KIE_API_KEY)",
        )
    if not isinstance(api_key, str):
        raise TypeError(f"api_key must be a str, not {type(api_key).__name__}")
    if not api_key.strip() or any(ch.isspace() for ch in api_key.strip()):
        # Never echo the value: it is a secret even when it is malformed.
        raise ValueError("api_key must be a non-empty string without whitespace")
    return api_key.strip()


def resolve_base_url(value: str | None) -> yarl.URL:
    """The API's base URL: ``value``, else ``MIDVARY_BASE_URL``, else kie.ai's."""
    if value is None:
        value = os.environ.get("MIDVARY_BASE_URL", "").strip() or DEFAULT_BASE_URL
    return base_url(value, name="base_url")
