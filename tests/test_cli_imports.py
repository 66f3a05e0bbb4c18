"""What the ``midvary`` command loads: each command only what it needs, in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import midvary

#: Modules no command but ``demo`` and ``fake-server`` may load. (sqlite3 is not among them:
#: ``import midvary`` loads it for ``SQLiteStore``, a stdlib module that costs a few ms.)
HEAVY = ("midvary.testing", "rich", "midvary._cli.bulk", "midvary._cli.demo")

PROBE = """
import json, sys
from midvary._cli import main
argv = json.loads(sys.argv[1])
code = main(argv) if argv else None
print(json.dumps({"code": code, "loaded": sorted(m for m in sys.modules if m.startswith(
    ("midvary", "rich", "sqlite3")))}))
"""


def loaded_after(*argv: str) -> tuple[int | None, set[str]]:
    """Import midvary._cli (and run ``main(argv)`` if given) in a new interpreter."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    return result["code"], set(result["loaded"])


def test_importing_the_cli_loads_neither_the_fake_provider_nor_rich() -> None:
    """``import midvary._cli`` leaves midvary.testing, rich and the heavy commands unloaded."""
    _, loaded = loaded_after()
    assert "midvary._cli" in loaded
    assert loaded.isdisjoint(HEAVY), loaded & set(HEAVY)


@pytest.mark.parametrize("argv", [["wait", "--help"], ["--help"], ["status", "--help"]])
def test_basic_commands_load_neither_the_fake_provider_nor_rich(argv: list[str]) -> None:
    """``midvary wait --help`` and the like parse without loading what bulk or demo need."""
    code, loaded = loaded_after(*argv)
    assert code == 0
    assert loaded.isdisjoint(HEAVY), loaded & set(HEAVY)


def test_the_demo_loads_the_fake_provider_when_chosen() -> None:
    """The probe sees a lazy import: ``midvary demo --help`` does load midvary.testing."""
    code, loaded = loaded_after("demo", "--help")
    assert code == 0
    assert {"midvary.testing", "midvary._cli.demo"} <= loaded


def test_python_dash_m_midvary_is_the_midvary_command() -> None:
    """``python -m midvary --version`` prints the same version line as ``midvary --version``."""
    done = subprocess.run(
        [sys.executable, "-m", "midvary", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"midvary {midvary.__version__}"
