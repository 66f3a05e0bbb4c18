"""Public data models: frozen, keyword-only attrs classes, structured only by the converter."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, TypeAlias

import attrs

from . import _validate as check
from ._validate import attrs_validator as _checked


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

    def __str__(self) -> str:
        """The state as a person reads it: ``success``, ``generate failed``, ..."""
        return self.name.lower().replace("_", " ")

    @property
    def is_final(self) -> bool:
        """Whether the task will not change any more."""
        return self in FINAL_STATUSES

    @property
    def is_failure(self) -> bool:
        """Whether the task ended without images."""
        return self in FAILED_STATUSES


#: The failed final states (``status in FAILED_STATUSES`` is ``status.is_failure``).
FAILED_STATUSES: Final = (TaskStatus.CREATE_FAILED, TaskStatus.GENERATE_FAILED)
#: The final states (``status in FINAL_STATUSES`` is ``status.is_final``).
FINAL_STATUSES: Final = (TaskStatus.SUCCESS, *FAILED_STATUSES)


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


_check_task_id = _checked(check.task_id)
_check_image_index = _checked(check.index, "which of the parent's 4 images")
_check_water_mark = _checked(check.instance, str, what="a str")
_check_callback_url = attrs.validators.optional(_checked(check.http_url))


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
        key: The submission key (never sent): with a key, the request is submitted at
            most once per key, across every session and process sharing the session's
            store (see ``Session(store=...)``). A non-empty str of at most 1024 characters
            without control characters; ``None`` means no deduplication.

    """

    task_id: str = attrs.field(validator=_check_task_id)
    image_index: int = attrs.field(validator=_check_image_index)
    water_mark: str | None = attrs.field(default=None, validator=_check_water_mark)
    callback_url: str | None = attrs.field(default=None, validator=_check_callback_url)
    id: str | None = None
    key: str | None = attrs.field(default=None, validator=_checked(check.submission_key))

    def describe(self) -> str:
        """A short human description, e.g. ``vary(abc123, image 2)``."""
        return f"vary({self.task_id}, image {self.image_index}){_label(self.id, self.key)}"


def _label(job_id: str | None, key: str | None = None) -> str:
    label = f" [{job_id}]" if job_id is not None else ""
    return label if key is None else f"{label} key={key!r}"


# The generate endpoint's documented values (docs/provider.md, issue 13).
TASK_TYPES: Final = (
    "mj_txt2img",
    "mj_img2img",
    "mj_style_reference",
    "mj_omni_reference",
    "mj_video",
    "mj_video_hd",
)
VIDEO_TASK_TYPES: Final = ("mj_video", "mj_video_hd")
#: The task types that start from images: ``file_urls`` is required (exactly one for video).
IMAGE_INPUT_TASK_TYPES: Final = ("mj_img2img", "mj_style_reference", "mj_omni_reference",
                                 *VIDEO_TASK_TYPES)  # fmt: skip
#: The task types that take a ``speed``.
SPEED_TASK_TYPES: Final = ("mj_txt2img", "mj_img2img", "mj_style_reference")
SPEEDS: Final = ("relaxed", "fast", "turbo")
ASPECT_RATIOS: Final = (
    "1:2", "9:16", "2:3", "3:4", "5:6", "6:5", "4:3", "3:2", "1:1", "16:9", "2:1",
)  # fmt: skip
VERSIONS: Final = ("7", "6.1", "6", "5.2", "5.1", "niji6")
VIDEO_BATCH_SIZES: Final = (1, 2, 4)
MOTIONS: Final = ("high", "low")
PROMPT_MAX_CHARS: Final = 2000


def _file_urls(value: Sequence[str] | None) -> tuple[str, ...]:
    return check.http_urls(value, "file_urls")


def _check_task_type(_inst: object, _attribute: attrs.Attribute[str], value: object) -> None:
    if value is None:
        raise TypeError(f"task_type must be one of {', '.join(TASK_TYPES)}, not None")
    check.choice(value, "task_type", TASK_TYPES)


@attrs.frozen(kw_only=True)
class GenerateRequest:
    """One generate job: a new Midjourney task from a prompt (and, for some types, images).

    Validated on construction with the provider's documented rules; an invalid request
    raises ``TypeError`` or ``ValueError`` and is never sent. ``None`` always means "not
    sent": the provider's default applies.

    Attributes:
        prompt: The prompt, 1 to 2000 characters.
        task_type: ``"mj_txt2img"`` (default), ``"mj_img2img"``, ``"mj_style_reference"``,
            ``"mj_omni_reference"``, ``"mj_video"`` or ``"mj_video_hd"``.
        speed: ``"relaxed"``, ``"fast"`` or ``"turbo"``; not for the video and omni types.
        aspect_ratio: One of 1:2, 9:16, 2:3, 3:4, 5:6, 6:5, 4:3, 3:2, 1:1, 16:9, 2:1.
        version: The model version: ``"7"``, ``"6.1"``, ``"6"``, ``"5.2"``, ``"5.1"`` or
            ``"niji6"``.
        file_urls: Absolute http(s) URLs of input images: required for the image-input
            types (img2img, style and omni reference, video), exactly one for video.
        stylization: 0 to 1000.
        weirdness: 0 to 3000.
        variety: 0 to 100, in steps of 5.
        ow: The omni weight, 1 to 1000; only with ``"mj_omni_reference"``.
        water_mark: Watermark text.
        enable_translation: Whether the provider translates a non-English prompt.
        video_batch_size: 1, 2 or 4 videos; only for the video types.
        motion: ``"high"`` or ``"low"``; only for the video types.
        callback_url: Absolute http(s) URL the provider POSTs the result to.
        key: Your own submission key (see :class:`VaryRequest`): a key that already
            names a task returns a handle on it and sends nothing.
        id: Your own label for this job (echoed in outcomes, never sent).

    """

    prompt: str = attrs.field(validator=_checked(check.prompt, max_chars=PROMPT_MAX_CHARS))
    task_type: str = attrs.field(default="mj_txt2img", validator=_check_task_type)
    speed: str | None = attrs.field(default=None, validator=_checked(check.choice, SPEEDS))
    aspect_ratio: str | None = attrs.field(
        default=None, validator=_checked(check.choice, ASPECT_RATIOS)
    )
    version: str | None = attrs.field(default=None, validator=_checked(check.choice, VERSIONS))
    file_urls: tuple[str, ...] = attrs.field(default=(), converter=_file_urls)
    stylization: int | None = attrs.field(
        default=None, validator=_checked(check.int_range, 0, 1000)
    )
    weirdness: int | None = attrs.field(default=None, validator=_checked(check.int_range, 0, 3000))
    variety: int | None = attrs.field(
        default=None, validator=_checked(check.int_range, 0, 100, step=5)
    )
    ow: int | None = attrs.field(default=None, validator=_checked(check.int_range, 1, 1000))
    water_mark: str | None = attrs.field(default=None, validator=_check_water_mark)
    enable_translation: bool | None = attrs.field(
        default=None, validator=_checked(check.instance, bool, what="True, False")
    )
    video_batch_size: int | None = attrs.field(
        default=None, validator=_checked(check.choice, VIDEO_BATCH_SIZES)
    )
    motion: str | None = attrs.field(default=None, validator=_checked(check.choice, MOTIONS))
    callback_url: str | None = attrs.field(default=None, validator=_check_callback_url)
    key: str | None = attrs.field(default=None, validator=_checked(check.submission_key))
    id: str | None = None

    def __attrs_post_init__(self) -> None:
        """The rules that depend on ``task_type`` (ValueError)."""
        task_type = self.task_type
        video = task_type in VIDEO_TASK_TYPES
        if self.speed is not None and task_type not in SPEED_TASK_TYPES:
            raise ValueError(
                f"speed is not allowed with task_type {task_type!r}: only with "
                f"{', '.join(SPEED_TASK_TYPES)} (leave it None)"
            )
        if self.ow is not None and task_type != "mj_omni_reference":
            raise ValueError(
                f"ow (omni weight) is only allowed with task_type 'mj_omni_reference', "
                f"not {task_type!r}"
            )
        for name in ("video_batch_size", "motion"):
            if getattr(self, name) is not None and not video:
                raise ValueError(
                    f"{name} is only allowed with task_type 'mj_video' or 'mj_video_hd', "
                    f"not {task_type!r}"
                )
        if task_type in IMAGE_INPUT_TASK_TYPES and not self.file_urls:
            raise ValueError(
                f"file_urls is required with task_type {task_type!r}: give the input image URLs"
            )
        if video and len(self.file_urls) != 1:
            raise ValueError(
                f"file_urls must hold exactly one image URL with task_type {task_type!r}, "
                f"got {len(self.file_urls)}"
            )

    def describe(self) -> str:
        """A short human description, e.g. ``generate('a red fox in the snow')``."""
        shown = (
            self.prompt if len(self.prompt) <= 40 else self.prompt[:39] + "\N{HORIZONTAL ELLIPSIS}"
        )
        kind = "" if self.task_type == "mj_txt2img" else f", {self.task_type}"
        return f"generate({shown!r}{kind}){_label(self.id, self.key)}"


@attrs.frozen(kw_only=True)
class UpscaleRequest:
    """One upscale job: one image of an earlier generation task, upscaled.

    Validated on construction; an invalid request raises ``TypeError`` or ``ValueError``
    and is never sent.

    Attributes:
        task_id: The id of the earlier Midjourney generation task (the parent).
        image_index: Which of the parent's 4 images, 0-based: 0, 1, 2 or 3 (sent as is:
            ``Session(index_base=...)`` applies to vary only).
        water_mark: Watermark text, or ``None`` for none.
        callback_url: Absolute http(s) URL the provider POSTs the result to, or ``None``.
        key: Your own submission key (see :class:`GenerateRequest`), or ``None``.
        id: Your own label for this job (echoed in outcomes, never sent), or ``None``.

    """

    task_id: str = attrs.field(validator=_check_task_id)
    image_index: int = attrs.field(validator=_check_image_index)
    water_mark: str | None = attrs.field(default=None, validator=_check_water_mark)
    callback_url: str | None = attrs.field(default=None, validator=_check_callback_url)
    key: str | None = attrs.field(default=None, validator=_checked(check.submission_key))
    id: str | None = None

    def describe(self) -> str:
        """A short human description, e.g. ``upscale(abc123, image 2)``."""
        return f"upscale({self.task_id}, image {self.image_index}){_label(self.id, self.key)}"


#: The extend endpoint's ``taskType`` values: with a prompt (manual) or without (auto).
EXTEND_MANUAL: Final = "mj_video_extend_manual"
EXTEND_AUTO: Final = "mj_video_extend_auto"
EXTEND_TASK_TYPES: Final = (EXTEND_MANUAL, EXTEND_AUTO)
#: Which video of the parent an extend names: the docs give example 0 and no range; a
#: video generate makes at most 4 (``videoBatchSize``), so 0..3, and the provider's refusal
#: speaks for an index its task does not have.
_check_video_index = _checked(check.index, "which video of the parent task")


@attrs.frozen
class ExtendRequest:
    """One video extend job: one video of an earlier ``mj_video`` / ``mj_video_hd`` task, longer.

    Validated on construction; an invalid request raises ``TypeError`` or ``ValueError``
    and is never sent. ``task_id`` and ``index`` may be given by position.

    Attributes:
        task_id: The id of the earlier video generate task (the parent).
        index: Which of its videos, 0-based: 0, 1, 2 or 3 (a task with fewer videos is
            refused by the provider).
        prompt: The prompt of a manual extend, 1 to 2000 characters; ``None`` for an auto
            extend (which takes no prompt).
        task_type: ``"mj_video_extend_manual"`` or ``"mj_video_extend_auto"``. Given as
            ``None``, it is manual when there is a prompt and auto otherwise; after
            construction it is always one of the two (never ``None``).
        water_mark: Watermark text, or ``None`` for none.
        callback_url: Absolute http(s) URL the provider POSTs the result to, or ``None``.
        key: Your own submission key (see :class:`VaryRequest`), or ``None``.
        id: Your own label for this job (echoed in outcomes, never sent), or ``None``.

    """

    task_id: str = attrs.field(validator=_check_task_id)
    index: int = attrs.field(validator=_check_video_index)
    prompt: str | None = attrs.field(default=None, kw_only=True)
    task_type: str | None = attrs.field(
        default=None, kw_only=True, validator=_checked(check.choice, EXTEND_TASK_TYPES)
    )
    water_mark: str | None = attrs.field(default=None, kw_only=True, validator=_check_water_mark)
    callback_url: str | None = attrs.field(
        default=None, kw_only=True, validator=_check_callback_url
    )
    key: str | None = attrs.field(
        default=None, kw_only=True, validator=_checked(check.submission_key)
    )
    id: str | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        """Resolve ``task_type`` and apply the prompt rule of each type (ValueError)."""
        task_type = self.task_type
        if task_type is None:
            task_type = EXTEND_MANUAL if self.prompt is not None else EXTEND_AUTO
            object.__setattr__(self, "task_type", task_type)  # frozen: set once, here
        if task_type == EXTEND_MANUAL:
            if self.prompt is None:
                raise ValueError(
                    "prompt is required with task_type 'mj_video_extend_manual' "
                    "(1 to 2000 characters); leave task_type None for an auto extend"
                )
            check.prompt(self.prompt, "prompt", max_chars=PROMPT_MAX_CHARS)
        elif self.prompt is not None:
            raise ValueError(
                "prompt is not allowed with task_type 'mj_video_extend_auto' (the provider "
                "refuses it): leave it None, or use 'mj_video_extend_manual'"
            )

    def describe(self) -> str:
        """A short human description, e.g. ``extend(abc123, video 0, auto)``."""
        mode = "manual" if self.task_type == EXTEND_MANUAL else "auto"
        return f"extend({self.task_id}, video {self.index}, {mode}){_label(self.id, self.key)}"


#: Every request class a session can submit (each one is a row of ``_submit.KINDS``).
SubmitRequest: TypeAlias = VaryRequest | GenerateRequest | UpscaleRequest | ExtendRequest


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
