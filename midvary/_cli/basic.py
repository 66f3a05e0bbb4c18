"""``midvary vary``, ``status``, ``wait`` and ``credits``: one request at a time, public API."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import midvary

from ._kit import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    open_session,
    positive_float,
    say,
    timeout_message,
)


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
            say(
                json.dumps({**midvary.to_json_dict(exc.record), "error": midvary.to_json_dict(exc)})
            )
        else:
            show_record(exc.record)
            say(f"error: {exc}", stream=sys.stderr)
        return EXIT_FAILED
    except midvary.TaskTimeoutError as exc:
        say(timeout_message(exc), stream=sys.stderr)
        return EXIT_FAILED
    paths: tuple[Any, ...] = ()
    if args.download is not None:
        paths = await session.download(record, args.download)
    if args.json:
        say(json.dumps({**midvary.to_json_dict(record), "files": [str(p) for p in paths]}))
    else:
        show_record(record)
        for path in paths:
            say(f"file     {path}")
    return EXIT_OK


# -- vary, status, wait --------------------------------------------------------------------


def vary_options(parser: argparse.ArgumentParser) -> None:
    """``midvary vary PARENT_ID INDEX``: submit one vary task (and wait for it)."""
    parser.set_defaults(handler=_vary)
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
    if args.no_wait and (args.download is not None or args.timeout is not None):
        given = "--download" if args.download is not None else "--timeout"
        raise UsageError(f"--no-wait does not wait, so {given} has no effect: drop one of them")
    try:
        request = midvary.VaryRequest(
            task_id=args.parent_id,
            image_index=args.index,
            water_mark=args.water_mark,
            callback_url=args.callback_url,
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None

    submitted: list[str] = []

    async def run() -> int:
        async with open_session(args) as session:
            handle = await session.submit(request)
            submitted.append(handle.task_id)
            if args.no_wait:
                say(json.dumps({"task_id": handle.task_id}) if args.json else handle.task_id)
                return EXIT_OK
            if not args.json:
                say(f"submitted {handle.task_id}", stream=sys.stderr)
            return await _finish(session, handle, args)

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        if not submitted:
            raise  # nothing was submitted (or its answer never came): the plain message
        (task_id,) = submitted
        say(
            f"interrupted: task {task_id} was submitted and may still finish; re-attach it "
            f"with `midvary wait {task_id}`",
            stream=sys.stderr,
        )
        return EXIT_INTERRUPTED


def status_options(parser: argparse.ArgumentParser) -> None:
    """``midvary status TASK_ID``: show a task's record once (or that it is not visible yet)."""
    parser.set_defaults(handler=_status)
    parser.add_argument("task_id", metavar="TASK_ID")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _status(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with open_session(args) as session:
            try:
                record = await session.get_task(args.task_id)
            except (TypeError, ValueError) as exc:
                raise UsageError(str(exc)) from None
            except midvary.NotFoundError as exc:
                if exc.http_status == 404:  # the host has no such endpoint: a wrong base URL
                    raise
                # The provider shows a new task only after a moment (the library's waits
                # tolerate it too): right after `vary --no-wait` this is the normal answer.
                if args.json:
                    say(json.dumps({"task_id": args.task_id, "status": "NOT_VISIBLE_YET"}))
                else:
                    say(f"task     {args.task_id}")
                    say("status   submitted, not visible yet")
                    say(
                        "a new task shows up within seconds (an id the provider never made "
                        f"stays unseen); `midvary wait {args.task_id}` waits for it",
                        stream=sys.stderr,
                    )
                return EXIT_OK
        if args.json:
            say(json.dumps(midvary.to_json_dict(record)))
        else:
            show_record(record)
        return EXIT_FAILED if record.status.is_failure else EXIT_OK

    return asyncio.run(run())


def wait_options(parser: argparse.ArgumentParser) -> None:
    """``midvary wait TASK_ID``: wait for an existing task (and download its images)."""
    parser.set_defaults(handler=_wait)
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


def credits_options(parser: argparse.ArgumentParser) -> None:
    """``midvary credits``: show the account's remaining credits (one GET)."""
    parser.set_defaults(handler=_credits)
    parser.add_argument("--json", action="store_true", help='print {"credits": N}')


def _credits(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with open_session(args) as session:
            left = await session.credits()
        say(json.dumps({"credits": left}) if args.json else f"credits {left:,}")
        return EXIT_OK

    return asyncio.run(run())
