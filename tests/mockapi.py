"""aioresponses, made to work with aiohttp 3.14, plus envelope helpers for unit tests.

aioresponses 0.7.9 builds ``ClientResponse`` without the ``stream_writer`` argument that
aiohttp 3.14 requires (pnuckowski/aioresponses#289); a response class that supplies a
no-op writer keeps the mock usable without pinning aiohttp back below a security release.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aioresponses import aioresponses
from yarl import URL

BASE = "https://api.test"
KEY = "sk-RECOGNISABLE-test-key-4242"
VARY_URL = f"{BASE}/api/v1/mj/generateVary"


def record_url(task_id: str) -> str:
    """The record-info URL for ``task_id``."""
    return f"{BASE}/api/v1/mj/record-info?taskId={task_id}"


class _NoWriter:
    output_size = 0


class _CompatResponse(aiohttp.ClientResponse):
    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _NoWriter())
        super().__init__(method, url, **kwargs)


class MockAPI(aioresponses):  # type: ignore[misc]
    """aioresponses with the compatible response class and envelope shortcuts."""

    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        """Register an answer, built with the aiohttp-3.14-compatible response class."""
        kwargs.setdefault("response_class", _CompatResponse)
        super().add(url, method, *args, **kwargs)

    def envelope(
        self,
        method: str,
        url: str,
        code: int = 200,
        data: Any = None,
        msg: str = "success",
        *,
        status: int = 200,
        repeat: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer ``url`` with the provider's envelope."""
        self.add(
            url,
            method,
            status=status,
            body=json.dumps({"code": code, "msg": msg, "data": data}),
            repeat=repeat,
            headers=headers,
        )

    def calls(self, method: str, url: str) -> list[Any]:
        """The recorded calls to ``method url``."""
        return list(self.requests.get((method, URL(url)), []))

    def count(self, method: str | None = None) -> int:
        """How many requests were made (of ``method``, if given)."""
        return sum(len(v) for (m, _u), v in self.requests.items() if method in (None, m))


def record(task_id: str = "t1", flag: int = 0, **extra: Any) -> dict[str, Any]:
    """A record-info ``data`` object as the provider sends it."""
    data: dict[str, Any] = {
        "taskId": task_id,
        "taskType": "mj_vary",
        "paramJson": json.dumps({"taskId": "parent", "imageIndex": 0}),
        "createTime": "2026-11-21T10:00:00.000Z",
        "completeTime": None,
        "resultInfoJson": None,
        "successFlag": flag,
        "errorCode": None,
        "errorMessage": None,
    }
    if flag == 1:
        data["completeTime"] = "2026-11-21T10:00:31.000Z"
        data["resultInfoJson"] = {
            "resultUrls": [{"resultUrl": f"https://cdn.test/{task_id}_{n}.png"} for n in range(4)]
        }
    if flag in (2, 3):
        data["completeTime"] = 1763719231000
        data["errorCode"] = 501
        data["errorMessage"] = "generation failed"
    data.update(extra)
    return data
