"""Building blocks shared by the ``midvary`` commands: options, errors, output helpers.

A command module defines ``add_<name>_command(subparsers)``, which calls :func:`add_command`
with a handler ``(args) -> exit code``; :data:`midvary._cli.COMMANDS` lists those functions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, Final, TextIO

import midvary

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A problem with how the command was called; exit code 2, message shown as is."""


def say(text: str = "", *, stream: TextIO | None = None) -> None:
    """Write one line to stdout (or ``stream``)."""
    (stream or sys.stdout).write(f"{text}\n")


def require_rich() -> None:
    """Raise :class:`UsageError` with the install hint if rich is not installed."""
    try:
        import rich  # noqa: F401, PLC0415 - only the commands that draw need it
    except ImportError:
        raise UsageError(
            "this command needs the 'rich' package: pip install 'midvary[cli]'"
        ) from None


# -- common options --------------------------------------------------------------------------


def add_common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """``--api-key``, ``--base-url`` and ``-v``, before or after the command's name."""
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--api-key",
        default=default,
        metavar="KEY",
        help="API key (default: $MIDVARY_API_KEY, then $KIE_API_KEY); never printed",
    )
    parser.add_argument(
        "--base-url",
        default=default,
        metavar="URL",
        help="API base URL (default: $MIDVARY_BASE_URL, then https://api.kie.ai)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS if suppress else 0,
        help="log more (-v: info, -vv: debug), to stderr",
    )


def add_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Handler,
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add a subcommand that accepts the common options and runs ``handler``."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(parser, suppress=True)
    parser.set_defaults(handler=handler)
    return parser


def positive_float(text: str) -> float:
    """An argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def open_session(args: argparse.Namespace, **options: Any) -> midvary.Session:
    """A :class:`midvary.Session` from the common options.

    Raises:
        UsageError: No API key, or a bad base URL.

    """
    try:
        return midvary.Session(api_key=args.api_key, base_url=args.base_url, **options)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


# -- output ------------------------------------------------------------------------------


def record_json(record: midvary.TaskRecord) -> dict[str, Any]:
    """A record as JSON-ready data."""
    return {
        "task_id": record.task_id,
        "status": record.status.name,
        "task_type": record.task_type,
        "image_urls": list(record.image_urls),
        "created_at": record.created_at.isoformat() if record.created_at else None,
        "completed_at": record.completed_at.isoformat() if record.completed_at else None,
        "error_code": record.error_code,
        "error_message": record.error_message,
    }


def error_json(error: BaseException) -> dict[str, Any]:
    """An error as JSON-ready data: its class name and message."""
    return {"type": type(error).__name__, "message": str(error)}
