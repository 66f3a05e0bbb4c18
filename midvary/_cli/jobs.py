"""The bulk command's JOBS file: read a CSV or JSONL file into checked vary jobs.

Bad rows are reported with their line number and skipped; each valid row becomes a
:class:`BulkJob` with a stable key (its own ``id``, else a hash of its content and its
occurrence number among identical rows, see :mod:`midvary._cli.journal`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

import midvary

from ._kit import UsageError


@attrs.frozen(kw_only=True)
class BulkJob:
    """One valid row of the JOBS file."""

    key: str
    line: int
    content: str
    request: midvary.VaryRequest


@attrs.frozen(kw_only=True)
class JobsFile:
    """The JOBS file read: its valid jobs, its bad rows, and its hash."""

    jobs: tuple[BulkJob, ...]
    bad_rows: tuple[str, ...]
    sha256: str


def _rows(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """``(line number, row)`` pairs; a row is a dict, or an error message."""
    stripped = text.lstrip()
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson", ".json") or (
        path.suffix.lower() != ".csv" and stripped.startswith("{")
    )
    if jsonl:
        # Only "\n" ends a JSON line: str.splitlines() would also split at U+2028, U+0085
        # and others, which json.dumps(ensure_ascii=False) leaves raw inside strings.
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except ValueError as exc:
                yield number, f"not valid JSON ({exc})"
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = [name.strip().lower() for name in reader.fieldnames or ()]
    if "task_id" not in fields or "image_index" not in fields:
        raise UsageError(
            f"{path}: the CSV header must name task_id and image_index (found: {fields or 'none'})"
        )
    reader.fieldnames = fields
    rows = iter(reader)
    failed_at = None
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            # The reader goes on with the next row (DictReader's own line_num is stale here);
            # an error that does not move it on ends the file rather than loop.
            if reader.reader.line_num == failed_at:
                return
            failed_at = reader.reader.line_num
            yield failed_at, f"unreadable CSV ({exc})"
            continue
        yield reader.line_num, row


def _request(row: object) -> midvary.VaryRequest:
    if not isinstance(row, dict):
        raise TypeError(f"expected an object with task_id and image_index, got {row!r:.60}")
    task_id = row.get("task_id")
    if task_id is None or task_id == "":
        raise ValueError("task_id is missing")
    index = row.get("image_index")
    if isinstance(index, str) and index.strip().lstrip("-").isdigit():
        index = int(index)
    if index is None or index == "":
        raise ValueError("image_index is missing")
    water_mark = row.get("water_mark") or None
    job_id = row.get("id")
    job_id = str(job_id).strip() if job_id not in (None, "") else None
    return midvary.VaryRequest(
        task_id=task_id.strip() if isinstance(task_id, str) else task_id,
        image_index=index,
        water_mark=water_mark,
        id=job_id,
    )


def read_jobs(path: Path) -> JobsFile:
    """Read and check the JOBS file.

    Raises:
        UsageError: The file cannot be read, or a CSV file has no usable header.

    """
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    jobs: list[BulkJob] = []
    bad: list[str] = []
    ids: dict[str, int] = {}
    occurrences: dict[str, int] = {}
    for line, row in _rows(path, text):
        if isinstance(row, str):
            bad.append(f"{path}:{line}: {row}")
            continue
        try:
            request = _request(row)
        except (TypeError, ValueError) as exc:
            bad.append(f"{path}:{line}: {exc}")
            continue
        content = hashlib.sha256(
            json.dumps([request.task_id, request.image_index, request.water_mark]).encode()
        ).hexdigest()[:16]
        if request.id is not None:
            if request.id in ids:
                bad.append(
                    f"{path}:{line}: id {request.id!r} was already used on line {ids[request.id]}"
                )
                continue
            ids[request.id] = line
            key = request.id
        else:
            # Identical rows are distinct jobs: number their occurrences.
            occurrences[content] = occurrences.get(content, 0) + 1
            key = f"{content}#{occurrences[content]}"
        jobs.append(BulkJob(key=key, line=line, content=content, request=request))
    return JobsFile(jobs=tuple(jobs), bad_rows=tuple(bad), sha256=hashlib.sha256(raw).hexdigest())
