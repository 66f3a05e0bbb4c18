"""Helpers for the gallery tests: tiny PNG files, a PNG decoder, and a results folder."""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from attrs import define, field

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Eight distinct, saturated colours: one per downloaded image of the sample run.
COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (128, 128, 0),
)


def solid_png(colour: tuple[int, int, int], size: int = 32) -> bytes:
    """A ``size`` x ``size`` PNG of one RGB colour (8-bit, no colour profile)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" + bytes(colour) * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * size))
        + chunk(b"IEND", b"")
    )


def decode_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data.startswith(PNG_SIGNATURE), "not a PNG"
    position, idat, header = 8, b"", b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8, depth
    assert colour_type in (2, 6), colour_type
    assert interlace == 0
    channels = 3 if colour_type == 2 else 4
    stride = width * channels
    raw = zlib.decompress(idat)
    previous = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[x] = (line[x] + best) & 0xFF
        pixels.extend((line[i], line[i + 1], line[i + 2]) for i in range(0, stride, channels))
        previous = line
    return width, height, pixels


def colour_counts(png: bytes) -> Counter[tuple[int, int, int]]:
    """How many pixels of each exact RGB colour a PNG holds."""
    _, _, pixels = decode_png(png)
    return Counter(pixels)


def result(
    job_id: str,
    parent: str | None,
    index: int | None,
    status: str,
    **fields: Any,
) -> dict[str, Any]:
    """One results line, with bulk's fields (overridable)."""
    line: dict[str, Any] = {
        "id": job_id,
        "line": 1,
        "parent_task_id": parent,
        "image_index": index,
        "water_mark": None,
        "status": status,
        "task_id": None,
        "image_urls": [],
        "files": [],
        "error": None,
    }
    line.update(fields)
    return line


def write_lines(path: Path, lines: Sequence[dict[str, Any] | str]) -> Path:
    """Write results lines (objects as JSON, strings as they are) to ``path``."""
    path.write_text(
        "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines),
        encoding="utf-8",
    )
    return path


def done_job(
    run: Path, job_id: str, parent: str, index: int, colours: tuple[tuple[int, int, int], ...]
) -> dict[str, Any]:
    """A succeeded job whose images are solid ``colours``, downloaded into ``run/images``."""
    task = f"vary-{job_id}"
    (run / "images").mkdir(parents=True, exist_ok=True)
    files = []
    for n, colour in enumerate(colours):
        name = f"images/{task}_{n}.png"
        (run / name).write_bytes(solid_png(colour))
        files.append(name)
    urls = [f"https://cdn.example/{task}_{n}.png" for n in range(len(colours))]
    return result(job_id, parent, index, "done", task_id=task, image_urls=urls, files=files)


@define(eq=False)
class Element:
    """One parsed element: its tag, attributes, the classes of its ancestors, its text."""

    tag: str
    attrs: dict[str, str | None]
    ancestors: list[Element]
    text: list[str] = field(factory=list)

    @property
    def classes(self) -> set[str]:
        """The element's classes."""
        return set((self.attrs.get("class") or "").split())


class Tree(HTMLParser):
    """Every element of a page in document order, with its ancestors and text."""

    VOID = frozenset({"meta", "img", "br"})

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.stack: list[Element] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Open an element (void elements close at once)."""
        element = Element(tag, dict(attrs), list(self.stack))
        self.elements.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        """Close the innermost element, which must be a ``tag``: the page is well nested."""
        assert self.stack, f"</{tag}> closes nothing"
        assert self.stack[-1].tag == tag, f"</{tag}> does not close <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        """Text belongs to every open element."""
        for element in self.stack:
            element.text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[Element]:
        """The elements with ``tag`` (and class ``cls``)."""
        return [e for e in self.elements if e.tag == tag and (cls is None or cls in e.classes)]

    def inside(self, container: Element, tag: str) -> list[Element]:
        """The ``tag`` elements inside ``container``."""
        return [
            e for e in self.elements if e.tag == tag and any(a is container for a in e.ancestors)
        ]


def text(element: Element) -> str:
    """An element's text pieces joined by spaces, whitespace collapsed."""
    return " ".join(" ".join(element.text).split())
