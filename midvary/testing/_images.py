"""Tiny valid PNG images for the fake result server, built with zlib and struct (no Pillow)."""

from __future__ import annotations

import functools
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# One colour per image index, so a test can tell the four results of a task apart.
_COLOURS = ((224, 82, 64), (64, 160, 96), (64, 112, 208), (232, 184, 48))


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@functools.cache
def png_bytes(index: int, size: int = 8) -> bytes:
    """A ``size`` x ``size`` solid-colour 8-bit RGB PNG; the colour depends on ``index``."""
    red, green, blue = _COLOURS[index % len(_COLOURS)]
    # Each scanline starts with filter type 0 (None).
    row = b"\x00" + bytes((red, green, blue)) * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(row * size)),
            _chunk(b"IEND", b""),
        ),
    )


#: How every fake ``.mp4`` starts: an ISO base media ``ftyp`` box of the ``isom`` brand.
MP4_FTYP = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 0x200) + b"isommp41"


@functools.cache
def mp4_bytes(index: int) -> bytes:
    """A tiny stand-in for a video result: an ``ftyp`` box and a ``free`` box naming ``index``.

    Not a playable video (the fake makes no frames), but shaped like an MP4 file, so
    a client can tell it from an image and save it as one.
    """
    payload = f"midvary fake video {index}".encode()
    return MP4_FTYP + struct.pack(">I", 8 + len(payload)) + b"free" + payload
