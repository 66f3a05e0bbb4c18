"""The fake's tasks: drawn once at creation, their state computed lazily from the clock.

No timer runs per task: a task's ``successFlag`` at any moment follows from when it was
created, the duration it drew and the outcome it drew, so tens of thousands of tasks cost
only their records.
"""

from __future__ import annotations

import enum
import itertools
import random
from typing import Literal, TypeAlias

import attrs

from ._settings import FakeSettings

#: How one record spells its times: ISO-8601 with ``Z``, with ``+00:00``, or epoch ms.
TimeStyle: TypeAlias = Literal["iso_z", "iso_offset", "epoch_ms"]

_STYLES: tuple[TimeStyle, ...] = ("iso_z", "iso_offset", "epoch_ms")

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


@attrs.frozen(kw_only=True)
class VaryParams:
    """A submission that passed validation; ``image_index`` is the wire value."""

    parent_task_id: str
    image_index: int
    water_mark: str | None
    callback_url: str | None
    param_json: str


@attrs.frozen(kw_only=True, slots=True)
class Task:
    """One task the fake created; times are readings of the provider's clock, in seconds."""

    task_id: str
    params: VaryParams
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
        self._serial = itertools.count(1)
        self._tasks: dict[str, Task] = {}
        self._parents: set[str] = set()
        self._accepted: set[tuple[str, int, str | None]] = set()

    @property
    def tasks(self) -> dict[str, Task]:
        """The tasks by id (the store's own dict: do not modify it)."""
        return self._tasks

    def get(self, task_id: str) -> Task | None:
        """The task with this id, or ``None``."""
        return self._tasks.get(task_id)

    def add_parent(self, task_id: str) -> None:
        """Make ``task_id`` a finished parent task."""
        self._parents.add(task_id)

    def is_extra_parent(self, task_id: str, settings: FakeSettings) -> bool:
        """Whether ``task_id`` is a parent the fake did not create (added or by prefix)."""
        prefix = settings.parent_prefix
        return task_id in self._parents or (prefix is not None and task_id.startswith(prefix))

    def is_parent(self, task_id: str, settings: FakeSettings, now: float) -> bool:
        """Whether a vary of ``task_id`` may be submitted at clock reading ``now``."""
        task = self._tasks.get(task_id)
        if task is not None:
            return task.flag_at(now) is SuccessFlag.SUCCESS
        return self.is_extra_parent(task_id, settings)

    def create(self, params: VaryParams, settings: FakeSettings, now: float) -> tuple[Task, bool]:
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
        time_style: TimeStyle
        if settings.time_format == "iso":
            time_style = "iso_z"
        elif settings.time_format == "epoch_ms":
            time_style = "epoch_ms"
        else:
            time_style = style

        task = Task(
            task_id=f"fakevary{next(self._serial):06d}{bits:012x}",
            params=params,
            created_at=now,
            visible_at=now + settings.invisible_for,
            finished_at=now + duration,
            outcome=outcome,
            time_style=time_style,
            image_count=settings.images_per_task,
        )
        self._tasks[task.task_id] = task
        key = (params.parent_task_id, params.image_index, params.water_mark)
        duplicate = key in self._accepted
        self._accepted.add(key)
        return task, duplicate


@attrs.frozen(kw_only=True)
class TaskSnapshot:
    """A task the fake created, as it stands at one moment.

    Times are readings of the provider's clock, in seconds (compare them with
    ``provider.now()``), not wall-clock times.

    Attributes:
        task_id: The task's id.
        parent_task_id: The ``taskId`` the vary was submitted for.
        image_index: The ``imageIndex`` as sent on the wire.
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
    parent_task_id: str
    image_index: int
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
