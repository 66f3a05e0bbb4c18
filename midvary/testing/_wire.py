"""What the fake puts on the wire: envelopes, validation, records, callbacks and faults."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from ._settings import FaultKind, FlagFormat, MessageKey
from ._state import FAILURE_DETAILS, Media, SuccessFlag, Task, TimeStyle

#: The ``taskType`` of parent records the fake did not create.
PARENT_TASK_TYPE: Final = "mj_txt2img"

_PROXY_502_PAGE: Final = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    "</body>\r\n</html>\r\n"
)


class Rejection(Exception):  # noqa: N818  # not an error of the fake: an answer it gives
    """A request the provider refuses with an envelope ``code`` and ``msg``."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def envelope(
    code: int,
    msg: str,
    data: object = None,
    *,
    mirror: bool,
    http_status: int | None = None,
    message_key: MessageKey = "msg",
) -> web.Response:
    """An envelope answer; its HTTP status is 200 unless mirrored or given.

    ``message_key`` names the message field (``msg``, or ``message`` as a sibling API).
    """
    if http_status is None:
        http_status = code if mirror else 200
    return web.json_response({"code": code, message_key: msg, "data": data}, status=http_status)


#: successFlag as a word, per flag (sibling record-info pages' spelling).
FLAG_WORDS: Final = {
    0: "PENDING",
    1: "SUCCESS",
    2: "CREATE_TASK_FAILED",
    3: "GENERATE_FAILED",
    4: "CALLBACK_EXCEPTION",
}
#: successFlag 4: "generation succeeded but the callback failed" (a sibling page's value).
CALLBACK_FAILED_FLAG: Final = 4


def format_flag(flag: int, style: FlagFormat) -> int | str:
    """``flag`` as ``style`` spells it: an int, a numeric string, or a status word."""
    if style == "str":
        return str(flag)
    if style == "word":
        return FLAG_WORDS[flag]
    return flag


def format_time(epoch: float, style: TimeStyle) -> str | int:
    """``epoch`` (seconds) as the record's time style."""
    if style == "epoch_ms":
        return round(epoch * 1000)
    if style == "plain":
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
    text = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if style == "iso_z" else text


def result_urls(results_base: str, task_id: str, count: int, media: Media = "png") -> list[str]:
    """The result file URLs of a task (0-based file names, like the real CDN)."""
    return [f"{results_base}/results/{task_id}_{n}.{media}" for n in range(count)]


def task_result_urls(results_base: str, task: Task) -> list[str]:
    """The result file URLs of one of the fake's tasks, once it succeeded."""
    return result_urls(results_base, task.task_id, task.image_count, task.params.media)


def _result_info(urls: list[str], *, as_string: bool) -> object:
    info = {"resultUrls": [{"resultUrl": url} for url in urls]}
    return json.dumps(info) if as_string else info


def record_data(
    task: Task,
    now: float,
    *,
    wall: Callable[[float], float],
    results_base: str,
    result_info_as_string: bool,
    flag_format: FlagFormat = "int",
    callback_failed_flag: bool = False,
) -> dict[str, Any]:
    """The ``data`` of a ``record-info`` answer for a task the fake created.

    ``flag_format`` spells ``successFlag``; with ``callback_failed_flag`` a success says 4.
    """
    flag = task.flag_at(now)
    number = (
        CALLBACK_FAILED_FLAG if callback_failed_flag and flag is SuccessFlag.SUCCESS else int(flag)
    )
    error_code, error_message = FAILURE_DETAILS.get(flag, (None, None))
    final = flag is not SuccessFlag.GENERATING
    return {
        "taskId": task.task_id,
        "taskType": task.params.task_type,
        "paramJson": task.params.param_json,
        "createTime": format_time(wall(task.created_at), task.time_style),
        "completeTime": format_time(wall(task.finished_at), task.time_style) if final else None,
        "resultInfoJson": (
            _result_info(
                task_result_urls(results_base, task),
                as_string=result_info_as_string,
            )
            if flag is SuccessFlag.SUCCESS
            else None
        ),
        "successFlag": format_flag(number, flag_format),
        "errorCode": error_code,
        "errorMessage": error_message,
    }


def parent_record_data(
    task_id: str,
    *,
    epoch: float,
    style: TimeStyle,
    results_base: str,
    result_info_as_string: bool,
) -> dict[str, Any]:
    """The ``data`` of a ``record-info`` answer for a parent the fake did not create."""
    return {
        "taskId": task_id,
        "taskType": PARENT_TASK_TYPE,
        "paramJson": json.dumps({"prompt": "a parent task of the fake provider"}),
        "createTime": format_time(epoch, style),
        "completeTime": format_time(epoch, style),
        "resultInfoJson": _result_info(
            result_urls(results_base, task_id, 4),
            as_string=result_info_as_string,
        ),
        "successFlag": int(SuccessFlag.SUCCESS),
        "errorCode": None,
        "errorMessage": None,
    }


def callback_payload(task: Task, results_base: str) -> dict[str, Any]:
    """The JSON a finished task's callback carries (kie's shape, not record-info's)."""
    if task.outcome is SuccessFlag.SUCCESS:
        code, msg = 200, "success"
        urls = task_result_urls(results_base, task)
    else:
        code, msg = 500, FAILURE_DETAILS[task.outcome][1]
        urls = []
    return {
        "code": code,
        "msg": msg,
        "data": {"taskId": task.task_id, "promptJson": task.params.param_json, "resultUrls": urls},
    }


def callback_signature(key: str, task_id: str, timestamp: str) -> str:
    """Sign a callback like kie's ``X-Webhook-Signature`` does.

    Returns:
        ``base64(HMAC-SHA256(key, taskId + "." + timestamp))``; ``timestamp`` is the
        ``X-Webhook-Timestamp`` header, Unix seconds as a string.
    """
    digest = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def close_connection(request: web.BaseRequest) -> web.Response:
    """Close the connection without an answer; the returned response is never written."""
    transport = request.transport
    if transport is not None:
        transport.close()
    # aiohttp fails to write this to the closed transport and drops it quietly.
    return web.Response()


def fault_answer(kind: FaultKind, request: web.BaseRequest, *, mirror: bool) -> web.Response:
    """The spoiled answer of one fault kind."""
    if kind == "html_502":
        return web.Response(status=502, text=_PROXY_502_PAGE, content_type="text/html")
    if kind == "truncated_json":
        whole = json.dumps({"code": 200, "msg": "success", "data": {"taskId": "fakevary"}})
        return web.Response(text=whole[: len(whole) // 2], content_type="application/json")
    if kind == "empty_body":
        return web.Response(status=200, content_type="application/json")
    if kind == "reset":
        return close_connection(request)
    return envelope(500, "Internal server error (fake provider fault)", mirror=mirror)
