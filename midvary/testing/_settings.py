"""The fake provider's knobs: one frozen, keyword-only attrs class, validated on construction."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal, TypeAlias, cast, get_args

import attrs

#: The ways an answer can be spoiled by ``fault_rate``.
FaultKind: TypeAlias = Literal["html_502", "truncated_json", "empty_body", "reset", "server_error"]
#: The API endpoints, as named in ``fault_endpoints`` and in the figures: ``"submit"`` is
#: ``generateVary`` (its name from before the other two existed), ``"generate"`` and
#: ``"upscale"`` are ``generate`` and ``generateUpscale``, ``"extend"`` is
#: ``generateVideoExtend``; ``"credit"`` is ``GET /api/v1/chat/credit``; ``"download-url"``
#: is ``POST /api/v1/common/download-url``.
Endpoint: TypeAlias = Literal[
    "submit", "generate", "upscale", "extend", "record-info", "credit", "download-url"
]
TimeFormat: TypeAlias = Literal["iso", "epoch_ms", "mixed", "plain"]
#: How ``successFlag`` is spelled: the documented int, a numeric string, or a status word.
FlagFormat: TypeAlias = Literal["int", "str", "word"]
#: Where an envelope's message goes: ``msg`` (documented) or ``message`` (a sibling's).
MessageKey: TypeAlias = Literal["msg", "message"]
NotFoundStyle: TypeAlias = Literal["422", "404"]

FAULT_KINDS: Final[frozenset[FaultKind]] = frozenset(get_args(FaultKind))
ENDPOINTS: Final[frozenset[Endpoint]] = frozenset(get_args(Endpoint))


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def _seconds_pair(value: Sequence[float]) -> tuple[float, float]:
    if isinstance(value, str) or len(value) != 2:
        raise ValueError(f"expected a (low, high) pair of seconds, got {value!r}")
    low, high = _number("low", value[0]), _number("high", value[1])
    if not 0 <= low <= high:
        raise ValueError(f"expected 0 <= low <= high seconds, got {value!r}")
    return low, high


def _latency(value: float | Sequence[float]) -> float | tuple[float, float]:
    if isinstance(value, Sequence):
        return _seconds_pair(value)
    if _number("latency", value) < 0:
        raise ValueError(f"latency must be >= 0 seconds, got {value!r}")
    return float(value)


def _submit_limit(value: Sequence[float] | None) -> tuple[int, float] | None:
    if value is None:
        return None
    if isinstance(value, str) or len(value) != 2:
        raise ValueError(f"submit_limit must be (count, window seconds) or None, got {value!r}")
    count, window = value
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"submit_limit count must be an int >= 1, got {count!r}")
    if _number("submit_limit window", window) <= 0:
        raise ValueError(f"submit_limit window must be > 0 seconds, got {window!r}")
    return count, float(window)


def _windows(value: Iterable[Sequence[float]]) -> tuple[tuple[float, float], ...]:
    return tuple(_seconds_pair(window) for window in value)


def _retry_delays(value: Iterable[float]) -> tuple[float, ...]:
    delays = tuple(_number("callback_retry_delays", delay) for delay in value)
    if any(delay < 0 for delay in delays):
        raise ValueError(f"callback_retry_delays must be >= 0 seconds, got {delays!r}")
    return delays


def _subset(value: Iterable[str] | str, known: frozenset[str], what: str) -> frozenset[str]:
    names = frozenset((value,) if isinstance(value, str) else value)
    unknown = names - known
    if unknown:
        raise ValueError(f"unknown {what} {sorted(unknown)}; known: {sorted(known)}")
    return names


def _fault_kinds(value: Iterable[str] | str) -> frozenset[FaultKind]:
    return cast("frozenset[FaultKind]", _subset(value, FAULT_KINDS, "fault kinds"))


def _endpoints(value: Iterable[str] | str) -> frozenset[Endpoint]:
    return cast("frozenset[Endpoint]", _subset(value, ENDPOINTS, "endpoints"))


def _rate(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= _number(attribute.name, value) <= 1.0:
        raise ValueError(f"{attribute.name} must be a share from 0.0 to 1.0, got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if _number(attribute.name, value) < 0:
        raise ValueError(f"{attribute.name} must be >= 0 seconds, got {value!r}")


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if _number(attribute.name, value) <= 0:
        raise ValueError(f"{attribute.name} must be > 0 seconds, got {value!r}")


_Validator: TypeAlias = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _int_in(low: int, high: int | None = None, *, optional: bool = False) -> _Validator:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{attribute.name} must be an int, not {value!r}")
        if value < low or (high is not None and value > high):
            upper = "" if high is None else f" and <= {high}"
            raise ValueError(f"{attribute.name} must be >= {low}{upper}, got {value!r}")

    return check


def _one_of(*allowed: object) -> _Validator:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        # bool is an int: index_base=True must not pass for 1.
        if isinstance(value, bool) or value not in allowed:
            raise ValueError(f"{attribute.name} must be one of {allowed!r}, got {value!r}")

    return check


def _bool(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be True or False, not {value!r}")


def _optional_str(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{attribute.name} must be a non-empty str or None, got {value!r}")


@attrs.frozen(kw_only=True)
class FakeSettings:
    """How the fake provider behaves; every time is in seconds of the provider's clock.

    The defaults behave like the real provider (as ``docs/provider.md`` describes it) with time
    compressed: tasks take 1 to 3 s instead of tens of seconds, a new task is invisible for
    0.5 s, the submit limit is the real 20 per 10 s, and nothing fails. Change settings at
    runtime with ``provider.update(**changes)`` or ``provider.settings = attrs.evolve(...)``;
    changes apply to requests from then on (a task keeps the duration, outcome, time format
    and image count it drew when it was created).

    Attributes:
        task_duration: ``(low, high)`` seconds; each task draws its duration uniformly from
            it. A task whose creation fails finishes after a tenth of its drawn duration.
        failure_rate: Share of accepted tasks that fail (0.0 to 1.0).
        create_failure_share: Share of the failing tasks that fail at creation
            (``successFlag`` 2); the rest fail at the end of generation (``successFlag`` 3).
        images_per_task: Result images per successful generate (image types) or vary task,
            1 to 4 (Midjourney makes a grid of 4). An upscale always has 1 image, a video
            generate its ``videoBatchSize`` videos (1 when not given).
        invisible_for: Seconds after creation during which ``record-info`` answers "not
            found" for the new task, as the real provider was seen to do (>= 0).
        not_found_style: How an unknown or invisible task is answered: ``"422"`` (code 422,
            msg ``"recordInfo is null"``, ``data: null``) or ``"404"`` (code 404).
        time_format: ``createTime``/``completeTime`` as ``"iso"`` strings, ``"epoch_ms"``
            ints, ``"plain"`` ``"YYYY-MM-DD HH:MM:SS"`` strings (UTC, no zone: seen on a
            sibling API), or ``"mixed"``: each record draws one of ISO with ``Z``, ISO with
            ``+00:00``, or epoch milliseconds.
        flag_format: ``successFlag`` as the documented ``"int"``, as a numeric ``"str"``
            (``"1"``), or as a ``"word"`` (``"PENDING"``, ``"SUCCESS"``,
            ``"CREATE_TASK_FAILED"``, ``"GENERATE_FAILED"``; flag 4 is
            ``"CALLBACK_EXCEPTION"``), as sibling record-info pages send it.
        callback_failed_flag: A successful task's record says ``successFlag`` 4 ("generation
            succeeded but the callback failed", a sibling page's value), with its result
            URLs, instead of 1.
        message_key: The name of the envelope's message: ``"msg"`` (documented) or
            ``"message"`` (one sibling envelope's).
        unserved_endpoints: Endpoints the API host does not serve: answered with a bare
            ``unserved_status`` and no envelope (a host that stopped serving
            ``/api/v1/mj/*``); nothing is created.
        unserved_status: The bare HTTP status of ``unserved_endpoints``: 404 or 405.
        refuse_direct_downloads: The result CDN answers every fetch of a result URL with
            this HTTP status (401, 403, 404 or 410: an expired URL, or a client the host
            refuses) unless it carries a valid temporary link's token from
            ``POST /api/v1/common/download-url`` (valid 20 minutes of the provider's
            clock); ``None`` serves result URLs directly.
        result_info_as_string: Send ``resultInfoJson`` as a JSON-encoded string instead of
            an object (both were seen).
        mirror_http_status: Send the envelope code as the HTTP status too. By default errors
            arrive inside HTTP 200, as the real provider does; rate limiting is HTTP 429
            either way.
        index_base: ``0`` (the schema: ``imageIndex`` 0..3) or ``1`` (the prose: 1..4) for
            vary; upscale's ``imageIndex`` is 0..3 whatever this says.
        parent_prefix: Any task id starting with this is a finished parent task (of 4
            images) that vary and upscale may name; ``None`` means only ids given to
            ``add_parent`` and generate or vary tasks the fake finished successfully.
        submit_limit: ``(count, window)``: at most ``count`` accepted submissions per
            sliding ``window`` seconds per API key, beyond which HTTP 429 (not queued);
            ``None`` means no limit. Only accepted submissions use the budget, which
            every submission endpoint shares (the provider's limit counts every new
            generation request).
        credits: Credits at start; each accepted submission (of any submission
            endpoint) uses one, and at 0 submissions get code 402. ``None`` means
            unlimited (``GET /api/v1/chat/credit`` then reports 1,000,000,000 less one per
            task created). Setting it at runtime sets the balance (a top-up).
        maintenance: ``(start, end)`` windows, in seconds since the provider started,
            during which every API endpoint answers code 455 (see also ``set_maintenance``).
        latency: Seconds added to every API request, or a ``(low, high)`` range to draw
            from (>= 0).
        fault_rate: Share of API answers spoiled by a fault (0.0 to 1.0). A fault on a
            submission happens before the provider sees it: no task is created.
        fault_kinds: The faults to draw from: ``"html_502"`` (an HTML proxy page, HTTP 502),
            ``"truncated_json"`` (HTTP 200, cut-off JSON), ``"empty_body"`` (HTTP 200, no
            body), ``"reset"`` (the connection closes without an answer), ``"server_error"``
            (envelope code 500).
        fault_endpoints: Which endpoints faults hit: ``"submit"`` (generateVary),
            ``"generate"``, ``"upscale"``, ``"extend"`` (generateVideoExtend),
            ``"record-info"``, ``"credit"``, ``"download-url"``.
        drop_submit_answer_rate: Share of accepted submissions (of any submission
            endpoint) whose answer is lost: the task is created (and billed) but the
            connection closes without an answer; it is still called back (``callbacks``)
            at the ``callBackUrl`` it carried, as the real provider calls back every task
            it created.
        callbacks: Whether a task submitted with a ``callBackUrl`` is POSTed there when it
            finishes (decided when the task is created).
        callback_hmac_key: Sign callbacks like kie.ai's ``webhookHmacKey``; ``None`` means
            unsigned.
        callback_duplicates: How many times each callback is delivered (>= 1).
        callback_timeout: Seconds a receiver has to answer a callback (> 0).
        callback_retry_delays: Seconds after a failed delivery before each retry; the real
            provider retries after 1, 5 and 15 minutes. Empty means no retries.
        callback_loopback_only: Deliver callbacks only to ``localhost`` and loopback
            addresses; any other host is recorded as a failed delivery and never contacted,
            so tests cannot reach out to the internet by accident.
    """

    task_duration: tuple[float, float] = attrs.field(default=(1.0, 3.0), converter=_seconds_pair)
    failure_rate: float = attrs.field(default=0.0, validator=_rate)
    create_failure_share: float = attrs.field(default=0.5, validator=_rate)
    images_per_task: int = attrs.field(default=4, validator=_int_in(1, 4))
    invisible_for: float = attrs.field(default=0.5, validator=_non_negative)
    not_found_style: NotFoundStyle = attrs.field(
        default="422", validator=_one_of(*get_args(NotFoundStyle))
    )
    time_format: TimeFormat = attrs.field(
        default="iso",
        validator=_one_of(*get_args(TimeFormat)),
    )
    flag_format: FlagFormat = attrs.field(default="int", validator=_one_of(*get_args(FlagFormat)))
    callback_failed_flag: bool = attrs.field(default=False, validator=_bool)
    message_key: MessageKey = attrs.field(default="msg", validator=_one_of(*get_args(MessageKey)))
    unserved_endpoints: frozenset[Endpoint] = attrs.field(default=frozenset(), converter=_endpoints)
    unserved_status: int = attrs.field(default=404, validator=_one_of(404, 405))
    refuse_direct_downloads: int | None = attrs.field(
        default=None, validator=_one_of(None, 401, 403, 404, 410)
    )
    result_info_as_string: bool = attrs.field(default=False, validator=_bool)
    mirror_http_status: bool = attrs.field(default=False, validator=_bool)
    index_base: Literal[0, 1] = attrs.field(default=0, validator=_one_of(0, 1))
    parent_prefix: str | None = attrs.field(default="parent-", validator=_optional_str)
    submit_limit: tuple[int, float] | None = attrs.field(
        default=(20, 10.0),
        converter=_submit_limit,
    )
    credits: int | None = attrs.field(default=None, validator=_int_in(0, optional=True))
    maintenance: tuple[tuple[float, float], ...] = attrs.field(default=(), converter=_windows)
    latency: float | tuple[float, float] = attrs.field(default=0.0, converter=_latency)
    fault_rate: float = attrs.field(default=0.0, validator=_rate)
    fault_kinds: frozenset[FaultKind] = attrs.field(default=FAULT_KINDS, converter=_fault_kinds)
    fault_endpoints: frozenset[Endpoint] = attrs.field(default=ENDPOINTS, converter=_endpoints)
    drop_submit_answer_rate: float = attrs.field(default=0.0, validator=_rate)
    callbacks: bool = attrs.field(default=True, validator=_bool)
    callback_hmac_key: str | None = attrs.field(
        default=None,
        validator=_optional_str,
        repr=False,
    )
    callback_duplicates: int = attrs.field(default=1, validator=_int_in(1))
    callback_timeout: float = attrs.field(default=15.0, validator=_positive)
    callback_retry_delays: tuple[float, ...] = attrs.field(
        default=(60.0, 300.0, 900.0),
        converter=_retry_delays,
    )
    callback_loopback_only: bool = attrs.field(default=True, validator=_bool)

    @fault_kinds.validator
    def _check_fault_kinds(self, _attribute: object, value: frozenset[FaultKind]) -> None:
        if self.fault_rate > 0 and not value:
            raise ValueError("fault_kinds must not be empty when fault_rate > 0")

    def in_maintenance(self, since_start: float) -> bool:
        """Whether ``since_start`` seconds after the provider started fall in a window."""
        return any(start <= since_start < end for start, end in self.maintenance)


def settings_as_json(settings: FakeSettings) -> dict[str, Any]:
    """The settings as JSON-ready data (tuples as lists, sets sorted, the HMAC key hidden)."""
    data = attrs.asdict(settings)
    data["fault_kinds"] = sorted(settings.fault_kinds)
    data["fault_endpoints"] = sorted(settings.fault_endpoints)
    data["unserved_endpoints"] = sorted(settings.unserved_endpoints)
    if settings.callback_hmac_key is not None:
        data["callback_hmac_key"] = "***"
    return data
