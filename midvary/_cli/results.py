"""The bulk command's results file: one JSON line per finished job, written and read.

Writing: :func:`result_line` makes a finished job's line and :class:`ResultsFile` appends
it. A line cut by a crash is dropped when the file is opened again;
:meth:`ResultsFile.ensure` appends the lines the store kept but the file lacks. The last
line of a job wins.

Reading (the gallery, a re-run): :func:`parse_results` reads the lines ``midvary bulk``
(and ``midvary demo``) write: one JSON object a line. A line names the task the job made
(``task_id``); a vary or upscale line names its parent task (``parent_task_id``) and image
(``image_index``); a generate line has neither but its ``prompt``; a child of a generate
row names it (``parent``). A line that cannot be read (not JSON, a required field missing
or of the wrong type, not UTF-8) becomes a :class:`BadLine` with its number and the reason.
When a job has several lines (a re-submitted uncertain job), the last one wins, as for
``bulk`` itself. Lines written before the rename of issue 18 (the job's task in
``vary_task_id``, the parent in ``task_id``) read the same: see :func:`line_task_ids`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar

import attrs

import midvary

from .chain import action_of
from .jobs import BulkJob
from .tally import Ending

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ResultsFile:
    """The append-only results file: one JSON line per finished job.

    Use it as ``async with``. Its file work runs in one worker thread of its own, in the
    order it was asked for: the event loop never waits for the disk.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: dict[str, str] = {}
        self._disk = concurrent.futures.ThreadPoolExecutor(1, "midvary-results")
        self._file: TextIO | None = None

    async def __aenter__(self) -> ResultsFile:
        self._file = await self._run(self._open)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._file is not None:
                await self._run(_close, self._file)
        finally:
            await asyncio.to_thread(self._disk.shutdown, wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._disk, fn, *args)

    def _open(self) -> TextIO:
        if self.path.exists():
            self._repair()
        return self.path.open("a", encoding="utf-8")

    def _repair(self) -> None:
        """Drop a line cut by a crash; remember each job's last line."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            logger.warning("dropping a results line cut by a crash in %s", self.path)
            with self.path.open("r+b") as file:
                file.truncate(keep)
            data = data[:keep]
        for line in data.decode("utf-8", errors="replace").splitlines():
            try:
                key = json.loads(line).get("id")
            except (ValueError, AttributeError):
                continue
            if isinstance(key, str):
                self._last[key] = line

    async def ensure(self, key: str, line: str) -> None:
        """Append ``line``, the result the store kept for job ``key``, if this file lacks it."""
        if self._last.get(key) != line:
            await self.write(key, line)

    async def write(self, key: str, line: str) -> None:
        """Append ``line`` (the result of job ``key``)."""
        assert self._file is not None  # noqa: S101 - opened by async with
        self._last[key] = line
        await self._run(_append, self._file, line)


def _append(file: TextIO, line: str) -> None:
    file.write(line + "\n")
    file.flush()


def _close(file: TextIO) -> None:
    """Flush the file to disk and close it."""
    file.flush()
    os.fsync(file.fileno())
    file.close()


def result_line(
    job: BulkJob,
    ending: Ending,
    *,
    task_id: str | None = None,
    record: midvary.TaskRecord | None = None,
    error: BaseException | None = None,
    paths: Sequence[Path] = (),
    request: object = None,
    recovered: bool = False,
) -> str:
    """The JSON line of one finished job; its ``status`` is ``ending``'s word.

    ``request`` is what was submitted (a child's is made at run time); ``None``: the job's.
    ``task_id`` is the task the job made, whatever its action (``None``: it never got one);
    ``parent_task_id`` is the task a vary or upscale was made from (``None`` for generate);
    :func:`line_task_ids` also reads the names lines had before issue 18.
    ``recovered`` (written only when true): the submission's answer was lost and the
    provider's callback named its task (``--callback-url``).
    """
    sent = request if request is not None else job.request
    data: dict[str, Any] = {
        "id": job.key,
        "line": job.line,
        "action": action_of(sent)
        if sent is not None
        else (job.step.action if job.step else "vary"),
        "parent_task_id": getattr(sent, "task_id", None),
        # An extend's video index goes where a vary's image index does.
        "image_index": getattr(sent, "image_index", getattr(sent, "index", None)),
        "water_mark": getattr(sent, "water_mark", None),
        "status": ending.value,
        "task_id": task_id,
        "image_urls": list(record.image_urls) if record is not None else [],
        "files": [str(path) for path in paths],
        "error": midvary.to_json_dict(error) if error is not None else None,
    }
    if isinstance(sent, midvary.GenerateRequest | midvary.ExtendRequest) and sent.prompt:
        data["prompt"] = sent.prompt
    if job.parent is not None:
        data["parent"] = job.parent
    if recovered:
        data["recovered"] = True
    if isinstance(error, midvary.TaskFailedError):
        record = error.record
        data["record"] = midvary.to_json_dict(record)
    if record is not None:
        # When the task was created and finished (ISO-8601, or null): the gallery's timing.
        times = midvary.to_json_dict(record)
        data["created_at"], data["completed_at"] = times["created_at"], times["completed_at"]
    return json.dumps(data, ensure_ascii=False)


def outcome_line(job: BulkJob, outcome: midvary.JobOutcome) -> str:
    """The result line of ``job``, ended in this run as ``outcome`` says."""
    return result_line(
        job,
        Ending.of(outcome),
        task_id=outcome.task_id,
        record=outcome.record,
        error=outcome.error,
        paths=outcome.paths,
        request=outcome.request,
        recovered=outcome.recovered,
    )


class UncertainAtResumeError(midvary.MidvaryError):
    """The job's submission was in flight when an earlier run stopped."""


def uncertain_line(job: BulkJob, message: str, request: object) -> str:
    """The result line of a job whose POST was in flight when an earlier run stopped."""
    return result_line(
        job, Ending.UNCERTAIN, error=UncertainAtResumeError(message), request=request
    )


# -- reading ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class GalleryJob:
    """One job of a results file, as the gallery shows it.

    Each attribute is the line's field of the same name (see the module; ``None`` or empty
    when absent), but ``number``, the line of the results file (1-based); ``error_type``,
    ``error_message`` and ``error_code``: ``error.type``, ``error.message`` and
    ``record.error_code``; ``jobs_line``: ``line``; ``created_at`` and ``completed_at``, else
    ``record``'s; ``duration``, else completed minus created (seconds). ``files`` are as
    written: relative to where bulk ran, or absolute.
    """

    number: int
    id: str
    parent_task_id: str | None
    image_index: int | None
    status: str
    task_id: str | None = None
    water_mark: str | None = None
    image_urls: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    error_type: str | None = None
    error_message: str | None = None
    error_code: int | None = None
    jobs_line: int | None = None
    action: str | None = None
    prompt: str | None = None
    parent: str | None = None
    created_at: str | None = None
    completed_at: str | None = None
    duration: float | None = None


@attrs.frozen(kw_only=True)
class BadLine:
    """A line of the results file that could not be read: its number and why."""

    number: int
    reason: str


@attrs.frozen(kw_only=True)
class GalleryResults:
    """A results file read: its jobs (last line of each job id), and its unreadable lines.

    Attributes:
        jobs: One entry per job id (its last line), in the order of their first line.
        bad_lines: The lines that could not be read.
        replaced: How many lines were superseded by a later line of the same job.

    """

    jobs: tuple[GalleryJob, ...]
    bad_lines: tuple[BadLine, ...] = ()
    replaced: int = 0


class _BadLineError(ValueError):
    """A line's content is not a result line; the message says why."""


def parse_results(data: bytes | str) -> GalleryResults:
    """Read the lines of a results file; unreadable lines become :class:`BadLine` entries.

    Args:
        data: The whole file's content; only a line feed ends a line.

    Returns:
        The jobs and the bad lines.

    """
    raw = data.encode() if isinstance(data, str) else data
    jobs: dict[str, GalleryJob] = {}
    bad: list[BadLine] = []
    replaced = 0
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            job = _job(number, line)
        except _BadLineError as exc:
            bad.append(BadLine(number=number, reason=str(exc)))
            continue
        if job.id in jobs:
            replaced += 1
        jobs[job.id] = job  # the last line wins; the job keeps its first line's place
    return GalleryResults(jobs=tuple(jobs.values()), bad_lines=tuple(bad), replaced=replaced)


def read_results(path: Path) -> GalleryResults:
    """Read a results file (``midvary bulk``'s ``--out``), as :func:`parse_results` does.

    Raises:
        OSError: The file cannot be read (``FileNotFoundError`` if it does not exist).

    """
    return parse_results(Path(path).read_bytes())


# -- reading one line ------------------------------------------------------------------------


def line_task_ids(data: Mapping[str, Any]) -> tuple[Any, Any]:
    """A results line's (parent task id, task id made), in today's format or the old one.

    Today a line says ``parent_task_id`` and ``task_id``. Before issue 18 it said ``task_id``
    for the parent and ``vary_task_id`` for the task made; every such line has the
    ``vary_task_id`` field (``null`` when the job got no task), which tells the formats
    apart. The values are returned unchecked (the callers word their own errors).
    """
    if "vary_task_id" in data:
        return data.get("task_id"), data.get("vary_task_id")
    return data.get("parent_task_id"), data.get("task_id")


def _job(number: int, line: bytes) -> GalleryJob:
    """The job of one line, or :class:`_BadLineError` saying what is wrong with it."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadLineError(f"not UTF-8 (byte {exc.start + 1} of the line)") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _BadLineError(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _BadLineError(f"not a JSON object but {type(data).__name__}")
    record = _field(data, "record", dict, required=False) or {}
    error = _field(data, "error", dict, required=False) or {}
    action = _text(data, "action")
    # A generate job has no parent task nor image: its prompt is what it is about.
    generate = action == "generate"
    parent_task_id, task_id = line_task_ids(data)
    ids = {"parent_task_id": parent_task_id, "task_id": task_id}
    return GalleryJob(
        number=number,
        id=_required(data, "id"),
        parent_task_id=_text(ids, "parent_task_id")
        if generate
        else _required(ids, "parent_task_id"),
        image_index=_field(data, "image_index", int, required=not generate),
        status=_required(data, "status"),
        task_id=_text(ids, "task_id"),
        water_mark=_field(data, "water_mark", str, required=False),
        image_urls=_strings(data, "image_urls"),
        files=_strings(data, "files"),
        error_type=_text(error, "error.type", key="type"),
        error_message=_field(error, "error.message", str, required=False, key="message"),
        error_code=_field(record, "record.error_code", int, required=False, key="error_code"),
        jobs_line=_field(data, "line", int, required=False),
        action=action,
        prompt=_field(data, "prompt", str, required=generate),
        parent=_text(data, "parent"),
        created_at=_text(data, "created_at")
        or _text(record, "record.created_at", key="created_at"),
        completed_at=_text(data, "completed_at")
        or _text(record, "record.completed_at", key="completed_at"),
        duration=_duration(data, record),
    )


def _field(
    data: Mapping[str, Any], name: str, kind: type, *, required: bool, key: str | None = None
) -> Any:
    """``data[key or name]`` if it is a ``kind``; ``None`` when absent or null and optional."""
    value = data.get(key or name)
    if value is None:
        if required:
            raise _BadLineError(f"the field {name!r} is missing")
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _BadLineError(
            f"the field {name!r} must be {_KINDS[kind]}, not {type(value).__name__}"
        )
    return value


_KINDS: Final[dict[type, str]] = {
    str: "a string",
    int: "an integer",
    dict: "an object",
    list: "a list of strings",
}


def _text(data: Mapping[str, Any], name: str, *, key: str | None = None) -> str | None:
    """An optional string field; empty means ``None``."""
    return _field(data, name, str, required=False, key=key) or None


def _required(data: Mapping[str, Any], name: str) -> str:
    """A required, non-blank string field."""
    value: str = _field(data, name, str, required=True)
    if not value.strip():
        raise _BadLineError(f"the field {name!r} is empty")
    return value


def _strings(data: Mapping[str, Any], name: str) -> tuple[str, ...]:
    values = _field(data, name, list, required=False) or []
    if not all(isinstance(value, str) for value in values):
        raise _BadLineError(f"the field {name!r} must be a list of strings")
    return tuple(values)


def _duration(data: Mapping[str, Any], record: Mapping[str, Any]) -> float | None:
    """Seconds from ``duration``, else from the created and completed times (if both)."""
    value = data.get("duration")
    if value is not None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and value >= 0)
        ):
            raise _BadLineError("the field 'duration' must be a number of seconds >= 0")
        return float(value)
    created = data.get("created_at") or record.get("created_at")
    completed = data.get("completed_at") or record.get("completed_at")
    try:
        start, end = datetime.fromisoformat(str(created)), datetime.fromisoformat(str(completed))
        seconds = (end - start).total_seconds()
    except (TypeError, ValueError):  # absent, not ISO 8601, or one naive and one aware
        return None
    return seconds if seconds >= 0 else None
