"""Small valid PNG images for the fake result server, built with zlib and struct (no Pillow)."""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _colour(triple: bytes) -> bytes:
    # Bright enough to see, never black: each channel in 48..239.
    return bytes(48 + value % 192 for value in triple)


@functools.lru_cache(maxsize=1024)
def png_bytes(task_id: str, index: int, size: int = 64) -> bytes:
    """A ``size`` x ``size`` 8-bit RGB PNG of its own for image ``index`` of ``task_id``.

    A diagonal blend of two colours with a disc on it, all drawn from a hash of the task
    id and the index: every task's images differ, and so do the four of one task (a
    gallery shows variations as different pictures). Made on the fly, about a kilobyte.
    """
    digest = hashlib.sha256(f"{task_id}/{index}".encode()).digest()
    first, second, disc = _colour(digest[0:3]), _colour(digest[3:6]), _colour(digest[6:9])
    centre_x = size // 4 + digest[9] % (size // 2)
    centre_y = size // 4 + digest[10] % (size // 2)
    radius = size // 8 + digest[11] % (size // 6)
    rows = bytearray()
    for y in range(size):
        rows.append(0)  # each scanline starts with filter type 0 (None)
        for x in range(size):
            if (x - centre_x) ** 2 + (y - centre_y) ** 2 <= radius**2:
                rows += disc
            else:
                share = (x + y) / (2 * size - 2)
                rows += bytes(
                    round(a + (b - a) * share) for a, b in zip(first, second, strict=True)
                )
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(bytes(rows), 9)),
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
