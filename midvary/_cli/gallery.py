"""``midvary gallery RESULTS.jsonl``: one self-contained HTML page of a bulk run's images.

``bulk --gallery`` and ``demo`` call :func:`make_gallery` too. :func:`render_gallery` turns
the results (read by :func:`.results.read_results`) into one HTML page; :func:`write_gallery`
reads and writes it. The page has inline CSS, no script, and a Content-Security-Policy that
forbids scripts and any network access: images are shown from the downloaded files by paths
relative to the page's folder (``loading="lazy"``, so 5,000 jobs stay usable); a video file
(a video generate's or an extend's ``.mp4``) is shown in a ``<video>`` element with the
browser's own controls (``preload="metadata"``: still no script). A job whose images were
not downloaded shows a link to each image URL instead of loading it.

Jobs are grouped by parent, in the order parents first appear. A generate job (``action``
``generate``: a prompt, no parent task) heads its own group: its prompt, its grid, then its
children (the vary, upscale and extend lines whose ``parent`` is its id, or that name its
task), varies before upscales before extends, by image (or video) index. Other jobs are
grouped by the parent task they name (``parent_task_id``), by image index. Every text taken
from the data (ids, water marks, error messages, prompts, file names) is HTML-escaped. Lines
that cannot be read are listed at the top with their line number and the reason
(:attr:`.results.GalleryResults.bad_lines`).
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
from html import escape
from importlib import resources
from pathlib import Path
from typing import Final, TypeAlias
from urllib.parse import quote, urlsplit

import attrs

import midvary

from ._kit import EXIT_OK, UsageError, say
from .results import BadLine, GalleryJob, GalleryResults, read_results


def options(parser: argparse.ArgumentParser) -> None:
    """``midvary gallery RESULTS.jsonl [--out FILE.html]``."""
    parser.set_defaults(handler=_gallery_command)
    parser.add_argument(
        "results", metavar="RESULTS.jsonl", type=Path, help="a results file bulk wrote"
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE.html",
        help="the page to write (default: beside RESULTS, with the suffix .html)",
    )


def make_gallery(results: Path, out: Path | None = None, *, announce: bool = True) -> Path:
    """Write the gallery page of ``results``; warn about unreadable lines; say where it is.

    Args:
        results: The results file.
        out: The page; ``None`` means beside ``results`` with the suffix ``.html``.
        announce: Whether to print ``gallery: <page> (<n> jobs)`` on stdout.

    Returns:
        The page's path.

    Raises:
        UsageError: The results file cannot be read or the page cannot be written.

    """
    try:
        read = read_results(results)
        if not read.jobs and read.bad_lines:
            raise UsageError(_not_results(results))
        page = write_gallery(results, out)
    except OSError as exc:
        raise UsageError(f"cannot make the gallery of {results}: {exc}") from None
    for bad in read.bad_lines:
        say(f"warning: {results}:{bad.number}: {bad.reason} (left out)", stream=sys.stderr)
    if announce:
        say(f"gallery: {page} ({len(read.jobs)} jobs)")
    return page


def _not_results(path: Path) -> str:
    """What to say of a file with lines, none of them a results line (a JOBS file, say)."""
    guess = path.with_name(path.name + ".results.jsonl")
    hint = (
        f"; the results of `midvary bulk {path}` are in {guess}"
        if guess.exists()
        else f"; `midvary bulk {path}` writes its results to {guess}"
    )
    return f"{path} is not a results file: none of its lines is a results line{hint}"


def _gallery_command(args: argparse.Namespace) -> int:
    make_gallery(args.results, args.out)
    return EXIT_OK


#: The page's policy: no script, no network; images and videos only from the page's files.
_CSP: Final = (
    "default-src 'none'; img-src 'self' file: data:; media-src 'self' file:; "
    "style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)
#: The file suffixes shown as a video rather than an image.
VIDEO_SUFFIXES: Final = (".mp4", ".webm", ".mov")
# Status names bulk writes, mapped to a badge style; any other status is shown neutral.
_BADGES: Final = {"done": "ok", "failed": "bad", "uncertain": "warn"}


def render_gallery(
    results: GalleryResults,
    *,
    base_dir: Path,
    title: str = "midvary gallery",
    files_bases: tuple[Path, ...] = (),
) -> str:
    """The gallery page of ``results``, as HTML text.

    Args:
        results: What :func:`read_results` or :func:`parse_results` returned.
        base_dir: The folder the page will be written to: image paths are relative to it.
        title: The page's title (escaped like every other text).
        files_bases: More folders a relative ``files`` entry is looked for in, after the
            working directory (where ``bulk`` ran).

    Returns:
        A complete HTML document.

    """
    page = _Page(base_dir=Path(base_dir).absolute(), files_bases=(Path.cwd(), *files_bases))
    return page.render(results, title)


def write_gallery(
    results_jsonl: Path, out: Path | None = None, *, title: str | None = None
) -> Path:
    """Read a results file and write its gallery page; return the page's path.

    Args:
        results_jsonl: The results file ``midvary bulk`` wrote.
        out: The page to write; ``None`` means beside the results file, with the suffix
            ``.html`` (``jobs.results.jsonl`` -> ``jobs.results.html``). Its folder is
            created if needed.
        title: The page's title; ``None`` means ``midvary gallery: <results file name>``.

    A relative ``files`` entry is looked for in the working directory (where ``bulk`` ran),
    then in the results file's folder.

    Raises:
        OSError: The results file cannot be read, or the page cannot be written.

    """
    source = Path(results_jsonl)
    target = Path(out) if out is not None else source.with_suffix(".html")
    text = render_gallery(
        read_results(source),
        base_dir=target.absolute().parent,
        title=title if title is not None else f"midvary gallery: {source.name}",
        files_bases=(source.absolute().parent,),
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.part")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
    return target


# -- the page -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Page:
    """Renders a page whose images are relative to ``base_dir``."""

    base_dir: Path
    files_bases: tuple[Path, ...]

    def render(self, results: GalleryResults, title: str) -> str:
        groups = _groups(results.jobs)
        counts = collections.Counter(job.status for job in results.jobs)
        grids = sum(1 for grid, _jobs in groups.values() if grid is not None)
        parents = [f"{grids} prompts"] if grids else []
        if grids < len(groups) or not groups:
            parents.append(f"{len(groups) - grids} parents")
        summary = " · ".join(
            [f"{len(results.jobs)} jobs", *parents]
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
        for number, (grid, jobs) in enumerate(groups.values(), start=1):
            jobs.sort(key=_child_order)
            count = f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}"
            if grid is None:
                kind = "parent"
                heading = f"parent <code>{escape(jobs[0].parent_task_id or '')}</code>"
            else:
                kind = "parent grid"
                heading = f"prompt <q>{escape(grid.prompt or '')}</q>"
                count = (
                    f"its grid and {len(jobs)} child{'ren' if len(jobs) != 1 else ''}"
                    if jobs
                    else "its grid, no children"
                )
                jobs.insert(0, grid)
            parts.append(
                f'<section class="{kind}" id="parent-{number}">\n<h2>{heading} '
                f'<span class="count">{count}</span></h2>\n<div class="jobs">\n'
            )
            parts.extend(self._job(job) for job in jobs)
            parts.append("</div>\n</section>\n")
        if not groups:
            parts.append('<p class="empty">No jobs in this results file.</p>\n')
        parts.append(
            f"</main>\n<footer>made by midvary {escape(midvary.__version__)}; no script, no "
            "network: images are the downloaded files.</footer>\n</body>\n</html>\n"
        )
        return "".join(parts)

    def _job(self, job: GalleryJob) -> str:
        badge = _BADGES.get(job.status, "other")
        facts = (  # a fact whose value is None is left out
            ("task", job.task_id or "none"),
            ("action", job.action),
            ("water mark", job.water_mark or None),
            ("job", job.id if job.jobs_line is None else f"{job.id} (line {job.jobs_line})"),
            ("created", job.created_at),
            ("completed", job.completed_at),
            ("took", None if job.duration is None else f"{job.duration:.1f} s"),
        )
        rows = "".join(
            f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts if v is not None
        )
        parts = [
            f'<article class="job {badge}">\n<header><span class="badge {badge}">'
            f'{escape(job.status)}</span> <span class="index">{_what(job)}</span>'
            f"</header>\n<dl>{rows}</dl>\n",
        ]
        if job.prompt is not None and job.action != "generate":  # a grid's is its heading
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
                if path.suffix.lower() in VIDEO_SUFFIXES:
                    # The browser's own controls: no script on the page, none needed.
                    shown = (
                        f'<video src="{src}" controls preload="metadata" width="256" '
                        f'height="256" aria-label="{escape(f"video {n} of task {what}")}">'
                        f'<a href="{src}">{caption}</a></video>'
                    )
                else:
                    shown = (
                        f'<a href="{src}"><img src="{src}" alt="{alt}" loading="lazy" '
                        f'decoding="async" width="256" height="256"></a>'
                    )
                tiles.append(f"<figure>{shown}<figcaption>{caption}</figcaption></figure>")
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


#: The order of a group's children by action (an old line has no action: a vary).
_ACTION_ORDER: Final = {"upscale": 1, "extend": 2}


def _child_order(job: GalleryJob) -> tuple[int, int, int]:
    """Within a group: varies before upscales before extends, by image (or video) index."""
    return (_ACTION_ORDER.get(job.action or "", 0), job.image_index or 0, job.number)


_Group: TypeAlias = tuple["GalleryJob | None", list[GalleryJob]]


def _groups(jobs: tuple[GalleryJob, ...]) -> dict[str, _Group]:
    """Jobs by parent, in order of first appearance, each ``(grid, children)``.

    A generate job heads its own group as ``grid``; a child joins it through its ``parent``
    (the generate job's id) or its ``task_id`` (the grid's task). Other jobs are grouped by
    the task they name, with no grid.
    """
    grids = {job.id: job for job in jobs if job.action == "generate"}
    by_task = {job.task_id: job.id for job in grids.values() if job.task_id is not None}
    groups: dict[str, tuple[GalleryJob | None, list[GalleryJob]]] = {}
    for job in jobs:
        if job.action == "generate":
            groups.setdefault(f"grid:{job.id}", (job, []))
            continue
        grid = job.parent if job.parent in grids else by_task.get(job.parent_task_id or "")
        if grid is not None:
            groups.setdefault(f"grid:{grid}", (grids[grid], []))[1].append(job)
        else:
            groups.setdefault(f"task:{job.parent_task_id}", (None, []))[1].append(job)
    return groups


def _what(job: GalleryJob) -> str:
    """What a job's card is about: ``grid``, ``index 2`` or ``upscale of image 2``."""
    if job.action == "generate":
        return "grid"
    if job.action == "upscale":
        return f"upscale of image {job.image_index}"
    if job.action == "extend":
        return f"extend of video {job.image_index}"
    return f"index {job.image_index}"


@functools.cache
def _style() -> str:
    """The page's CSS (``gallery.css``, shipped in the package), read once."""
    return resources.files(__package__).joinpath("gallery.css").read_text(encoding="utf-8")


def _bad_lines(lines: tuple[BadLine, ...]) -> str:
    items = "".join(f"<li>line {line.number}: {escape(line.reason)}</li>" for line in lines)
    count = len(lines)
    return (
        f'<section class="bad-lines"><h2>{count} line{"s" if count != 1 else ""} '
        f"of the results file could not be read</h2><ul>{items}</ul></section>\n"
    )
