"""``midvary gallery RESULTS.jsonl``: one static HTML page of a bulk run's images.

The page is :mod:`midvary._gallery`'s (self-contained: inline CSS, no script, no network,
relative paths to the downloaded files). ``bulk --gallery`` and ``demo`` call
:func:`make_gallery` too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from midvary import _gallery

from ._kit import EXIT_OK, UsageError, say


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


def make_gallery(
    results: Path,
    out: Path | None = None,
    *,
    files_base: Path | None = None,
    announce: bool = True,
) -> Path:
    """Write the gallery page of ``results``; warn about unreadable lines; say where it is.

    Args:
        results: The results file.
        out: The page; ``None`` means beside ``results`` with the suffix ``.html``.
        files_base: The folder relative file paths in ``results`` are relative to; ``None``
            means the working directory (where ``bulk`` ran).
        announce: Whether to print ``gallery: <page> (<n> jobs)`` on stdout.

    Returns:
        The page's path.

    Raises:
        UsageError: The results file cannot be read or the page cannot be written.

    """
    try:
        read = _gallery.read_results(results)
        if not read.jobs and read.bad_lines:
            raise UsageError(_not_results(results))
        page = _gallery.write_gallery(results, out, files_base=files_base)
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
