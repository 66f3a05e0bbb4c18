"""The one converter that owns the wire format.

Everything that knows a camelCase name, a time format or a JSON-in-a-string field lives here.
Models are structured only at this boundary; a body that cannot be structured becomes a
:class:`~midvary.ProtocolError`, never a ``KeyError``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import attrs
import cattrs
import yarl
from cattrs.gen import make_dict_structure_fn, override

from ._errors import ProtocolError
from ._jobs import JobOutcome
from ._models import (
    CallbackNotice,
    ExtendRequest,
    GenerateRequest,
    TaskRecord,
    TaskStatus,
    UpscaleRequest,
    VaryRequest,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Without detailed validation: every hook below raises a ProtocolError that already says
# what was wrong, so cattrs' collecting of each field's error adds nothing to a message.
converter = cattrs.Converter(forbid_extra_keys=False, detailed_validation=False)

# Epoch values above this are milliseconds (the sibling APIs), below it seconds. 1e11 s is
# the year 5138, 1e11 ms is 1973: no real task time is ambiguous.
_EPOCH_MS_THRESHOLD = 100_000_000_000


#: What the stdlib's JSON decoder raises on a body it cannot decode: malformed text or bytes
#: (``ValueError``, which ``UnicodeDecodeError`` is) and nesting too deep for the
#: interpreter's stack (``RecursionError``).
_UNDECODABLE = (ValueError, RecursionError)


def _json_maybe_string(value: Any, field: str) -> Any:
    # paramJson always, and resultInfoJson sometimes, arrive as JSON encoded in a string.
    if isinstance(value, str):
        if not value.strip():
            return None
        return decode_json(value, f"{field} is not valid JSON")
    return value


def decode_json(raw: str | bytes, problem: str) -> Any:
    """Decode ``raw`` as JSON; any failure to decode it is a :class:`ProtocolError`.

    Every JSON that comes from the provider (envelopes, the JSON inside records, callback
    bodies) is decoded here, so a hostile body can only ever be a typed midvary error.

    Raises:
        ProtocolError: ``raw`` is not JSON; its message starts with ``problem``.

    """
    try:
        return json.loads(raw)
    except _UNDECODABLE as exc:
        raise ProtocolError(f"{problem}: {raw[:80]!r}") from exc


def _structure_time(value: Any, _type: Any) -> datetime | None:
    # The MJ docs show ISO-8601 strings; the provider's sibling APIs send epoch milliseconds.
    # Strings first: they are what record-info sends.
    if isinstance(value, str):
        if not value:
            return None
        text = value.strip()
        if text.lstrip("-").isdigit():
            return _from_epoch(int(text))
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
        except ValueError as exc:
            raise ProtocolError(f"unreadable time {value!r}") from exc
        # A time without an offset is taken as UTC, the provider's own zone.
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    if value is None:
        return None
    if isinstance(value, bool):
        raise ProtocolError(f"a time field is a boolean: {value!r}")
    if isinstance(value, int | float):
        return _from_epoch(value)
    raise ProtocolError(f"a time field has type {type(value).__name__}: {value!r}")


def _from_epoch(value: float) -> datetime:
    seconds = value / 1000 if abs(value) >= _EPOCH_MS_THRESHOLD else value
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:  # beyond the platform's or year 9999
        raise ProtocolError(f"a time field is out of range: {value!r}") from exc


# successFlag -> TaskStatus; an undocumented value is looked up as None (TaskStatus(value)
# would raise).
_STATUSES = {status.value: status for status in TaskStatus}

#: successFlag 4, documented on a sibling record-info page as "generation succeeded but the
#: callback failed": the results exist, so a record of flag 4 with result URLs is a success
#: (a wait would otherwise run to its deadline exactly when callbacks fail).
CALLBACK_FAILED_FLAG = 4

# successFlag as a word, as the provider's sibling APIs send it (upper-cased, "-" and " "
# as "_"). A word not listed is UNKNOWN (not final, logged), never an error that loses a
# result.
_FLAG_WORDS: dict[str, int] = {
    **dict.fromkeys(
        ("PENDING", "GENERATING", "WAITING", "QUEUED", "QUEUING", "RUNNING", "PROCESSING",
         "TEXT_SUCCESS", "FIRST_SUCCESS"),
        TaskStatus.GENERATING.value,
    ),
    **dict.fromkeys(("SUCCESS", "SUCCEEDED", "COMPLETED", "DONE"), TaskStatus.SUCCESS.value),
    **dict.fromkeys(("CREATE_TASK_FAILED", "CREATE_FAILED"), TaskStatus.CREATE_FAILED.value),
    **dict.fromkeys(
        ("GENERATE_FAILED", "GENERATE_AUDIO_FAILED", "GENERATE_VIDEO_FAILED", "FAILED",
         "SENSITIVE_WORD_ERROR"),
        TaskStatus.GENERATE_FAILED.value,
    ),
    "CALLBACK_EXCEPTION": CALLBACK_FAILED_FLAG,
}  # fmt: skip


def flag_number(value: Any) -> int | None:
    """A ``successFlag`` as its number: an int, a numeric string or a known word.

    ``None`` for any other str (an unknown word, logged by the caller's status). Raises
    :class:`ProtocolError` for a value that is no flag at all (a bool, a list, ``null``...).
    """
    number = _integer(value)
    if number is not None:
        return number
    if isinstance(value, str):
        return _FLAG_WORDS.get(value.strip().upper().replace("-", "_").replace(" ", "_"))
    raise ProtocolError(f"successFlag is not an integer or a status word: {value!r:.40}")


def _integer(value: object) -> int | None:
    """``value`` as an int: an int (not a bool) or a numeric string; ``None`` if neither.

    The provider sends its numbers (``code``, ``successFlag``, ``errorCode``) either way.
    """
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _structure_status(value: Any, _type: Any) -> TaskStatus:
    # Undocumented successFlag values are kept as UNKNOWN (not final) rather than failing.
    number = flag_number(value)
    status = _STATUSES.get(number) if number is not None else None
    if status is None:
        logger.warning("undocumented successFlag %r; treating the task as not final", value)
        return TaskStatus.UNKNOWN
    return status


def _structure_params(value: Any, _type: Any, field: str = "paramJson") -> Mapping[str, Any]:
    # paramJson (and a callback's promptJson) is only an echo of the request: a malformed
    # one must not hide a result.
    try:
        decoded = _json_maybe_string(value, field)
    except ProtocolError:
        logger.warning("%s is not valid JSON; params left empty", field)
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _structure_urls(value: Any, _type: Any) -> tuple[str, ...]:
    # resultInfoJson: {"resultUrls": [{"resultUrl": "..."}]}, as an object or a JSON string.
    info = _json_maybe_string(value, "resultInfoJson")
    if info is None:
        return ()
    if not isinstance(info, dict):
        raise ProtocolError(f"resultInfoJson is not an object: {info!r:.80}")
    return _url_list(info.get("resultUrls"), "resultInfoJson.resultUrls")


def _url_list(items: Any, field: str) -> tuple[str, ...]:
    # Entries are {"resultUrl": "..."} objects in record-info, plain strings in callbacks.
    if not items:
        return ()
    if not isinstance(items, list):
        raise ProtocolError(f"{field} is not a list")
    urls: list[str] = []
    for item in items:
        url = item.get("resultUrl") if isinstance(item, dict) else item
        if not isinstance(url, str) or not url:
            raise ProtocolError(f"{field} holds an unusable URL entry: {item!r:.80}")
        urls.append(url)
    return tuple(urls)


def _structure_optional_int(value: Any, _type: Any) -> int | None:
    if value is None or value == "":
        return None
    code = _integer(value)
    if code is None:
        raise ProtocolError(f"errorCode is not an integer: {value!r}")
    return code


def _structure_optional_str(value: Any, _type: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(value)


converter.register_structure_hook(
    TaskRecord,
    make_dict_structure_fn(
        TaskRecord,
        converter,
        task_id=override(rename="taskId"),
        task_type=override(rename="taskType", struct_hook=_structure_optional_str),
        status=override(rename="successFlag", struct_hook=_structure_status),
        image_urls=override(rename="resultInfoJson", struct_hook=_structure_urls),
        params=override(rename="paramJson", struct_hook=_structure_params),
        created_at=override(rename="createTime", struct_hook=_structure_time),
        completed_at=override(rename="completeTime", struct_hook=_structure_time),
        error_code=override(rename="errorCode", struct_hook=_structure_optional_int),
        error_message=override(rename="errorMessage", struct_hook=_structure_optional_str),
    ),
)


def _structure(data: Mapping[str, Any], cls: type[T], what: str) -> T:
    """Structure ``data`` as ``cls``; any failure becomes the one :class:`ProtocolError`."""
    try:
        return converter.structure(data, cls)
    except ProtocolError:
        raise
    except (cattrs.BaseValidationError, LookupError, ValueError, TypeError) as exc:
        raise ProtocolError(f"{what} is malformed: {type(exc).__name__}: {exc}") from exc


def envelope_code(value: object) -> int | None:
    """An envelope's ``code`` as an int (also sent as a numeric string); ``None`` if not one."""
    return _integer(value)


def envelope_message(envelope: Mapping[str, Any]) -> str | None:
    """An envelope's message: its ``msg``, or ``message`` (one sibling API's spelling).

    ``None`` when neither is a non-empty string.
    """
    for name in ("msg", "message"):
        value = envelope.get(name)
        if isinstance(value, str) and value:
            return value
    return None


#: The most result URLs a record may list: a Midjourney task makes at most 4 (a grid's or a
#: vary's images, up to 4 videos, 1 upscale); twice that leaves room for a provider change,
#: and a record beyond it (10,000 URLs: 10,000 files for one vary) is a ProtocolError.
MAX_RESULT_URLS: Final = 8

#: What a secret echoed by the provider becomes, in every text that comes back.
REDACTED: Final = "***"


def redact(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` (the API key) masked."""
    return text.replace(secret, REDACTED) if secret in text else text


def redact_record(record: TaskRecord, secret: str) -> TaskRecord:
    """``record`` with ``secret`` masked in every text it holds (``record`` if none does).

    A provider may echo what it was sent (the key included) in ``errorMessage``, ``taskType``
    or ``paramJson``; a record's texts reach error messages, ``to_json_dict``, results files
    and galleries, so the key is masked here, once, as in an envelope's ``msg``. The task id
    is left as is: it names the task (and the key is never a valid one).
    """

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return redact(value, secret)
        if isinstance(value, Mapping):
            return {clean(name): clean(item) for name, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(clean(item) for item in value)
        return value

    try:
        changes = {
            name: cleaned
            for name in ("task_type", "error_message", "image_urls", "params")
            if (cleaned := clean(value := getattr(record, name))) != value
        }
    except RecursionError as exc:  # paramJson nested nearly as deep as the decoder allows
        raise ProtocolError(f"record of task {record.task_id} is nested too deeply") from exc
    return attrs.evolve(record, **changes) if changes else record


def structure_record(data: object) -> TaskRecord:
    """Build a :class:`TaskRecord` from a ``record-info`` ``data`` object.

    Raises:
        ProtocolError: ``data`` is not a record (wrong types, missing ``taskId`` or
            ``successFlag``, unreadable times or result URLs).

    """
    if not isinstance(data, dict):
        raise ProtocolError(f"record-info data is not an object: {data!r:.80}")
    missing = [key for key in ("taskId", "successFlag") if data.get(key) is None]
    if missing:
        raise ProtocolError(f"record-info data lacks {', '.join(missing)}")
    if not isinstance(data["taskId"], str) or not data["taskId"]:
        raise ProtocolError(f"record-info taskId is not a string: {data['taskId']!r:.80}")
    record = _structure(_callback_failed_as_success(data), TaskRecord, "record-info data")
    if len(record.image_urls) > MAX_RESULT_URLS:
        raise ProtocolError(
            f"record of task {record.task_id} lists {len(record.image_urls)} result URLs; "
            f"a Midjourney task makes at most 4 (over {MAX_RESULT_URLS} is refused)"
        )
    return record


def _callback_failed_as_success(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with flag 4 as 1 when the record holds result URLs; else ``data`` as is.

    Flag 4 is "generation succeeded but the callback failed": with its result URLs it is a
    success; without them it stays 4 (UNKNOWN: not final, so the wait goes on until they
    come). A flag or URLs that cannot be read are left for the structuring to judge.
    """
    try:
        if flag_number(data["successFlag"]) != CALLBACK_FAILED_FLAG:
            return data
        urls = _structure_urls(data.get("resultInfoJson"), None)
    except ProtocolError:
        return data
    return {**data, "successFlag": TaskStatus.SUCCESS.value} if urls else data


# A callback's data: plain-string resultUrls and promptJson instead of record-info's
# resultInfoJson and paramJson, and no successFlag (the envelope's code says 200 or 500).
_structure_notice = make_dict_structure_fn(
    CallbackNotice,
    converter,
    message=override(rename="msg", struct_hook=_structure_optional_str),
    task_id=override(rename="taskId"),
    image_urls=override(
        rename="resultUrls",
        struct_hook=lambda value, _type: _url_list(value, "the callback's resultUrls"),
    ),
    params=override(
        rename="promptJson",
        struct_hook=lambda value, _type: _structure_params(value, _type, "promptJson"),
    ),
)
converter.register_structure_hook(CallbackNotice, _structure_notice)


def structure_callback(raw: bytes) -> CallbackNotice:
    """Build a :class:`CallbackNotice` from a callback delivery's raw JSON body.

    The body is ``{"code": 200|500, "msg": str, "data": {"taskId": str, "promptJson": str,
    "resultUrls": [str, ...]}}``; unknown keys are tolerated.

    Raises:
        ProtocolError: ``raw`` is not such a body (not JSON, not an object, no integer
            ``code``, no ``data`` object, no string ``taskId``, unusable result URLs).

    """
    body = decode_json(raw, "the callback body is not JSON")
    if not isinstance(body, dict):
        raise ProtocolError(f"the callback body is not an object: {body!r:.80}")
    code = envelope_code(body.get("code"))
    if code is None:
        raise ProtocolError(f"the callback's code is not an integer: {body.get('code')!r:.40}")
    data = body.get("data")
    if not isinstance(data, dict):
        raise ProtocolError(f"the callback's data is not an object: {data!r:.80}")
    task_id = data.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        raise ProtocolError(f"the callback's data holds no taskId: {task_id!r:.80}")
    fields = {**data, "code": code, "msg": envelope_message(body)}
    return _structure(fields, CallbackNotice, "the callback's data")


def structure_task_id(data: object) -> str:
    """Return the new task's id from a submission's ``data`` object.

    Raises:
        ProtocolError: ``data`` holds no usable ``taskId``.

    """
    task_id = data.get("taskId") if isinstance(data, dict) else None
    if not isinstance(task_id, str) or not task_id.strip():
        raise ProtocolError(f"the submission answer holds no taskId: {data!r:.80}")
    return task_id


def structure_credits(data: object) -> int:
    """Return the remaining credits from a ``chat/credit`` answer's ``data`` (an integer).

    Raises:
        ProtocolError: ``data`` is not a whole number (a float with no fraction is taken).

    """
    if isinstance(data, float) and data.is_integer():
        data = int(data)
    if isinstance(data, bool) or not isinstance(data, int):
        raise ProtocolError(f"the credit answer holds no whole number of credits: {data!r:.80}")
    return data


def structure_download_url(data: object) -> str:
    """Return the temporary URL from a ``common/download-url`` answer's ``data`` (a string).

    Raises:
        ProtocolError: ``data`` is not an absolute http(s) URL.

    """
    text = data.strip() if isinstance(data, str) else ""
    try:
        url = yarl.URL(text) if text else None
    except (TypeError, ValueError):
        url = None
    if url is not None and url.scheme in ("http", "https") and url.host:
        return text
    raise ProtocolError(f"the download-url answer holds no http(s) URL: {data!r:.80}")


# -- to JSON ---------------------------------------------------------------------------------


def _record_json(record: TaskRecord) -> dict[str, Any]:
    # snake_case names, the status's name and ISO-8601 times: what people and jq read.
    return {
        "task_id": record.task_id,
        "status": record.status.name,
        "task_type": record.task_type,
        "parent_task_id": record.parent_task_id,
        "image_index": record.image_index,
        "image_urls": list(record.image_urls),
        "created_at": record.created_at.isoformat() if record.created_at else None,
        "completed_at": record.completed_at.isoformat() if record.completed_at else None,
        "error_code": record.error_code,
        "error_message": record.error_message,
    }


def _error_json(error: BaseException) -> dict[str, Any]:
    return {"type": type(error).__name__, "message": str(error)}


def _outcome_json(outcome: JobOutcome) -> dict[str, Any]:
    request = outcome.request
    # A vary or upscale names the parent image it was made from, an extend the parent
    # video; a generate (and a manual extend) has a prompt.
    child = request if isinstance(request, VaryRequest | UpscaleRequest) else None
    extend = request if isinstance(request, ExtendRequest) else None
    parent = child or extend
    return {
        "index": outcome.index,
        "id": request.id if request is not None else None,
        "parent_task_id": parent.task_id if parent is not None else None,
        "image_index": child.image_index if child is not None else None,
        "video_index": extend.index if extend is not None else None,
        "prompt": request.prompt if isinstance(request, GenerateRequest | ExtendRequest) else None,
        "task_id": outcome.task_id,
        "ok": outcome.ok,
        "uncertain": outcome.uncertain,
        "record": _record_json(outcome.record) if outcome.record is not None else None,
        "error": _error_json(outcome.error) if outcome.error is not None else None,
        "files": [str(path) for path in outcome.paths],
    }


converter.register_unstructure_hook(TaskRecord, _record_json)
converter.register_unstructure_hook(JobOutcome, _outcome_json)


def to_json_dict(obj: TaskRecord | JobOutcome | BaseException) -> dict[str, Any]:
    """``obj`` as JSON-ready data (``json.dumps`` takes it as is).

    Args:
        obj: A :class:`TaskRecord` (``task_id``, ``status`` name, ``task_type``,
            ``parent_task_id``, ``image_index``, ``image_urls``, ISO-8601 ``created_at`` /
            ``completed_at`` or ``None``, ``error_code``, ``error_message``); a
            :class:`JobOutcome` (its request's ids or ``prompt``, ``task_id``, ``ok``,
            ``uncertain``, ``record``, ``error``, ``files``); or an exception (``type``,
            ``message``).

    Raises:
        TypeError: ``obj`` is none of these.

    """
    if isinstance(obj, BaseException):
        return _error_json(obj)
    if not isinstance(obj, TaskRecord | JobOutcome):
        raise TypeError(
            f"to_json_dict takes a TaskRecord, JobOutcome or exception, not {obj!r:.60}"
        )
    data: dict[str, Any] = converter.unstructure(obj)
    return data
