"""The foreground fake server: options to settings, and a real process that stops on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import aiohttp
import pytest

from midvary._cli import build_parser
from midvary.testing import FakeSettings
from midvary.testing._serve import configure_parser, settings_from_args


def parse(*argv: str) -> argparse.Namespace:
    """Parse ``midvary fake-server ARGV`` the way the CLI will."""
    return build_parser().parse_args(["fake-server", *argv])


def test_defaults_give_default_settings() -> None:
    """With no knob options the server runs FakeSettings() on 127.0.0.1, a free port."""
    args = parse()
    assert (args.host, args.port, args.seed, args.api_key) == ("127.0.0.1", 0, 0, None)
    assert settings_from_args(args) == FakeSettings()
    assert callable(args.handler)


def test_knob_options_become_settings() -> None:
    """Each option sets its FakeSettings field."""
    args = parse(
        "--duration", "0.1", "0.5",
        "--failure-rate", "0.2",
        "--submit-limit", "5", "2.5",
        "--fault-rate", "0.1",
        "--fault-kinds", "reset", "html_502",
        "--latency", "0.01", "0.02",
        "--time-format", "mixed",
        "--index-base", "1",
        "--mirror-http-status",
        "--credits", "7",
        "--seed", "3",
        "--api-key", "fake-cli",
    )  # fmt: skip
    settings = settings_from_args(args)
    assert settings.task_duration == (0.1, 0.5)
    assert settings.failure_rate == 0.2
    assert settings.submit_limit == (5, 2.5)
    assert settings.fault_rate == 0.1
    assert settings.fault_kinds == {"reset", "html_502"}
    assert settings.latency == (0.01, 0.02)
    assert (settings.time_format, settings.index_base, settings.credits) == ("mixed", 1, 7)
    assert settings.mirror_http_status is True
    assert (args.seed, args.api_key) == (3, "fake-cli")
    assert settings_from_args(parse("--no-submit-limit")).submit_limit is None
    assert settings_from_args(parse("--latency", "0.3")).latency == 0.3


@pytest.mark.parametrize(
    "argv",
    [("--failure-rate", "3"), ("--submit-limit", "x", "1"), ("--latency", "1", "2", "3")],
)
def test_bad_values_are_value_errors(argv: tuple[str, ...]) -> None:
    """Invalid knob values become ValueError with a message (the CLI exits 2)."""
    with pytest.raises(ValueError):  # noqa: PT011  # any message naming the knob will do
        settings_from_args(parse(*argv))


async def test_server_process_serves_then_exits_0_on_sigterm() -> None:
    """The process prints URLs, key, a parent id and ready, serves, and exits 0 on SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "midvary.testing._serve", "--duration", "0.01", "0.02",
        "--invisible-for", "0", "--api-key", "fake-proc",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        info = {}
        async with asyncio.timeout(20):
            while (line := (await process.stdout.readline()).decode().strip()) != "ready":
                assert line, "the server exited before it was ready"
                key, _, value = line.partition(" ")
                info[key] = value
        assert info["api_key"] == "fake-proc"
        headers = {"Authorization": "Bearer fake-proc"}
        async with aiohttp.ClientSession(headers=headers) as http:
            url = info["base_url"] + "/api/v1/mj/generateUpscale"
            body = {"taskId": info["parent_id"], "imageIndex": 0}
            async with http.post(url, json=body) as response:
                assert (await response.json())["code"] == 200
            async with http.get(info["stats_url"]) as response:
                assert (await response.json())["tasks_by_endpoint"] == {"upscale": 1}
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            rest = (await process.stdout.read()).decode()
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    (stats_line,) = [line for line in rest.splitlines() if line.startswith("stats ")]
    assert json.loads(stats_line.removeprefix("stats "))["tasks_created"] == 1


def test_every_fake_server_option_says_what_it_does() -> None:
    """Each option of `midvary fake-server --help` has a description (none is bare)."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    bare = [
        action.option_strings
        for action in parser._actions  # argparse exposes no public list of its options
        if action.option_strings and action.help in (None, "")
    ]
    assert bare == []
