"""Fixtures of the fleet tests: the store tests' namespace and real Redis server.

The Redis fixtures move to tests/conftest.py with issue 11's wiring; until then they are
imported from tests/store/conftest.py.
"""

from __future__ import annotations

import contextlib

from tests.store.conftest import namespace

with contextlib.suppress(ImportError):  # before the wire11 merge only
    from tests.store.conftest import (  # type: ignore[attr-defined,unused-ignore]  # noqa: F401
        redis_session_server,
    )

__all__ = ["namespace"]
