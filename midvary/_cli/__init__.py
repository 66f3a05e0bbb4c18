"""The ``midvary`` command line: :func:`main` and the table of its commands.

It uses only midvary's public API (and :mod:`midvary.testing` for ``demo`` and
``fake-server``). Each command is one :class:`~midvary._cli._kit.Command` line in
:data:`COMMANDS`; its module is imported only when the command is chosen, so no command
loads what another needs (rich, sqlite3, the fake provider). A command's handler takes the
parsed arguments and returns the exit code:

- 0: everything succeeded;
- 1: the provider or a task failed (for ``bulk``: some job did not succeed);
- 2: a usage error (bad arguments, unreadable file, no API key, rich missing);
- 130: interrupted (Ctrl-C); ``bulk`` resumes when run again.

The API key comes from ``--api-key``, else ``MIDVARY_API_KEY``, else ``KIE_API_KEY``; it is
never printed, logged or written to a file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import midvary

from ._kit import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Command,
    Handler,
    LazySubParsers,
    UsageError,
    add_common_options,
    explain,
    say,
)

#: The commands, in help order. Another command is one more line here.
#: ``DemoPlan().jobs``, written out so that ``--help`` does not import the demo (and the fake
#: provider); a test keeps the two equal.
_DEMO_JOBS = 36

COMMANDS: tuple[Command, ...] = (
    Command(
        "vary", "submit one vary task and wait for its images", f"{__name__}.basic:vary_options"
    ),
    Command(
        "generate",
        "generate a grid from a prompt, then vary or upscale its images",
        f"{__name__}.generate:options",
    ),
    Command("status", "show a task's current record", f"{__name__}.basic:status_options"),
    Command("wait", "wait for an existing task", f"{__name__}.basic:wait_options"),
    Command("credits", "show the account's remaining credits", f"{__name__}.basic:credits_options"),
    Command(
        "bulk",
        "run every vary job of a CSV or JSONL file (resumable)",
        f"{__name__}.bulk:options",
    ),
    Command(
        "gallery",
        "write one static HTML page of a bulk results file's images",
        f"{__name__}.gallery:options",
    ),
    Command(
        "fake-server",
        "serve the fake provider in the foreground (for demos and benchmarks)",
        f"{__name__}.fake_server:options",
        common=False,  # it takes its own --api-key: the one key it accepts
    ),
    Command(
        "demo",
        f"run the whole workflow (generate, vary, upscale: {_DEMO_JOBS} jobs) against a "
        "built-in fake provider, offline, and check it",
        f"{__name__}.demo:options",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``midvary`` argument parser with every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="midvary",
        description="Client for the Midjourney Vary API (kie.ai / midapi.ai).",
    )
    parser.add_argument("--version", action="version", version=f"midvary {midvary.__version__}")
    add_common_options(parser, suppress=False)
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, action=LazySubParsers
    )
    assert isinstance(subparsers, LazySubParsers)  # noqa: S101 - for the type checker
    for command in COMMANDS:
        subparsers.add_command(command)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("midvary")
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``midvary`` command line with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 1 failure, 2 usage error, 130 interrupted.

    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    _configure_logging(args.verbose)
    handler: Handler = args.handler
    try:
        return handler(args)
    except UsageError as exc:
        say(f"midvary {args.command}: error: {exc}", stream=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        say("interrupted", stream=sys.stderr)
        return EXIT_INTERRUPTED
    except midvary.MidvaryError as exc:
        say(explain(args.command, exc, args), stream=sys.stderr)
        return EXIT_FAILED
