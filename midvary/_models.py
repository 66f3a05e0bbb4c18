"""Public data models: frozen, keyword-only attrs classes, structured only by the converter."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from ._validate import http_url as check_http_url
from ._validate import task_id as check_task_id

IMAGE_INDEXES = range(4)


class TaskStatus(enum.Enum):
    """A task's state, from the provider's ``successFlag``.

    ``UNKNOWN`` stands for any value the provider does not document; it is treated as not
    final, so polling goes on.
    """

    GENERATING = 0
    SUCCESS = 1
    CREATE_FAILED = 2
    GENERATE_FAILED = 3
    UNKNOWN = -1

    @property
    def is_final(self) -> bool:
        """Whether the task will not change any more."""
        return self in _FINAL

    @property
    def is_failure(self) -> bool:
        """Whether the task ended without images."""
        return self in _FAILURES


# Built once: each TaskStatus.X inside a property goes through EnumType's attribute hook.
# Tuples, not sets: membership tests identity first, where a set would call Enum.__hash__.
_FAILURES = (TaskStatus.CREATE_FAILED, TaskStatus.GENERATE_FAILED)
_FINAL = (TaskStatus.SUCCESS, *_FAILURES)


@attrs.frozen(kw_only=True)
class TaskRecord:
    """One snapshot of a task, as ``record-info`` reported it.

    Attributes:
        task_id: The task's id.
        task_type: The provider's open task type string, or ``None`` when it sent none.
        status: The task's :class:`TaskStatus`.
        image_urls: The result image URLs (empty until SUCCESS). They expire after a day or
            more: download what you need to keep.
        params: The decoded ``paramJson`` echo of the request (empty when absent).
        created_at: When the task was created (timezone-aware), or ``None`` if not reported.
        completed_at: When the task finished (timezone-aware), or ``None`` while running.
        error_code: The provider's error code for a failed task, or ``None``.
        error_message: The provider's error message for a failed task, or ``None``.

    """

    task_id: str
    task_type: str | None = None
    status: TaskStatus
    image_urls: tuple[str, ...] = ()
    params: Mapping[str, Any] = attrs.field(factory=dict)
    created_at: datetime | None = None
    completed_at: datetime | None = None
    error_code: int | None = None
    error_message: str | None = None

    @property
    def is_final(self) -> bool:
        """Whether the task will not change any more."""
        return self.status.is_final

    @property
    def parent_task_id(self) -> str | None:
        """The task a vary or upscale was made from (``paramJson``'s ``taskId``), else ``None``.

        ``None`` for a generate (its ``paramJson`` names no parent), whatever the
        ``taskType``.
        """
        value = self.params.get("taskId")
        return value if isinstance(value, str) and value and value != self.task_id else None

    @property
    def image_index(self) -> int | None:
        """Which image of the parent a vary or upscale was made from, else ``None``.

        ``paramJson``'s ``imageIndex`` as sent: 0-based (0..3), or 1-based with
        ``Session(index_base=1)``. ``None`` when the record names no parent.
        """
        if self.parent_task_id is None:
            return None
        value = self.params.get("imageIndex")
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_task_id(_inst: object, attribute: attrs.Attribute[str], value: object) -> None:
    check_task_id(value, name=attribute.name)


def _check_image_index(_inst: object, _attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"image_index must be an int from 0 to 3, not {type(value).__name__} {value!r}",
        )
    if value not in IMAGE_INDEXES:
        raise ValueError(
            f"image_index must be 0, 1, 2 or 3 (0-based: which of the parent's 4 images), "
            f"got {value}",
        )


def _check_water_mark(
    _inst: object, _attribute: attrs.Attribute[str | None], value: object
) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"water_mark must be a str or None, not {type(value).__name__}")


def _check_callback_url(
    _inst: object, attribute: attrs.Attribute[str | None], value: object
) -> None:
    if value is not None:
        check_http_url(value, name=attribute.name)


@attrs.frozen(kw_only=True)
class VaryRequest:
    """One vary job: make variations of one image of an earlier generation task.

    Validated on construction; an invalid request raises ``TypeError`` or ``ValueError``
    and is never sent.

    Attributes:
        task_id: The id of the earlier Midjourney generation task (the parent).
        image_index: Which of the parent's 4 images, 0-based: 0, 1, 2 or 3.
        water_mark: Watermark text, or ``None`` for none.
        callback_url: Absolute http(s) URL the provider POSTs the result to, or ``None``.
        id: Your own label for this job (echoed in outcomes, never sent), or ``None``.

    """

    task_id: str = attrs.field(validator=_check_task_id)
    image_index: int = attrs.field(validator=_check_image_index)
    water_mark: str | None = attrs.field(default=None, validator=_check_water_mark)
    callback_url: str | None = attrs.field(default=None, validator=_check_callback_url)
    id: str | None = None

    def describe(self) -> str:
        """A short human description, e.g. ``vary(abc123, image 2)``."""
        label = f" [{self.id}]" if self.id is not None else ""
        return f"vary({self.task_id}, image {self.image_index}){label}"


@attrs.frozen(kw_only=True)
class CallbackNotice:
    """What one callback delivery claims; internal, never trusted for results.

    A callback's body is not signed (only its task id and timestamp are), so midvary uses
    it to know *that* a task may be final and then confirms with one ``record-info`` GET.

    Attributes:
        code: The envelope's ``code``: 200 on success, 500 on failure.
        message: The envelope's ``msg``, or ``None``.
        task_id: The task the delivery says it is about.
        image_urls: The claimed result URLs (empty on failure).
        params: The decoded ``promptJson`` echo (empty when absent or malformed).

    """

    code: int
    message: str | None = None
    task_id: str
    image_urls: tuple[str, ...] = ()
    params: Mapping[str, Any] = attrs.field(factory=dict)
