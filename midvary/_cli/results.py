"""The bulk command's results file: one JSON line per finished job, append-only.

A line cut by a crash is dropped when the file is opened again; :meth:`ResultsFile.ensure`
appends the lines the journal kept but the file lacks. The last line of a job wins.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import midvary

from .chain import action_of
from .jobs import BulkJob
from .tally import Ending

logger = logging.getLogger(__name__)


class ResultsFile:
    """The append-only results file: one JSON line per finished job."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: dict[str, str] = {}
        if path.exists():
            self._repair()
        self._file = path.open("a", encoding="utf-8")

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

    def ensure(self, results: dict[str, str]) -> int:
        """Append every journaled result line this file lacks; return how many."""
        missing = [line for key, line in results.items() if self._last.get(key) != line]
        for line in missing:
            self.write(json.loads(line)["id"], line)
        return len(missing)

    def write(self, key: str, line: str) -> None:
        """Append ``line`` (the result of job ``key``)."""
        self._file.write(line + "\n")
        self._file.flush()
        self._last[key] = line

    def close(self) -> None:
        """Flush the file to disk and close it."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


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
    ``parent_task_id`` is the task a vary or upscale was made from (``None`` for generate).
    Lines written before the rename (issue 18) named these ``vary_task_id`` and
    ``task_id``; :func:`midvary._gallery_lines.line_task_ids` reads both formats.
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


class UncertainAtResumeError(midvary.MidvaryError):
    """The job's submission was in flight when an earlier run stopped."""
