"""The gallery in a real headless browser: images load from relative paths, nothing runs.

Needs Debian's ``chromium`` (or Chrome). Without one the tests skip, unless
``MIDVARY_REQUIRE_BROWSER=1`` (set by ``.ci/run``, which installs chromium): then they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from midvary._gallery import write_gallery

from .gallery_support import (
    COLOURS,
    Tree,
    colour_counts,
    decode_png,
    done_job,
    result,
    text,
    write_lines,
)

MAGENTA = (255, 0, 255)
# Escaped, this is text; injected raw, it would cover the whole page in magenta.
HOSTILE_MARK = (
    '"><div id="pwned" style="position:fixed;inset:0;z-index:99;background:#ff00ff"></div>'
)
# Escaped, and blocked by the page's CSP anyway: would retitle the page and paint it magenta.
HOSTILE_ERROR = (
    "<script>document.title='pwned';document.body.style.background='#ff00ff'</script>"
    "<img src=x onerror=\"document.title='pwned'\">"
)
TITLE = "gallery under test"


def browser() -> str:
    """The path of a chromium/chrome binary; skip (or fail when one is required) if none."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path is not None:
            return path
    message = "no chromium/chrome binary on PATH (apt-get install chromium)"
    if os.environ.get("MIDVARY_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MIDVARY_REQUIRE_BROWSER=1 but {message}")
    pytest.skip(f"browser test skipped: {message}")


def chromium(page: Path, profile: Path, *arguments: str) -> subprocess.CompletedProcess[bytes]:
    """Run headless chromium on ``page`` with ``arguments``; no network, a fresh profile."""
    command = [
        browser(),
        "--headless",
        "--no-sandbox",  # the CI runs as root, where chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *arguments,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, timeout=60, check=True)  # noqa: S603


def screenshot(page: Path, tmp: Path, size: tuple[int, int] = (1200, 900)) -> bytes:
    """A screenshot of ``page`` in a window of ``size`` (width, height) as PNG bytes."""
    shot = tmp / f"{page.stem}-{size[0]}.png"
    chromium(
        page,
        tmp / f"profile-{page.stem}-{size[0]}",
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={shot}",
    )
    return shot.read_bytes()


def boxes(png: bytes) -> dict[tuple[int, int, int], tuple[int, int, int, int]]:
    """Each test colour's bounding box in ``png``: (left, top, right, bottom), in pixels."""
    width, _height, pixels = decode_png(png)
    near = {  # every pixel value within 3 of a test colour, in each channel
        (r + dr, g + dg, b + db): (r, g, b)
        for r, g, b in COLOURS
        for dr in range(-3, 4)
        for dg in range(-3, 4)
        for db in range(-3, 4)
    }
    found: dict[tuple[int, int, int], list[int]] = {}
    for position, pixel in enumerate(pixels):
        colour = near.get(pixel)
        if colour is not None:
            x, y = position % width, position // width
            box = found.setdefault(colour, [x, y, x, y])
            box[0], box[1] = min(box[0], x), min(box[1], y)
            box[2], box[3] = max(box[2], x), max(box[3], y)
    return {colour: (box[0], box[1], box[2], box[3]) for colour, box in found.items()}


def close(counts: Counter[tuple[int, int, int]], colour: tuple[int, int, int]) -> int:
    """Pixels within 3 of ``colour`` in each channel."""
    return sum(
        count
        for pixel, count in counts.items()
        if all(abs(a - b) <= 3 for a, b in zip(pixel, colour, strict=True))
    )


@pytest.fixture
def gallery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run with 8 solid-colour images and hostile values; its page in a subfolder."""
    monkeypatch.chdir(tmp_path)
    first = done_job(tmp_path, "job-1", "parent-A", 0, COLOURS[:4])
    first["water_mark"] = HOSTILE_MARK
    lines = [
        first,
        done_job(tmp_path, "job-2", "parent-A", 1, COLOURS[4:]),
        result(
            "job-3",
            "parent-B",
            2,
            "failed",
            task_id="vary-job-3",
            error={"type": "TaskFailedError", "message": HOSTILE_ERROR},
        ),
    ]
    write_lines(tmp_path / "results.jsonl", lines)
    return write_gallery(tmp_path / "results.jsonl", tmp_path / "site" / "index.html", title=TITLE)


def test_the_page_shows_every_image_and_runs_nothing(gallery: Path, tmp_path: Path) -> None:
    """All 8 colours are painted (files load by relative path); no magenta, title unchanged."""
    shot = screenshot(gallery, tmp_path)
    width, height, _ = decode_png(shot)
    assert (width, height) == (1200, 900)
    counts = colour_counts(shot)
    painted = {colour: close(counts, colour) for colour in COLOURS}
    assert all(pixels >= 2000 for pixels in painted.values()), painted
    assert close(counts, MAGENTA) == 0
    dom = chromium(
        gallery, tmp_path / "profile-dom", "--window-size=1200,900", "--dump-dom"
    ).stdout.decode()
    tree = Tree(dom)
    assert [text(title) for title in tree.find("title")] == [TITLE]
    assert tree.find("script") == []
    assert [e for e in tree.elements if e.attrs.get("id") == "pwned" or "onerror" in e.attrs] == []
    assert len(tree.find("img")) == 8


def test_the_detector_sees_an_injection(gallery: Path, tmp_path: Path) -> None:
    """Control: the same page with the water mark pasted in unescaped turns magenta."""
    page = gallery.read_text(encoding="utf-8")
    escaped = page.index("&quot;&gt;&lt;div id=&quot;pwned&quot;")
    end = page.index("&lt;/div&gt;", escaped) + len("&lt;/div&gt;")
    raw = gallery.with_name("raw.html")
    raw.write_text(page[:escaped] + HOSTILE_MARK + page[end:], encoding="utf-8")
    counts = colour_counts(screenshot(raw, tmp_path))
    assert close(counts, MAGENTA) > 100_000  # a block the size of the parent section


def test_the_grid_uses_the_screen_at_two_widths(gallery: Path, tmp_path: Path) -> None:
    """1400 px: cards side by side; 700 px: one column; thumbnails of 140 px or more."""
    wide = boxes(screenshot(gallery, tmp_path, (1400, 900)))
    narrow = boxes(screenshot(gallery, tmp_path, (700, 1600)))
    for shot in (wide, narrow):
        assert set(shot) == set(COLOURS), shot
        assert all(right - left + 1 >= 140 for left, _t, right, _b in shot.values()), shot
    # job-1's first image (COLOURS[0]) and job-2's (COLOURS[4]).
    first, second = wide[COLOURS[0]], wide[COLOURS[4]]
    assert second[0] > first[2]  # job-2's card is to the right of job-1's
    assert abs(second[1] - first[1]) < 50  # on the same row
    first, second = narrow[COLOURS[0]], narrow[COLOURS[4]]
    assert abs(second[0] - first[0]) < 5  # one column: the same left edge
    assert second[1] > first[3]  # job-2 below job-1
    row = [narrow[colour][1] for colour in COLOURS[:4]]
    assert max(row) - min(row) < 5  # job-1's four thumbnails on one row
