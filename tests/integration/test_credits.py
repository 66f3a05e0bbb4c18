"""``session.credits()``: the account's balance, as the provider's credit endpoint reports it."""

from __future__ import annotations

import pytest

import midvary

from .conftest import OpenSession, StartFake

MIRROR = pytest.mark.parametrize("mirror", [False, True], ids=["http-200", "http-mirrored"])


async def test_credits_reports_the_balance_that_submissions_use_up(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """The balance drops by one per accepted task, and a top-up shows at once."""
    fake = await start_fake(credits=5)
    session = await open_session(fake)

    assert await session.credits() == 5
    await session.vary("parent-credit", 0)
    await session.vary("parent-credit", 1)
    assert await session.credits() == 3

    fake.update(credits=40)
    assert await session.credits() == 40
    assert fake.stats.requests["credit"] == 3


async def test_unlimited_fake_still_reports_a_balance_that_shows_the_spend(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """Without a ``credits`` setting the fake answers a large balance, less the tasks made."""
    fake = await start_fake()
    session = await open_session(fake)

    before = await session.credits()
    await session.vary("parent-credit", 2)
    assert before - await session.credits() == 1


@MIRROR
async def test_wrong_key_gets_authentication_error_and_no_key_in_the_message(
    start_fake: StartFake, open_session: OpenSession, mirror: bool
) -> None:
    """A wrong key is code 401 (inside HTTP 200 unless mirrored): AuthenticationError."""
    fake = await start_fake(mirror_http_status=mirror)
    session = await open_session(fake, api_key="fake-wrong-credit-key")

    with pytest.raises(midvary.AuthenticationError) as info:
        await session.credits()

    assert info.value.http_status == (401 if mirror else 200)
    assert "fake-wrong-credit-key" not in str(info.value)
    assert fake.api_key not in str(info.value)


async def test_credits_in_maintenance_is_a_service_unavailable_error(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """During maintenance the endpoint answers 455, raised once (no retry)."""
    fake = await start_fake()
    session = await open_session(fake)
    fake.set_maintenance(True)

    with pytest.raises(midvary.ServiceUnavailableError):
        await session.credits()
    assert fake.stats.requests["credit"] == 1


async def test_a_broken_credit_answer_is_a_protocol_error(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """An HTML page instead of the envelope becomes ProtocolError, not a crash."""
    fake = await start_fake(fault_rate=1.0, fault_kinds=["html_502"], fault_endpoints=["credit"])
    session = await open_session(fake)

    with pytest.raises(midvary.ProtocolError):
        await session.credits()


async def test_credits_after_close_raises_session_closed(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """A closed session sends nothing."""
    fake = await start_fake()
    session = await open_session(fake)
    await session.aclose()

    with pytest.raises(midvary.SessionClosedError):
        await session.credits()
    assert fake.stats.requests["credit"] == 0
