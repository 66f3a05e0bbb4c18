"""The account in the command line: ``midvary credits`` against the fake provider."""

from __future__ import annotations

import json

import pytest

from .test_cli import cli, provider


async def test_credits_prints_the_balance_and_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``midvary credits`` prints the balance grouped for people, ``--json`` an object."""
    async with provider(monkeypatch, credits=12_400) as fake:
        assert await cli("credits") == 0
        assert capsys.readouterr().out == "credits 12,400\n"
        fake.update(credits=7)
        assert await cli("credits", "--json") == 0
        assert json.loads(capsys.readouterr().out) == {"credits": 7}


async def test_credits_with_a_wrong_key_exits_1_without_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong key is reported as AuthenticationError (exit 1); no key is printed."""
    async with provider(monkeypatch):
        assert await cli("credits", "--api-key", "fake-wrong-cli-key") == 1
        out, err = capsys.readouterr()
        assert "AuthenticationError" in err
        assert "fake-wrong-cli-key" not in out + err
