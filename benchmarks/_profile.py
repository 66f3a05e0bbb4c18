"""Where CPU time and memory go: cProfile grouped by library, and tracemalloc top lines."""

from __future__ import annotations

import collections
import cProfile
import pstats
import tracemalloc
from pathlib import Path
from typing import Any

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

Func = tuple[str, int, str]

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


def by_library(profiler: cProfile.Profile) -> dict[str, float]:
    """Own CPU seconds per library; a C function's time goes to the library that called it."""
    stats: Any = pstats.Stats(profiler)
    totals: collections.defaultdict[str, float] = collections.defaultdict(float)
    entries: dict[Func, tuple[int, int, float, float, dict[Func, tuple[Any, ...]]]] = stats.stats
    for (filename, _line, _name), (_cc, _nc, own, _cum, callers) in entries.items():
        if filename != "~":
            totals[library(filename)] += own
            continue
        attributed = 0.0
        for caller, figures in callers.items():
            share = float(figures[2])
            attributed += share
            caller_file = caller[0]
            totals[library(caller_file) if caller_file != "~" else "C (no Python caller)"] += share
        totals["C (no Python caller)"] += max(0.0, own - attributed)
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def top_functions(
    profiler: cProfile.Profile, *, libraries: set[str] | None = None, limit: int = 15
) -> list[tuple[str, int, float, float]]:
    """``(function, calls, own seconds, cumulative seconds)`` by own time, heaviest first."""
    stats: Any = pstats.Stats(profiler)
    rows = []
    entries: dict[Func, tuple[int, int, float, float, Any]] = stats.stats
    for (filename, line, name), (_cc, calls, own, cum, _callers) in entries.items():
        lib = library(filename) if filename != "~" else "C"
        if libraries is not None and lib not in libraries:
            continue
        where = name if filename == "~" else f"{short_path(filename)}:{line}({name})"
        rows.append((where, calls, own, cum))
    rows.sort(key=lambda row: row[2], reverse=True)
    return rows[:limit]


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
