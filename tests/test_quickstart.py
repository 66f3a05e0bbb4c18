"""The README's Quickstart runs as written against ``midvary fake-server``."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def quickstart_code() -> str:
    """The first ``python`` block of the README's Quickstart section."""
    section = README.read_text(encoding="utf-8").split("## Quickstart", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the Quickstart has no python block"
    return match.group(1)


async def test_the_quickstart_runs_as_written_against_fake_server() -> None:
    """fake-server's export lines, pasted, make the Quickstart generate, vary, upscale, succeed."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "midvary", "fake-server", "--duration", "0.1", "0.3",
        "--invisible-for", "0",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert server.stdout is not None
    try:
        environment = {
            name: value
            for name, value in os.environ.items()
            if name not in ("MIDVARY_API_KEY", "MIDVARY_BASE_URL", "KIE_API_KEY")
        }
        parent_id = None
        async with asyncio.timeout(20):
            while (line := (await server.stdout.readline()).decode().strip()) != "ready":
                assert line, "the server exited before it was ready"
                if line.startswith("export "):
                    name, _, value = line.removeprefix("export ").partition("=")
                    (environment[name],) = shlex.split(value)
                elif line.startswith("parent_id "):
                    parent_id = line.removeprefix("parent_id ")
        assert {"MIDVARY_API_KEY", "MIDVARY_BASE_URL"} <= environment.keys()
        assert parent_id is not None, "fake-server prints a parent id to paste"
        code = quickstart_code()
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code,
            env=environment,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, err = await client.communicate()
        assert client.returncode == 0, err.decode()
        lines = out.decode().splitlines()
        assert lines[0].startswith("submitted fake")
        assert lines[1].startswith("success (")  # the status as a person reads it
        assert "http://" in lines[1]  # the image URLs
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await server.communicate()
