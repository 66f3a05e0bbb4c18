"""Fixtures of the fleet tests: the store tests' real Redis server."""

from __future__ import annotations

from tests.store.conftest import namespace, redis_session_server

__all__ = ["namespace", "redis_session_server"]
