"""The fake's tasks: drawn once at creation, their state computed lazily from the clock.

No timer runs per task: a task's ``successFlag`` at any moment follows from when it was
created, the duration it drew and the outcome it drew, so tens of thousands of tasks cost
only their records.
"""

from __future__ import annotations

import enum
import itertools
import random
import uuid
from typing import Final, Literal, TypeAlias

import attrs

from ._settings import FakeSettings

#: The submission endpoints: ``generate``, ``generateVary``, ``generateUpscale``,
#: ``generateVideoExtend``.
SubmitKind: TypeAlias = Literal["generate", "vary", "upscale", "extend"]
#: What a task's result files are: images, or the videos of the ``mj_video*`` types.
Media: TypeAlias = Literal["png", "mp4"]

#: How one record spells its times: ISO-8601 with ``Z``, with ``+00:00``, epoch ms, or
#: ``"YYYY-MM-DD HH:MM:SS"`` (UTC without a zone).
TimeStyle: TypeAlias = Literal["iso_z", "iso_offset", "epoch_ms", "plain"]

_STYLES: tuple[TimeStyle, ...] = ("iso_z", "iso_offset", "epoch_ms")
#: The one time style of each ``time_format`` but ``"mixed"``.
TIME_STYLES: Final[dict[str, TimeStyle]] = {
    "iso": "iso_z",
    "epoch_ms": "epoch_ms",
    "plain": "plain",
}

# A task whose creation fails gives up after this share of its drawn duration.
_CREATE_FAILURE_SPEED = 0.1


class SuccessFlag(enum.IntEnum):
    """The provider's ``successFlag``: 0 while generating, then one of three final values."""

    GENERATING = 0
    SUCCESS = 1
    CREATE_FAILED = 2
    GENERATE_FAILED = 3


# (errorCode, errorMessage) of a failed task, per final flag.
FAILURE_DETAILS: dict[SuccessFlag, tuple[int, str]] = {
    SuccessFlag.CREATE_FAILED: (500, "Task creation failed (fake provider)"),
    SuccessFlag.GENERATE_FAILED: (501, "Image generation failed (fake provider)"),
}


# The id tag of each kind's tasks ("fakevary..." for vary, as before generate existed).
_ID_TAGS: dict[SubmitKind, str] = {
    "generate": "gen",
    "vary": "vary",
    "upscale": "ups",
    "extend": "ext",
}


@attrs.frozen(kw_only=True)
class SubmitParams:
    """A submission that passed validation.

    Attributes:
        kind: Which endpoint accepted it.
        task_type: The ``taskType`` its record shows.
        parent_task_id: The task varied, upscaled or extended; ``None`` for a generate.
        image_index: The ``imageIndex`` as sent on the wire (an extend's video ``index``);
            ``None`` for a generate.
        water_mark: The ``waterMark`` sent, or ``None``.
        callback_url: The ``callBackUrl`` sent, or ``None``.
        param_json: The record's ``paramJson``: the request's known fields, JSON-encoded.
        image_count: Result files when it succeeds; ``None`` means a grid of the settings'
            ``images_per_task``.
        media: What the result files are.
        identity: What makes two submissions the same one (for the duplicate figure).
    """

    kind: SubmitKind
    task_type: str
    parent_task_id: str | None
    image_index: int | None
    water_mark: str | None
    callback_url: str | None
    param_json: str
    image_count: int | None = None
    media: Media = "png"
    identity: tuple[object, ...]


@attrs.frozen(kw_only=True, slots=True)
class Task:
    """One task the fake created; times are readings of the provider's clock, in seconds."""

    task_id: str
    params: SubmitParams
    created_at: float
    visible_at: float
    finished_at: float
    outcome: SuccessFlag
    time_style: TimeStyle
    image_count: int

    def flag_at(self, now: float) -> SuccessFlag:
        """The task's ``successFlag`` at clock reading ``now``."""
        return self.outcome if now >= self.finished_at else SuccessFlag.GENERATING


class TaskStore:
    """Every task and parent the fake knows, and the seeded draws that shape new tasks."""

    def __init__(self, *, seed: int) -> None:
        # A string seed is stable across processes (unlike hash-randomised objects).
        self._rng = random.Random(f"{seed}:tasks")
        # Not from the seed: two fakes (even with one seed) must never hand out the same
        # task id, or a download that skips existing files keeps another run's images.
        self._instance = uuid.uuid4().hex[:8]
        self._serial = itertools.count(1)
        self._tasks: dict[str, Task] = {}
        self._parents: dict[str, None] = {}  # insertion-ordered set
        self._accepted: set[tuple[object, ...]] = set()

    @property
    def tasks(self) -> dict[str, Task]:
        """The tasks by id (the store's own dict: do not modify it)."""
        return self._tasks

    def get(self, task_id: str) -> Task | None:
        """The task with this id, or ``None``."""
        return self._tasks.get(task_id)

    def add_parent(self, task_id: str) -> None:
        """Make ``task_id`` a finished parent task."""
        self._parents[task_id] = None

    def new_parent_id(self) -> str:
        """A parent id no one used yet (unique across fakes, like task ids)."""
        return f"fakeparent{self._instance}{next(self._serial):06d}"

    @property
    def added_parents(self) -> tuple[str, ...]:
        """The ids given to :meth:`add_parent`, oldest first."""
        return tuple(self._parents)

    def is_extra_parent(self, task_id: str, settings: FakeSettings) -> bool:
        """Whether ``task_id`` is a parent the fake did not create (added or by prefix)."""
        prefix = settings.parent_prefix
        return task_id in self._parents or (prefix is not None and task_id.startswith(prefix))

    def parent_refusal(
        self,
        task_id: str,
        image_index: int,
        settings: FakeSettings,
        now: float,
    ) -> str | None:
        """Why image ``image_index`` (0-based) of ``task_id`` cannot be varied or upscaled now.

        ``None`` means it can: ``task_id`` is a parent the fake did not create (added or by
        prefix), or a generate or vary task of the fake that succeeded with that image.
        """
        task = self._tasks.get(task_id)
        if task is None:
            if self.is_extra_parent(task_id, settings):
                return None
            return f"taskId {task_id!r} is not a task of this account"
        if task.params.kind == "upscale" or task.params.media != "png":
            return (
                f"taskId {task_id!r} is a {task.params.task_type} task: only the image grid "
                "of a generate or vary task can be varied or upscaled"
            )
        return _result_refusal(task, image_index, "image", now)

    def video_parent_refusal(self, task_id: str, index: int, now: float) -> str | None:
        """Why video ``index`` of ``task_id`` cannot be extended now; ``None`` if it can.

        It can when ``task_id`` is an ``mj_video`` or ``mj_video_hd`` generate task of the
        fake that succeeded with at least ``index + 1`` videos.
        """
        task = self._tasks.get(task_id)
        if task is None:
            return f"taskId {task_id!r} is not a task of this account"
        if task.params.kind != "generate" or task.params.media != "mp4":
            return (
                f"taskId {task_id!r} is a {task.params.task_type} task: only an mj_video or "
                "mj_video_hd task can be extended"
            )
        return _result_refusal(task, index, "video", now)

    def finished_parents(self, now: float) -> list[str]:
        """Ids of the fake's own tasks that may be varied or upscaled now, oldest first."""
        return [
            task.task_id
            for task in self._tasks.values()
            if task.params.kind != "upscale"
            and task.params.media == "png"
            and task.flag_at(now) is SuccessFlag.SUCCESS
        ]

    def create(
        self,
        params: SubmitParams,
        settings: FakeSettings,
        now: float,
    ) -> tuple[Task, bool]:
        """Create a task for an accepted submission; also says whether it is a duplicate."""
        rng = self._rng
        # Always the same number of draws per task, so a seed gives the same tasks whatever
        # the settings' rates are.
        duration = rng.uniform(*settings.task_duration)
        fails = rng.random() < settings.failure_rate
        fails_at_creation = rng.random() < settings.create_failure_share
        style = rng.choice(_STYLES)
        bits = rng.getrandbits(48)

        if not fails:
            outcome = SuccessFlag.SUCCESS
        elif fails_at_creation:
            outcome = SuccessFlag.CREATE_FAILED
            duration *= _CREATE_FAILURE_SPEED
        else:
            outcome = SuccessFlag.GENERATE_FAILED
        time_style = TIME_STYLES.get(settings.time_format, style)  # "mixed": the drawn one

        tag = _ID_TAGS[params.kind]
        task = Task(
            task_id=f"fake{tag}{self._instance}{next(self._serial):06d}{bits:012x}",
            params=params,
            created_at=now,
            visible_at=now + settings.invisible_for,
            finished_at=now + duration,
            outcome=outcome,
            time_style=time_style,
            image_count=(
                settings.images_per_task if params.image_count is None else params.image_count
            ),
        )
        self._tasks[task.task_id] = task
        duplicate = params.identity in self._accepted
        self._accepted.add(params.identity)
        return task, duplicate


def _result_refusal(task: Task, index: int, noun: str, now: float) -> str | None:
    """Why ``task`` has no ``noun`` ``index`` to start from now; ``None`` if it has."""
    flag = task.flag_at(now)
    if flag is SuccessFlag.GENERATING:
        return f"taskId {task.task_id!r} is not finished yet (successFlag 0)"
    if flag is not SuccessFlag.SUCCESS:
        return f"taskId {task.task_id!r} failed (successFlag {int(flag)}): it has no {noun}s"
    if index >= task.image_count:
        return f"taskId {task.task_id!r} has {task.image_count} {noun}s: no {noun} {index}"
    return None


@attrs.frozen(kw_only=True)
class TaskSnapshot:
    """A task the fake created, as it stands at one moment.

    Times are readings of the provider's clock, in seconds (compare them with
    ``provider.now()``), not wall-clock times.

    Attributes:
        task_id: The task's id.
        kind: The endpoint that created it: ``"generate"``, ``"vary"``, ``"upscale"`` or
            ``"extend"``.
        task_type: The ``taskType`` its record shows (``"mj_vary"`` for a vary,
            ``"mj_upscale"`` for an upscale, the request's ``taskType`` for a generate or
            an extend).
        parent_task_id: The ``taskId`` the vary, upscale or extend was submitted for;
            ``None`` for a generate.
        image_index: The ``imageIndex`` as sent on the wire (an extend's ``index``);
            ``None`` for a generate.
        param_json: The record's ``paramJson`` (the request's known fields, JSON-encoded).
        water_mark: The ``waterMark`` sent, or ``None``.
        callback_url: The ``callBackUrl`` sent, or ``None``.
        created_at: When the submission was accepted.
        visible_at: From when ``record-info`` shows the task.
        finished_at: When the task reaches (or reached) its outcome.
        outcome: The final ``successFlag`` the task drew.
        success_flag: The ``successFlag`` now.
        result_urls: The result image URLs (empty unless the task succeeded and finished).
        polls: ``record-info`` requests for the task so far.
        detection_delay: Seconds from the task finishing to the first ``record-info``
            answer that showed it final, or ``None`` while no poll has seen it final.
    """

    task_id: str
    kind: SubmitKind
    task_type: str
    parent_task_id: str | None
    image_index: int | None
    param_json: str
    water_mark: str | None
    callback_url: str | None
    created_at: float
    visible_at: float
    finished_at: float
    outcome: SuccessFlag
    success_flag: SuccessFlag
    result_urls: tuple[str, ...]
    polls: int
    detection_delay: float | None

    @property
    def is_final(self) -> bool:
        """Whether the task had finished at the moment of the snapshot."""
        return self.success_flag is not SuccessFlag.GENERATING
