"""Building blocks shared by the ``midvary`` commands: options, errors, output helpers.

:class:`Command` and :class:`LazySubParsers` make the table of commands whose modules load
only when chosen (see :mod:`midvary._cli`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, TextIO
from urllib.parse import urlsplit

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; concurrent runs are not detected
    fcntl = None  # type: ignore[assignment]

import attrs

import midvary
from midvary._validate import resolve_api_key

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


@attrs.frozen
class Command:
    """One ``midvary`` subcommand, imported only when chosen.

    Attributes:
        name: The subcommand's name.
        help: Its one-line help (and its description unless its options set a longer one).
        options: ``"module:function"``; the function takes the command's parser, adds its
            options and sets its ``handler`` default.
        common: Whether it takes ``--api-key``, ``--base-url`` and ``-v`` after its name.
    """

    name: str
    help: str
    options: str
    common: bool = True


if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time
    _SubParsers = argparse._SubParsersAction


class LazySubParsers(_SubParsers):
    """Subcommands whose options (and modules) are loaded only when the command is chosen."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[str, Command] = {}

    def add_command(self, command: Command) -> None:
        """Register ``command``: its name and help now, its options when it is chosen."""
        parser = self.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if command.common:
            add_common_options(parser, suppress=True)
        self._pending[command.name] = command

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if values:
            name = values[0]
            command = self._pending.pop(name, None)
            if command is not None:  # import its module; add its options to its parser
                module, _, function = command.options.partition(":")
                getattr(importlib.import_module(module), function)(self._name_parser_map[name])
        super().__call__(parser, namespace, values, option_string)


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


def exclusive_lock(path: Path, busy: str) -> IO[bytes]:
    """Open ``path`` and take an exclusive, non-blocking ``flock`` on it; close it to release.

    The lock lives as long as the returned file (a killed process releases it). Blocking
    (file open): call it off the event loop.

    Raises:
        UsageError: ``busy``: another process holds it.

    """
    file = path.open("ab")
    if fcntl is not None:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.close()
            raise UsageError(busy) from None
    return file


def api_key(args: argparse.Namespace) -> str:
    """The API key a session of these options uses (``--api-key``, else the environment).

    The environment is read where :class:`midvary.Session` reads it
    (``midvary._validate.resolve_api_key``, see ``docs/architecture.md``).

    Raises:
        UsageError: No key anywhere (in the CLI's words), or a malformed one (never echoed).

    """
    try:
        return resolve_api_key(args.api_key)
    except (TypeError, ValueError) as exc:
        if args.api_key is None:
            raise UsageError(
                "no API key: pass --api-key KEY, or set MIDVARY_API_KEY (or KIE_API_KEY)"
            ) from None
        raise UsageError(str(exc).replace("Session(api_key=...)", "--api-key")) from None


def open_session(args: argparse.Namespace, **options: Any) -> midvary.Session:
    """A :class:`midvary.Session` from the common options.

    Raises:
        UsageError: No API key, or a bad base URL.

    """
    api_key(args)
    try:
        return midvary.Session(api_key=args.api_key, base_url=args.base_url, **options)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def explain(command: str, error: midvary.MidvaryError, args: argparse.Namespace) -> str:
    """The CLI's one-line message for a library error: in the CLI's words where they differ."""
    if isinstance(error, midvary.TaskTimeoutError):
        return timeout_message(error)
    message = f"midvary {command}: {type(error).__name__}: {error}"
    # A 404 from a base URL with a path (--base-url, else MIDVARY_BASE_URL): a wrong base URL.
    url = args.base_url or os.environ.get("MIDVARY_BASE_URL", "").strip()
    path = urlsplit(url).path.rstrip("/")
    if path and getattr(error, "http_status", None) == 404:
        message += (
            f" (the base URL has the path {path!r}: --base-url (or MIDVARY_BASE_URL) is the "
            "API's root, scheme and host only, such as https://api.kie.ai or "
            "https://api.midapi.ai, without a path)"
        )
    return message


def timeout_message(error: midvary.TaskTimeoutError) -> str:
    """A wait's timeout, with the command that re-attaches the task."""
    return (
        f"error: {error.reason}; it may still finish: re-attach it with "
        f"`midvary wait {error.task_id}`"
    )
