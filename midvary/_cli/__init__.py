"""The ``midvary`` command line: ``vary``, ``status``, ``wait`` and ``bulk``.

It uses only midvary's public API. Each command is registered by one ``add_*_command``
function in :data:`COMMANDS`; a new command (in its own module) is one more line there. A
command's handler takes the parsed arguments and returns the exit code:

- 0: everything succeeded;
- 1: the provider or a task failed (for ``bulk``: some job did not succeed);
- 2: a usage error (bad arguments, unreadable file, no API key, rich missing);
- 130: interrupted (Ctrl-C); ``bulk`` resumes when run again.

The API key comes from ``--api-key``, else ``MIDVARY_API_KEY``, else ``KIE_API_KEY``; it is
never printed, logged or written to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import midvary

from ..testing._serve import add_fake_server_command
from ._kit import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Handler,
    UsageError,
    add_command,
    add_common_options,
    error_json,
    open_session,
    positive_float,
    record_json,
    say,
)
from .bulk import add_bulk_command
from .demo import add_demo_command

logger = logging.getLogger(__name__)


def show_record(record: midvary.TaskRecord) -> None:
    """Print a record for people."""
    say(f"task     {record.task_id}")
    say(f"status   {record.status.name}")
    if record.completed_at is not None:
        say(f"finished {record.completed_at.isoformat()}")
    if record.error_message or record.error_code is not None:
        say(f"error    {record.error_message or ''} (code {record.error_code})")
    for url in record.image_urls:
        say(f"image    {url}")


async def _finish(
    session: midvary.Session,
    handle: midvary.TaskHandle,
    args: argparse.Namespace,
) -> int:
    """Wait for ``handle``, download if asked, print the outcome; return the exit code."""
    try:
        record = await handle.wait(
            args.timeout if args.timeout is not None else midvary.USE_DEFAULT
        )
    except midvary.TaskFailedError as exc:
        if args.json:
            say(json.dumps({**record_json(exc.record), "error": error_json(exc)}))
        else:
            show_record(exc.record)
            say(f"error: {exc}", stream=sys.stderr)
        return EXIT_FAILED
    except midvary.TaskTimeoutError as exc:
        say(f"error: {exc}; run `midvary wait {exc.task_id}` later", stream=sys.stderr)
        return EXIT_FAILED
    paths: tuple[Any, ...] = ()
    if args.download is not None:
        paths = await session.download(record, args.download)
    if args.json:
        say(json.dumps({**record_json(record), "files": [str(p) for p in paths]}))
    else:
        show_record(record)
        for path in paths:
            say(f"file     {path}")
    return EXIT_OK


# -- vary, status, wait --------------------------------------------------------------------


def add_vary_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``midvary vary PARENT_ID INDEX``: submit one vary task (and wait for it)."""
    parser = add_command(
        subparsers,
        "vary",
        _vary,
        help="submit one vary task and wait for its images",
    )
    parser.add_argument("parent_id", metavar="PARENT_ID", help="the earlier generation task")
    parser.add_argument("index", metavar="INDEX", type=int, help="which image, 0-based: 0..3")
    parser.add_argument("--water-mark", metavar="W", help="watermark text")
    parser.add_argument("--callback-url", metavar="U", help="URL the provider POSTs the result to")
    parser.add_argument("--no-wait", action="store_true", help="print the task id and exit")
    _add_wait_options(parser)


def _add_wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=positive_float,
        metavar="S",
        help="seconds to wait for the task (default: 900)",
    )
    parser.add_argument("--download", metavar="DIR", help="download the images into DIR")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _vary(args: argparse.Namespace) -> int:
    try:
        request = midvary.VaryRequest(
            task_id=args.parent_id,
            image_index=args.index,
            water_mark=args.water_mark,
            callback_url=args.callback_url,
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None

    async def run() -> int:
        async with open_session(args) as session:
            handle = await session.submit(request)
            if args.no_wait:
                say(json.dumps({"task_id": handle.task_id}) if args.json else handle.task_id)
                return EXIT_OK
            if not args.json:
                say(f"submitted {handle.task_id}", stream=sys.stderr)
            return await _finish(session, handle, args)

    return asyncio.run(run())


def add_status_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``midvary status TASK_ID``: show a task's record once."""
    parser = add_command(subparsers, "status", _status, help="show a task's current record")
    parser.add_argument("task_id", metavar="TASK_ID")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _status(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with open_session(args) as session:
            try:
                record = await session.get_task(args.task_id)
            except (TypeError, ValueError) as exc:
                raise UsageError(str(exc)) from None
        if args.json:
            say(json.dumps(record_json(record)))
        else:
            show_record(record)
        return EXIT_FAILED if record.status.is_failure else EXIT_OK

    return asyncio.run(run())


def add_wait_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``midvary wait TASK_ID``: wait for an existing task (and download its images)."""
    parser = add_command(subparsers, "wait", _wait, help="wait for an existing task")
    parser.add_argument("task_id", metavar="TASK_ID")
    _add_wait_options(parser)


def _wait(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with open_session(args) as session:
            try:
                handle = session.task(args.task_id)
            except (TypeError, ValueError) as exc:
                raise UsageError(str(exc)) from None
            return await _finish(session, handle, args)

    return asyncio.run(run())


#: The commands, in help order. Another command is one more ``add_*_command`` line here.
COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    add_vary_command,
    add_status_command,
    add_wait_command,
    add_bulk_command,
    add_fake_server_command,
    add_demo_command,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``midvary`` argument parser with every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="midvary",
        description="Client for the Midjourney Vary API (kie.ai / midapi.ai).",
    )
    parser.add_argument("--version", action="version", version=f"midvary {midvary.__version__}")
    add_common_options(parser, suppress=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(subparsers)
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
        say(f"midvary {args.command}: {type(exc).__name__}: {exc}", stream=sys.stderr)
        return EXIT_FAILED
