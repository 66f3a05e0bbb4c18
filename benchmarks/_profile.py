"""Where memory goes: tracemalloc grown bytes by line and by library."""

from __future__ import annotations

import collections
import tracemalloc
from pathlib import Path

# Checked in order: the first fragment found in a file's path names its library.
_LIBRARIES = (
    ("/midvary/", "midvary"),
    ("/tenacity/", "tenacity"),
    ("/cattrs/", "cattrs"),
    ("/cattr/", "cattrs"),
    ("/attr/", "attrs"),
    ("/attrs/", "attrs"),
    ("/aiohttp/", "aiohttp"),
    ("/yarl/", "yarl+multidict"),
    ("/multidict/", "yarl+multidict"),
    ("/propcache/", "yarl+multidict"),
    ("/aiohappyeyeballs/", "aiohttp"),
    ("/benchmarks/", "benchmark driver"),
    ("/asyncio/", "asyncio"),
    ("/json/", "json"),
    ("/logging/", "logging"),
    ("/typing.py", "typing"),
    ("/enum.py", "enum"),
    ("/datetime.py", "datetime"),
)

# This checkout's root, cut from the paths shown: "midvary/_handle.py", whatever the worktree.
_ROOT = f"{Path(__file__).resolve().parents[1]}/"


def short_path(filename: str) -> str:
    """A source path as shown in tables: from its package (or the standard library) down."""
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in filename:
            filename = filename.rsplit(marker, 1)[-1]
            return filename.split("/", 1)[-1] if marker == "/lib/python3" else filename
    return filename.removeprefix(_ROOT)


def library(filename: str) -> str:
    """The library a source file belongs to (a standard module by its file name)."""
    for fragment, name in _LIBRARIES:
        if fragment in filename:
            return name
    if "/site-packages/" not in filename and "/lib/python3" in filename:
        return f"stdlib {filename.rsplit('/', 1)[-1]}"
    return "other"


def tracemalloc_top(
    snapshot: tracemalloc.Snapshot, baseline: tracemalloc.Snapshot, *, limit: int = 15
) -> list[tuple[str, int, int]]:
    """``(file:line, bytes, blocks)`` grown between two snapshots, biggest first."""
    rows = []
    for diff in snapshot.compare_to(baseline, "lineno")[:limit]:
        frame = diff.traceback[0]
        rows.append(
            (f"{short_path(frame.filename)}:{frame.lineno}", diff.size_diff, diff.count_diff)
        )
    return rows


def tracemalloc_by_library(
    snapshot: tracemalloc.Snapshot, baseline: tracemalloc.Snapshot
) -> dict[str, int]:
    """Bytes grown between two snapshots, per library of the allocating line."""
    totals: collections.defaultdict[str, int] = collections.defaultdict(int)
    for diff in snapshot.compare_to(baseline, "filename"):
        totals[library(diff.traceback[0].filename)] += diff.size_diff
    return dict(sorted(totals.items(), key=lambda item: -item[1]))
