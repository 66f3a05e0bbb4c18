"""The bulk command's JOBS file: read a CSV or JSONL file into checked jobs.

Bad rows (a byte that is not UTF-8 included) are reported with their line number and
skipped; a column or JSON key other than :data:`COLUMNS` refuses the whole file (a typo such
as ``watermark`` would otherwise be dropped from every job); a row that repeats an earlier
one is run and warned about with both line numbers. Each valid row becomes a
:class:`BulkJob` with a stable key (its own ``id``, else a hash of its content and its
occurrence number among identical rows): the key of its claims in the store.

What each ``action`` takes is the bulk command's help (``bulk._HELP``). A generate row's
``then`` adds its children: one :class:`BulkJob` each, right after it, keyed
``<parent key>/<action><index>``, whose request is made once the parent's task id is known.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import attrs

import midvary

from ._kit import UsageError
from .chain import Step, child_request, parse_then

Request = (
    midvary.VaryRequest | midvary.GenerateRequest | midvary.UpscaleRequest | midvary.ExtendRequest
)
ACTIONS: Final = ("vary", "generate", "upscale", "extend")
#: The generate task types that make videos (whose children are extends).
VIDEO_TASK_TYPES: Final = ("mj_video", "mj_video_hd")
#: The optional generate columns, passed to GenerateRequest as they are.
GENERATE_COLUMNS: Final = ("task_type", "speed", "aspect_ratio", "version", "water_mark")

#: The columns (CSV) or keys (JSONL) a JOBS row may have: a vary or upscale row needs
#: task_id and image_index, a generate row a prompt.
COLUMNS: Final = (
    "task_id",
    "image_index",
    "water_mark",
    "id",
    "action",
    "then",
    "prompt",
    "task_type",
    "speed",
    "aspect_ratio",
    "version",
    "file_urls",
)
_ALLOWED: Final = f"the allowed names are {', '.join(COLUMNS)}"


@attrs.frozen(kw_only=True)
class BulkJob:
    """One job: a valid row of the JOBS file, or a child its ``then`` column asks for.

    Attributes:
        key: The job's stable identity (a child's: its parent's key and its step).
        line: The JOBS file line of the row (a child: its parent's).
        content: A hash of what the job does (the fingerprint of its claim in the store).
        request: What to submit; ``None`` for a child, made from its parent's task id.
        then: A generate row's children, as steps.
        parent: A child's parent key; ``None`` for a row.
        step: A child's step; ``None`` for a row.

    """

    key: str
    line: int
    content: str
    request: Request | None
    then: tuple[Step, ...] = ()
    parent: str | None = None
    step: Step | None = None

    def request_for(
        self, parent_task_id: str, *, key: str | None = None
    ) -> midvary.VaryRequest | midvary.UpscaleRequest | midvary.ExtendRequest:
        """A child's request, once its parent task ``parent_task_id`` succeeded.

        ``key`` is its submission key (``None``: none).
        """
        assert self.step is not None  # noqa: S101 - only children have a step
        return child_request(parent_task_id, self.step, label=self.key, key=key)

    def children(self) -> tuple[BulkJob, ...]:
        """The jobs of this row's ``then`` column (none for other rows)."""
        return tuple(
            BulkJob(
                key=f"{self.key}/{step.action}{step.image_index}",
                line=self.line,
                content=_hash([self.content, step.action, step.image_index]),
                request=None,
                parent=self.key,
                step=step,
            )
            for step in self.then
        )


@attrs.frozen(kw_only=True)
class JobsFile:
    """The JOBS file read: its valid jobs, its bad rows, and its hash."""

    jobs: tuple[BulkJob, ...]
    bad_rows: tuple[str, ...]
    sha256: str
    warnings: tuple[str, ...] = ()


def _not_utf8(text: str) -> str | None:
    """Why ``text`` (decoded with ``surrogateescape``) is not UTF-8, or ``None`` if it is."""
    for char in text:
        if "\udc80" <= char <= "\udcff":
            return (
                f"byte 0x{ord(char) - 0xDC00:02x} is not UTF-8 (save the file as UTF-8; "
                "the other rows run)"
            )
    return None


def _unknown(names: Iterable[str]) -> list[str]:
    return [name for name in names if name not in COLUMNS]


def _is_jsonl(path: Path, text: str) -> bool:
    """Whether the JOBS file is JSONL (by its suffix, else by its first character)."""
    suffix = path.suffix.lower()
    return suffix in (".jsonl", ".ndjson", ".json") or (
        suffix != ".csv" and text.lstrip().startswith("{")
    )


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """The rows of a JSONL file; raise :class:`UsageError` at the first unknown key."""
    # Only "\n" ends a JSON line: str.splitlines() would also split at U+2028, U+0085
    # and others, which json.dumps(ensure_ascii=False) leaves raw inside strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        problem = _not_utf8(line)
        if problem is not None:
            yield number, problem
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            yield number, f"not valid JSON ({exc})"
            continue
        unknown = _unknown(row) if isinstance(row, dict) else []
        if unknown:
            raise UsageError(
                f"{path}:{number}: unknown key {unknown[0]!r}; {_ALLOWED} (no job was run)"
            )
        yield number, row


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """The rows of a CSV file; raise :class:`UsageError` for a bad header."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = [name.strip().lower() for name in reader.fieldnames or ()]
    if not ({"task_id", "image_index"} <= set(fields) or "prompt" in fields):
        raise UsageError(
            f"{path}: the CSV header must name task_id and image_index, or prompt "
            f"(found: {fields or 'none'})"
        )
    if _not_utf8(",".join(fields)) is not None:
        raise UsageError(f"{path}: the header is not UTF-8; save the file as UTF-8")
    unknown = _unknown(fields)
    if unknown:
        raise UsageError(
            f"{path}: unknown column {unknown[0]!r} in the header; {_ALLOWED} (no job was run)"
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
        values = [value for value in row.values() if isinstance(value, str)]
        problem = _not_utf8("".join(values))
        yield reader.line_num, row if problem is None else problem


def _text(row: dict[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value.strip() if isinstance(value, str) else value


def _image_index(value: object, *, jsonl: bool) -> Any:
    """The row's ``image_index``, as :class:`midvary.VaryRequest` takes it.

    Raises:
        ValueError: It is missing, or a JSONL string (``"2"``) or float (``2.0``).
    """
    if value is None or value == "":
        raise ValueError("image_index is missing")
    if jsonl:
        if isinstance(value, str | float):
            raise ValueError(
                f"image_index must be a JSON integer 0..3 such as 2, not {value!r} "
                f"(a {'string' if isinstance(value, str) else 'float'})"
            )
        return value
    text = str(value).strip()
    if not text.lstrip("-").isdigit():
        raise ValueError(f"image_index must be a whole number 0..3 such as 2, not {text!r}")
    return int(text)


def _request(row: object, *, jsonl: bool) -> tuple[Request, tuple[Step, ...]]:
    if not isinstance(row, dict):
        raise TypeError(f"expected an object with task_id and image_index, got {row!r:.60}")
    action = (_text(row, "action") or "vary").lower()
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    then = _text(row, "then")
    job_id = row.get("id")
    job_id = str(job_id).strip() if job_id not in (None, "") else None
    if action != "generate":
        if then is not None:
            raise ValueError(f"then is only for generate rows, not {action}")
        return _child_row(row, action, job_id, jsonl=jsonl), ()
    columns: dict[str, Any] = {name: _text(row, name) for name in GENERATE_COLUMNS}
    request = midvary.GenerateRequest(
        prompt=row.get("prompt") or "",
        **{name: value for name, value in columns.items() if value is not None},
        file_urls=_file_urls(row.get("file_urls")),
        id=job_id,
    )
    steps = parse_then(then) if isinstance(then, str) else ()
    video = request.task_type in VIDEO_TASK_TYPES
    for step in steps:
        if (step.action == "extend") != video:  # extend is a video's child, the others a grid's
            raise ValueError(
                f"then {step.action} is for "
                + ("an image grid: this row makes videos (then extend:INDEXES)" if video else
                   "a video generate row (task_type mj_video or mj_video_hd)")
            )  # fmt: skip
    return request, steps


def _file_urls(value: object) -> Any:
    """A generate row's ``file_urls``: a JSON list, or URLs separated by spaces (CSV)."""
    if isinstance(value, str):
        return value.split() or None
    return value


def _child_row(
    row: dict[str, Any], action: str, job_id: str | None, *, jsonl: bool
) -> midvary.VaryRequest | midvary.UpscaleRequest | midvary.ExtendRequest:
    # An extend takes a prompt (manual) and its own task_type; vary and upscale take neither.
    allowed = ("water_mark", "prompt", "task_type") if action == "extend" else ("water_mark",)
    for name in ("prompt", "file_urls", *GENERATE_COLUMNS):
        if name not in allowed and _text(row, name) is not None:
            # Sent nowhere: a vary or upscale makes no use of it, so it is a mistake.
            raise ValueError(f"{name} is only for generate rows, not {action}")
    task_id = row.get("task_id")
    if task_id is None or task_id == "":
        raise ValueError("task_id is missing")
    if isinstance(task_id, str):
        task_id = task_id.strip()
    index = _image_index(row.get("image_index"), jsonl=jsonl)
    water_mark = row.get("water_mark") or None
    if action == "extend":
        prompt, task_type = _text(row, "prompt"), _text(row, "task_type")
        return midvary.ExtendRequest(
            task_id, index, prompt=prompt, task_type=task_type, water_mark=water_mark, id=job_id
        )
    cls = midvary.UpscaleRequest if action == "upscale" else midvary.VaryRequest
    return cls(task_id=task_id, image_index=index, water_mark=water_mark, id=job_id)


def _no_jobs(path: Path) -> str:
    return (
        f"no jobs in {path}: it has no rows (a CSV needs a header line, then one row per job; "
        "a JSONL file one JSON object per line)"
    )


def read_jobs(path: Path) -> JobsFile:
    """Read and check the JOBS file.

    Raises:
        UsageError: The file cannot be read, holds no rows, or a CSV file has no usable
            header.

    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    # A byte that is not UTF-8 spoils its own row only: it is kept as a lone surrogate here
    # and that row is reported by its line number.
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    if not text.strip():
        raise UsageError(_no_jobs(path))
    jobs: list[BulkJob] = []
    bad: list[str] = []
    warnings: list[str] = []
    ids: dict[str, int] = {}
    occurrences: dict[str, int] = {}
    first_line: dict[str, int] = {}
    jsonl = _is_jsonl(path, text)
    # (line number, row) pairs; a row is a dict, or an error message.
    for line, row in _jsonl_rows(path, text) if jsonl else _csv_rows(path, text):
        if isinstance(row, str):
            bad.append(f"{path}:{line}: {row}")
            continue
        try:
            request, then = _request(row, jsonl=jsonl)
        except (TypeError, ValueError) as exc:
            bad.append(f"{path}:{line}: {exc}")
            continue
        content = _content(request)
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
        if content in first_line:
            warnings.append(
                f"{path}:{line} repeats line {first_line[content]} ({request.describe()}): both "
                "run and each is billed (variations are random, so this may be what you want)"
            )
        else:
            first_line[content] = line
        job = BulkJob(key=key, line=line, content=content, request=request, then=then)
        jobs.extend((job, *job.children()))
    if not jobs and not bad:
        raise UsageError(_no_jobs(path))
    return JobsFile(
        jobs=tuple(jobs),
        bad_rows=tuple(bad),
        sha256=hashlib.sha256(raw).hexdigest(),
        warnings=tuple(warnings),
    )


def _hash(data: object) -> str:
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def _content(request: Request) -> str:
    """What a row does, hashed (a vary's hash is the one journals have always held)."""
    if isinstance(request, midvary.VaryRequest):
        return _hash([request.task_id, request.image_index, request.water_mark])
    if isinstance(request, midvary.UpscaleRequest):
        return _hash(["upscale", request.task_id, request.image_index, request.water_mark])
    if isinstance(request, midvary.ExtendRequest):
        return _hash(
            ["extend", request.task_id, request.index, request.task_type, request.prompt,
             request.water_mark]
        )  # fmt: skip
    fields = {name: getattr(request, name) for name in ("prompt", *GENERATE_COLUMNS)}
    if request.file_urls:  # only then: the hash of a row without it stays what it was
        fields["file_urls"] = list(request.file_urls)
    return _hash(["generate", fields])
