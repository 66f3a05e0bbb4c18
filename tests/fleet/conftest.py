"""Fixtures of the fleet tests: the store tests' namespace (Redis servers: tests/conftest.py)."""

from __future__ import annotations

from tests.store.conftest import namespace

__all__ = ["namespace"]
