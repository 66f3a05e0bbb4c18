"""``midvary fake-server``: the fake provider in the foreground, for demos and benchmarks.

What it prints and serves is :data:`HELP` (its ``--help``). The key is a fake one, so
printing it is fine. Also runnable without the CLI: ``python -m midvary.testing._serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import sys
from collections.abc import Sequence
from typing import Any, get_args

import attrs

from ._provider import FakeProvider
from ._settings import ENDPOINTS, FAULT_KINDS, FakeSettings, NotFoundStyle, TimeFormat

#: The ``--help`` text (plain, unlike the module docstring, which is for Sphinx and pydoc).
HELP = """\
Serve the fake provider in the foreground, for demos, benchmarks and trying the README.

It prints "key value" lines (base_url, results_base_url, api_key, stats_url, and parent_id:
a finished parent task id to vary or upscale), two "export MIDVARY_BASE_URL=..." and
"export MIDVARY_API_KEY=..." lines to paste into another shell, then "ready"; it serves
until Ctrl-C (SIGINT) or SIGTERM, prints a "stats" line of JSON figures and exits 0. The key
is a fake one. Exit status 2: a bad option, or the host or port cannot be bound.

A program that drives it reads figures from GET <base_url>/_fake/stats and changes knobs with
POST <base_url>/_fake/settings (a JSON object of FakeSettings fields) or
POST <base_url>/_fake/maintenance ({"on": true}).
"""

# The options named like the FakeSettings field they set (the other options are not fields).
_FIELDS = frozenset(attrs.fields_dict(FakeSettings))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the fake server's options to ``parser``; unset knobs keep their defaults."""
    where = parser.add_argument_group("where")
    where.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    where.add_argument(
        "--port",
        type=int,
        default=0,
        help="API port (default 0: a free one; give one to keep the export lines valid)",
    )
    where.add_argument("--results-port", type=int, default=0, help="result CDN port; 0 = free")
    where.add_argument(
        "--api-key", help="the accepted key (default: a new fake-... key on every start)"
    )
    where.add_argument("--seed", type=int, default=0, help="seed of every random draw (0)")

    knobs = parser.add_argument_group("knobs (seconds; see midvary.testing.FakeSettings)")
    knobs.add_argument(
        "--duration",
        nargs=2,
        type=float,
        metavar=("LO", "HI"),
        help="each task takes between LO and HI seconds (default 1 3)",
    )
    knobs.add_argument(
        "--invisible-for",
        type=float,
        metavar="SECONDS",
        help="a new task is 'not found' for this long after creation (default 0.5)",
    )
    knobs.add_argument(
        "--failure-rate", type=float, metavar="SHARE", help="share of tasks that fail (0-1)"
    )
    knobs.add_argument(
        "--create-failure-share",
        type=float,
        metavar="SHARE",
        help="share of the failing tasks that fail at creation, the rest at the end (0.5)",
    )
    knobs.add_argument(
        "--images-per-task",
        type=int,
        choices=range(1, 5),
        help="result images per generate or vary task (default 4)",
    )
    limit = knobs.add_mutually_exclusive_group()
    limit.add_argument(
        "--submit-limit",
        nargs=2,
        metavar=("N", "WINDOW"),
        help="at most N accepted submissions per WINDOW seconds, then HTTP 429 (default 20 10)",
    )
    limit.add_argument("--no-submit-limit", action="store_true", help="no submit limit at all")
    knobs.add_argument(
        "--credits", type=int, help="credits at start, one per submission; 0 answers 402"
    )
    knobs.add_argument(
        "--latency",
        nargs="+",
        type=float,
        metavar="SECONDS",
        help="seconds added to every API request: S, or a LO HI range",
    )
    knobs.add_argument(
        "--fault-rate", type=float, metavar="SHARE", help="share of API answers spoiled (0-1)"
    )
    knobs.add_argument(
        "--fault-kinds", nargs="+", choices=sorted(FAULT_KINDS), help="the faults to draw from"
    )
    knobs.add_argument(
        "--fault-endpoints", nargs="+", choices=sorted(ENDPOINTS), help="the endpoints they hit"
    )
    knobs.add_argument(
        "--drop-submit-answer-rate",
        type=float,
        metavar="SHARE",
        help="share of accepted submissions whose answer is lost (the task is still billed)",
    )
    knobs.add_argument(
        "--time-format",
        choices=get_args(TimeFormat),
        help="how records carry their times (default iso)",
    )
    knobs.add_argument(
        "--not-found-style",
        choices=get_args(NotFoundStyle),
        help="how an unknown task is answered: code 422 'recordInfo is null' (default) or 404",
    )
    knobs.add_argument(
        "--index-base",
        type=int,
        choices=(0, 1),
        help="vary's imageIndex is 0..3 (0, the schema; default) or 1..4 (1, the prose)",
    )
    knobs.add_argument(
        "--mirror-http-status",
        action="store_true",
        default=None,
        help="send error codes as the HTTP status too (default: inside HTTP 200)",
    )
    knobs.add_argument(
        "--result-info-as-string",
        action="store_true",
        default=None,
        help="send resultInfoJson as a JSON-encoded string (both were seen)",
    )
    knobs.add_argument(
        "--callback-hmac-key", help="sign callbacks with this key (default: unsigned)"
    )


def settings_from_args(args: argparse.Namespace) -> FakeSettings:
    """The :class:`FakeSettings` the parsed options ask for.

    Raises:
        ValueError: An option's value is invalid (the message says which).
    """
    # Taken as parsed, but for latency and submit_limit, made into settings below.
    changes: dict[str, Any] = {
        name: value for name, value in vars(args).items() if name in _FIELDS and value is not None
    }
    if args.duration is not None:
        changes["task_duration"] = args.duration
    if args.latency is not None:
        if len(args.latency) not in (1, 2):
            raise ValueError("--latency takes one number of seconds or a LO HI pair")
        changes["latency"] = args.latency[0] if len(args.latency) == 1 else args.latency
    if args.no_submit_limit:
        changes["submit_limit"] = None
    elif args.submit_limit is not None:
        count, window = args.submit_limit
        try:
            changes["submit_limit"] = (int(count), float(window))
        except ValueError:
            raise ValueError("--submit-limit takes an int N and a WINDOW in seconds") from None
    try:
        return FakeSettings(**changes)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc


def run_fake_server(args: argparse.Namespace) -> int:
    """Serve the fake provider until SIGINT or SIGTERM; return the exit status (0, or 2)."""
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        sys.stderr.write(f"fake-server: {exc}\n")
        return 2
    provider = FakeProvider(
        settings=settings,
        api_key=args.api_key,
        seed=args.seed,
        host=args.host,
        port=args.port,
        results_port=args.results_port,
    )
    try:
        where = f"{args.host} port {args.port}" + (
            f", results port {args.results_port}" if args.results_port else ""
        )
        asyncio.run(_serve(provider, where=where))
    except _CannotBindError as exc:
        sys.stderr.write(f"fake-server: {exc}\n")
        return 2
    return 0


class _CannotBindError(Exception):
    """The fake could not listen on the asked host and port."""


async def _serve(provider: FakeProvider, *, where: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        try:
            await provider.start()
        except OSError as exc:  # port in use, unknown host, no permission
            raise _CannotBindError(
                f"cannot listen on {where}: {exc.strerror or exc} "
                "(--port 0 picks a free port; --host takes a local address such as 127.0.0.1)"
            ) from None
        try:
            _say(f"base_url {provider.base_url}")
            _say(f"results_base_url {provider.results_base_url}")
            _say(f"api_key {provider.api_key}")
            _say(f"stats_url {provider.base_url}/_fake/stats")
            _say(f"parent_id {provider.sample_parent_id}")
            _say(f"export MIDVARY_BASE_URL={shlex.quote(provider.base_url)}")
            _say(f"export MIDVARY_API_KEY={shlex.quote(provider.api_key)}")
            _say("ready")
            await stop.wait()
            figures = provider.stats.as_dict()
            # Per-task figures can be huge: the summary and the counters are enough here.
            for per_task in ("polls", "detection_delays", "callback_failures"):
                figures.pop(per_task)
            _say(f"stats {json.dumps(figures, sort_keys=True)}")
        finally:
            await provider.close()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake server from ``python -m midvary.testing._serve [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m midvary.testing._serve",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(parser)
    return run_fake_server(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
