"""The control endpoints of a fake in another process (benchmarks, ``midvary fake-server``).

They use only the provider's public surface, without auth, faults or figures:
``GET /_fake/stats``, ``POST /_fake/settings`` and ``POST /_fake/maintenance``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ._settings import settings_as_json

if TYPE_CHECKING:
    from ._provider import FakeProvider


def control_routes(provider: FakeProvider) -> list[web.RouteDef]:
    """The control routes of ``provider``."""

    async def stats(_request: web.Request) -> web.Response:
        figures = provider.stats.as_dict()
        figures["credits_left"] = provider.credits_left
        figures["elapsed"] = provider.now()
        return web.json_response(figures)

    async def settings(request: web.Request) -> web.Response:
        changes = await _json(request)
        if not isinstance(changes, dict):
            error = "the body must be a JSON object of FakeSettings fields"
            return web.json_response({"error": error}, status=400)
        try:
            provider.update(**changes)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(settings_as_json(provider.settings))

    async def maintenance(request: web.Request) -> web.Response:
        body = await _json(request)
        if not isinstance(body, dict) or not isinstance(body.get("on"), bool):
            return web.json_response({"error": 'expected {"on": true|false}'}, status=400)
        provider.set_maintenance(body["on"])
        return web.json_response({"on": body["on"]})

    return [
        web.get("/_fake/stats", stats),
        web.post("/_fake/settings", settings),
        web.post("/_fake/maintenance", maintenance),
    ]


async def _json(request: web.Request) -> object:
    """The request's JSON body, or ``None`` if it is not JSON."""
    try:
        return await request.json()
    except ValueError:
        return None
