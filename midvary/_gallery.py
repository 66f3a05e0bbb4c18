"""A results gallery: one self-contained static HTML page of a bulk run's images.

:func:`read_results` reads a bulk results file (one JSON object a line, as ``midvary bulk``
writes it); :func:`render_gallery` turns it into one HTML page; :func:`write_gallery` does
both and writes the page. The page has inline CSS, no script, and a Content-Security-Policy
that forbids scripts and any network access: images are shown from the downloaded files by
paths relative to the page's folder (``loading="lazy"``, so 5,000 jobs stay usable). A job
whose images were not downloaded shows a link to each image URL instead of loading it.

Jobs are grouped by parent task, in the order parents first appear; within a parent, by
image index. Every text taken from the data (ids, water marks, error messages, prompts,
file names) is HTML-escaped. A line that cannot be read (not JSON, a required field missing
or of the wrong type, not UTF-8) does not stop the page: it is listed at the top with its
line number and the reason (:attr:`GalleryResults.bad_lines`). When a job has several lines
(a re-submitted uncertain job), the last one wins, as for ``bulk`` itself.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping
from datetime import datetime
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

import attrs

from ._version import VERSION

#: The page's policy: no script, no network; images only from the page's own files.
_CSP: Final = (
    "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)
# Status names bulk writes, mapped to a badge style; any other status is shown neutral.
_BADGES: Final = {"done": "ok", "failed": "bad", "uncertain": "warn"}


@attrs.frozen(kw_only=True)
class GalleryJob:
    """One job of a results file, as the gallery shows it.

    Attributes:
        number: The line of the results file it came from (1-based).
        id: The job's id (``id``).
        parent_task_id: The parent task that was varied (``task_id``).
        image_index: The parent's image that was varied (``image_index``).
        status: ``done``, ``failed``, ``uncertain`` (``status``; other values are kept).
        task_id: The vary task's id (``vary_task_id``), or ``None`` if it never got one.
        water_mark: The requested water mark, or ``None``.
        image_urls: The result URLs (``image_urls``).
        files: The downloaded files (``files``), as written: relative to where bulk ran,
            or absolute.
        error_type: The error's class name (``error.type``), or ``None``.
        error_message: The error's message (``error.message``), or ``None``.
        error_code: The provider's error code (``record.error_code``), or ``None``.
        jobs_line: The line of the JOBS file (``line``), or ``None``.
        action: ``vary``, ``generate``, ``upscale``... (``action``), or ``None``.
        prompt: The prompt (``prompt``), or ``None``.
        created_at: When the task was created (``created_at``, else ``record.created_at``).
        completed_at: When it completed (``completed_at``, else ``record.completed_at``).
        duration: Seconds it took (``duration``, else completed minus created), or ``None``.

    """

    number: int
    id: str
    parent_task_id: str
    image_index: int
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


def render_gallery(
    results: GalleryResults,
    *,
    base_dir: Path,
    files_base: Path | None = None,
    title: str = "midvary gallery",
) -> str:
    """The gallery page of ``results``, as HTML text.

    Args:
        results: What :func:`read_results` or :func:`parse_results` returned.
        base_dir: The folder the page will be written to: image paths are relative to it.
        files_base: The folder relative ``files`` entries are relative to (where ``bulk``
            ran); ``None`` means the current working directory.
        title: The page's title (escaped like every other text).

    Returns:
        A complete HTML document.

    """
    page = _Page(
        base_dir=Path(base_dir).absolute(),
        files_bases=(Path(files_base).absolute() if files_base is not None else Path.cwd(),),
    )
    return page.render(results, title)


def write_gallery(
    results_jsonl: Path,
    out: Path | None = None,
    *,
    files_base: Path | None = None,
    title: str | None = None,
) -> Path:
    """Read a results file and write its gallery page; return the page's path.

    Args:
        results_jsonl: The results file ``midvary bulk`` wrote.
        out: The page to write; ``None`` means beside the results file, with the suffix
            ``.html`` (``jobs.results.jsonl`` -> ``jobs.results.html``). Its folder is
            created if needed.
        files_base: The folder relative ``files`` entries are relative to; ``None`` means
            the current working directory (where ``bulk`` ran) and, for a file not found
            there, the results file's folder.
        title: The page's title; ``None`` means ``midvary gallery: <results file name>``.

    Raises:
        OSError: The results file cannot be read, or the page cannot be written.

    """
    source = Path(results_jsonl)
    target = Path(out) if out is not None else source.with_suffix(".html")
    results = read_results(source)
    bases = (
        (Path(files_base).absolute(),)
        if files_base is not None
        else (Path.cwd(), source.absolute().parent)
    )
    page = _Page(base_dir=target.absolute().parent, files_bases=bases)
    text = page.render(results, title if title is not None else f"midvary gallery: {source.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.part")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
    return target


# -- reading one line ------------------------------------------------------------------------


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
    return GalleryJob(
        number=number,
        id=_required(data, "id"),
        parent_task_id=_required(data, "task_id"),
        image_index=_field(data, "image_index", int, required=True),
        status=_required(data, "status"),
        task_id=_text(data, "vary_task_id"),
        water_mark=_field(data, "water_mark", str, required=False),
        image_urls=_strings(data, "image_urls"),
        files=_strings(data, "files"),
        error_type=_text(error, "error.type", key="type"),
        error_message=_field(error, "error.message", str, required=False, key="message"),
        error_code=_integer(record, "record.error_code", key="error_code"),
        jobs_line=_integer(data, "line"),
        action=_text(data, "action"),
        prompt=_field(data, "prompt", str, required=False),
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


def _integer(data: Mapping[str, Any], name: str, *, key: str | None = None) -> int | None:
    """An optional integer field."""
    value: int | None = _field(data, name, int, required=False, key=key)
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


# -- the page -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Page:
    """Renders a page whose images are relative to ``base_dir``."""

    base_dir: Path
    files_bases: tuple[Path, ...]

    def render(self, results: GalleryResults, title: str) -> str:
        groups: dict[str, list[GalleryJob]] = {}
        for job in results.jobs:
            groups.setdefault(job.parent_task_id, []).append(job)
        counts: dict[str, int] = {}
        for job in results.jobs:
            counts[job.status] = counts.get(job.status, 0) + 1
        summary = " · ".join(
            [f"{len(results.jobs)} jobs", f"{len(groups)} parents"]
            + [f"{status}: {count}" for status, count in sorted(counts.items())]
        )
        parts = [
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n',
            '<meta name="referrer" content="no-referrer">\n',
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
            f"<title>{escape(title)}</title>\n<style>\n{_style()}</style>\n</head>\n<body>\n",
            f'<header class="top"><h1>{escape(title)}</h1>\n',
            f'<p class="summary">{escape(summary)}</p></header>\n',
        ]
        if results.bad_lines:
            parts.append(_bad_lines(results.bad_lines))
        parts.append("<main>\n")
        for number, (parent, jobs) in enumerate(groups.items(), start=1):
            jobs.sort(key=lambda job: (job.image_index, job.number))
            parts.append(
                f'<section class="parent" id="parent-{number}">\n'
                f"<h2>parent <code>{escape(parent)}</code> "
                f'<span class="count">{len(jobs)} job{"s" if len(jobs) != 1 else ""}</span></h2>\n'
                '<div class="jobs">\n'
            )
            parts.extend(self._job(job) for job in jobs)
            parts.append("</div>\n</section>\n")
        if not groups:
            parts.append('<p class="empty">No jobs in this results file.</p>\n')
        parts.append(
            f"</main>\n<footer>made by midvary {escape(VERSION)}; no script, no network: "
            "images are the downloaded files.</footer>\n</body>\n</html>\n"
        )
        return "".join(parts)

    def _job(self, job: GalleryJob) -> str:
        badge = _BADGES.get(job.status, "other")
        facts = [("task", job.task_id or "none")]
        if job.action is not None:
            facts.append(("action", job.action))
        if job.water_mark:
            facts.append(("water mark", job.water_mark))
        facts.append(
            ("job", job.id if job.jobs_line is None else f"{job.id} (line {job.jobs_line})")
        )
        if job.created_at is not None:
            facts.append(("created", job.created_at))
        if job.completed_at is not None:
            facts.append(("completed", job.completed_at))
        if job.duration is not None:
            facts.append(("took", f"{job.duration:.1f} s"))
        rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts)
        parts = [
            f'<article class="job {badge}">\n<header><span class="badge {badge}">'
            f'{escape(job.status)}</span> <span class="index">index {job.image_index}</span>'
            f"</header>\n<dl>{rows}</dl>\n",
        ]
        if job.prompt is not None:
            parts.append(f'<p class="prompt">{escape(job.prompt)}</p>\n')
        if job.error_type is not None or job.error_message is not None:
            code = f" (code {job.error_code})" if job.error_code is not None else ""
            parts.append(
                f'<p class="reason"><strong>{escape(job.error_type or "error")}</strong>{code}: '
                f"{escape(job.error_message or 'no reason given')}</p>\n"
            )
        parts.append(self._images(job))
        parts.append("</article>\n")
        return "".join(parts)

    def _images(self, job: GalleryJob) -> str:
        tiles: list[str] = []
        what = job.task_id or job.id
        if job.files:
            for n, name in enumerate(job.files, start=1):
                alt = escape(f"variation {n} of task {what}")
                path = self._find(name)
                caption = escape(Path(name).name)
                if path is None:
                    tiles.append(
                        f'<figure class="missing"><div class="hole">file missing</div>'
                        f"<figcaption>{caption}</figcaption></figure>"
                    )
                    continue
                src = escape(self._relative(path))
                tiles.append(
                    f'<figure><a href="{src}"><img src="{src}" alt="{alt}" loading="lazy" '
                    f'decoding="async" width="256" height="256"></a>'
                    f"<figcaption>{caption}</figcaption></figure>"
                )
        else:
            for n, url in enumerate(job.image_urls, start=1):
                link = (
                    f'<a href="{escape(url)}" rel="noreferrer noopener">open image {n}</a>'
                    if urlsplit(url).scheme.lower() in ("http", "https")
                    else f"image {n}: {escape(url)}"
                )
                tiles.append(
                    f'<figure class="remote"><div class="hole">not downloaded<br>{link}</div>'
                    "</figure>"
                )
        if not tiles:
            return ""
        return f'<div class="images">{"".join(tiles)}</div>\n'

    def _find(self, name: str) -> Path | None:
        """The downloaded file ``name`` names, or ``None`` when it is not there."""
        path = Path(name)
        candidates = [path] if path.is_absolute() else [base / path for base in self.files_bases]
        return next((c for c in candidates if c.is_file()), None)

    def _relative(self, path: Path) -> str:
        """``path`` as a URL relative to the page (percent-encoded: no scheme can sneak in)."""
        try:
            relative = Path(os.path.relpath(path, self.base_dir)).as_posix()
        except ValueError:  # another drive on Windows: no relative path exists
            return path.absolute().as_uri()
        return quote(relative, safe="/")


@functools.cache
def _style() -> str:
    """The page's CSS (``_gallery.css``, shipped in the package), read once."""
    return resources.files(__package__).joinpath("_gallery.css").read_text(encoding="utf-8")


def _bad_lines(lines: tuple[BadLine, ...]) -> str:
    items = "".join(f"<li>line {line.number}: {escape(line.reason)}</li>" for line in lines)
    count = len(lines)
    return (
        f'<section class="bad-lines"><h2>{count} line{"s" if count != 1 else ""} '
        f"of the results file could not be read</h2><ul>{items}</ul></section>\n"
    )
