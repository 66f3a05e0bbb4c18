"""What to do with a finished grid (``--vary all``, ``--upscale 0,2``) or video (``extend``).

Shared by ``midvary generate`` and ``midvary bulk``: the text forms are parsed here into
:class:`Step` tuples, and :func:`children` turns them into the requests of a parent task.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, Literal

import attrs

import midvary

Action = Literal["vary", "upscale", "extend"]
#: The child actions, in the order their requests are made.
CHILD_ACTIONS: Final[tuple[Action, ...]] = ("vary", "upscale", "extend")
IMAGE_INDEXES: Final = (0, 1, 2, 3)


@attrs.frozen
class Step:
    """One child of a grid or video: ``action`` of image (or video) ``image_index`` (0-based)."""

    action: Action
    image_index: int


def parse_indexes(text: str, *, what: str) -> tuple[int, ...]:
    """``all`` or a comma-separated list of 0-based image indexes (0..3), sorted, unique.

    Raises:
        ValueError: ``text`` is neither; the message names ``what`` and says what is allowed.

    """
    cleaned = text.strip().lower()
    if cleaned == "all":
        return IMAGE_INDEXES
    try:
        numbers = {int(part) for part in cleaned.split(",") if part.strip()}
    except ValueError:
        numbers = set()
    if not numbers or not numbers <= set(IMAGE_INDEXES):
        raise ValueError(
            f"{what} takes 'all' or image indexes 0..3 separated by commas (e.g. 0,2), got {text!r}"
        )
    return tuple(sorted(numbers))


def steps_for(action: Action, indexes: Iterable[int]) -> tuple[Step, ...]:
    """One :class:`Step` of ``action`` per image index."""
    return tuple(Step(action, index) for index in indexes)


def parse_then(text: str) -> tuple[Step, ...]:
    """A ``then`` value: ``vary:all``, ``upscale:0,2``, ``extend:0``, joined by ``;`` or spaces.

    ``extend`` (an auto extend of each video named) is for a video generate row; the others
    for an image grid (the caller checks which the row is).

    Raises:
        ValueError: A part is not ``vary:INDEXES``, ``upscale:INDEXES`` or
            ``extend:INDEXES``.

    """
    steps: list[Step] = []
    for part in re.split(r"[;\s]+", text.strip()):
        if not part:
            continue
        action, _, indexes = part.partition(":")
        action = action.strip().lower()
        if action not in CHILD_ACTIONS or not indexes:
            raise ValueError(
                "then takes vary:INDEXES and/or upscale:INDEXES, or extend:INDEXES for a "
                f"video (INDEXES: all, or 0..3 separated by commas), joined by ';', got {part!r}"
            )
        kind: Action = next(name for name in CHILD_ACTIONS if name == action)
        steps.extend(steps_for(kind, parse_indexes(indexes, what=f"then {kind}")))
    return tuple(dict.fromkeys(steps))


def child_request(
    parent: str, step: Step, *, label: str | None = None, key: str | None = None
) -> midvary.VaryRequest | midvary.UpscaleRequest | midvary.ExtendRequest:
    """The request of ``step`` for the finished task ``parent`` (``key``: its submission key).

    An ``extend`` step is an auto extend of video ``step.image_index``.
    """
    if step.action == "extend":
        return midvary.ExtendRequest(parent, step.image_index, id=label, key=key)
    cls = midvary.VaryRequest if step.action == "vary" else midvary.UpscaleRequest
    return cls(task_id=parent, image_index=step.image_index, id=label, key=key)


def action_of(request: object) -> str:
    """``generate``, ``vary``, ``upscale`` or ``extend``: what kind of request ``request`` is."""
    if isinstance(request, midvary.GenerateRequest):
        return "generate"
    if isinstance(request, midvary.ExtendRequest):
        return "extend"
    if isinstance(request, midvary.UpscaleRequest):
        return "upscale"
    return "vary"
