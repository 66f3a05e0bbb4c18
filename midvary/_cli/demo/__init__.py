"""``midvary demo``: the main job, offline, against a fake provider started in-process.

It starts :class:`midvary.testing.FakeProvider` with realistic but fast habits (tasks of
1-3 s, some failing at creation (``successFlag`` 2) or generation (3), a submit limit of 8
per 2 s, a 2 s maintenance window, a few spoiled answers, a few lost submit answers), then
does what a user would do, through the public API only: a :class:`midvary.Session` told the
provider's limit (``submit_rate``) runs 24 vary jobs (6 parents x 4 images) with
``Session.vary_many(..., download=DIR)``, with the live progress of ``midvary bulk``.

At the end it checks that the library behaved and prints a summary:

- every job ended done (its images downloaded as ``<task_id>_<n>.png``; a results file and
  a gallery page of them, ``results.jsonl`` and ``index.html``, are written beside them),
  failed because the fake made its task fail (:class:`TaskFailedError`), or uncertain
  because the fake spoiled or dropped its submission's answer
  (:class:`SubmitUncertainError`, never re-sent);
- the fake received no duplicate submission, exactly the POSTs the fan-out announced
  (``JobEventKind.SUBMITTING``), and created no task that no job accounts for except those
  whose answer it dropped.

Exit code 0 when every check holds, 1 (with the reasons) otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from .._kit import EXIT_FAILED, EXIT_OK, UsageError, positive_int, require_rich, say
from ..progress import Progress
from ..summary import summary_table
from .assess import DemoReport, assess
from .plan import DemoPlan
from .run import run_demo, write_demo_gallery

#: The seed of every random draw of the fake provider and of the client's jitter.
DEFAULT_SEED: Final = 7
#: Where the images go unless ``--out`` says otherwise (relative to the working directory).
DEFAULT_OUT: Final = Path("midvary-demo")
#: ``--fast`` multiplies every time (task durations, windows, policies) by this.
FAST_SCALE: Final = 0.1

_HELP: Final = """\
Start a fake provider in this process (tasks of 1-3 s, some failing, a submit limit of 8 per
2 s, a maintenance window, a few spoiled and lost answers), vary 24 images through
Session.vary_many with live progress, download the results, check that the library behaved,
and print a summary. Nothing leaves 127.0.0.1. Takes about 15 s.

exit codes: 0 the library behaved (every job done, failed by the provider, or uncertain
because the provider lost its answer; nothing submitted twice; every result downloaded);
1 it did not (the reasons are printed); 2 usage error.
"""


def options(parser: argparse.ArgumentParser) -> None:
    """``midvary demo``: the main job against an in-process fake provider."""
    parser.description = "Run the main job offline, against a built-in fake provider.\n\n" + _HELP
    parser.set_defaults(handler=_demo)
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"download the images into DIR ({DEFAULT_OUT})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"seed of the fake provider's draws and the client's jitter ({DEFAULT_SEED})",
    )
    parser.add_argument(
        "--parents",
        type=positive_int,
        default=6,
        metavar="N",
        help="parent tasks to vary, 4 images each (6)",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help=f"every time x{FAST_SCALE:g}: tasks of 0.1-0.3 s, and so on (for tests)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object on stdout"
    )


def _demo(args: argparse.Namespace) -> int:
    require_rich()
    if args.api_key is not None or args.base_url is not None:
        raise UsageError("the demo talks to its own fake provider: drop --api-key/--base-url")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    plan = DemoPlan(scale=FAST_SCALE if args.fast else 1.0, parents=args.parents)
    progress = Progress(plan.jobs, label="demo")
    header = [
        f"midvary demo: {plan.jobs} vary jobs ({plan.parents} parent"
        f"{'s' if plan.parents > 1 else ''} x 4 images) against a "
        f"fake provider in this process, seed {args.seed}",
        *(line.replace("DIR", str(out)) for line in plan.describe()),
    ]
    for line in header:
        progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
    observed = asyncio.run(run_demo(plan, out=out, seed=args.seed, progress=progress))
    report = assess(observed)
    report.figures["seed"] = args.seed
    report.figures["gallery"] = str(write_demo_gallery(observed))
    if args.json:
        say(json.dumps({**report.figures, "ok": report.ok, "problems": list(report.problems)}))
    else:
        _print_report(report)
    if not report.ok:
        say(
            f"midvary demo: the library misbehaved ({len(report.problems)} "
            f"problem{'s' if len(report.problems) > 1 else ''}):",
            stream=sys.stderr,
        )
        for problem in report.problems:
            say(f"  - {problem}", stream=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _files(written: int, downloaded: int) -> str:
    earlier = max(written - downloaded, 0)
    if not earlier:
        return str(written)
    return f"{written} ({earlier} complete from an earlier run: not downloaded again)"


def _print_report(report: DemoReport) -> None:
    from rich.console import Console  # noqa: PLC0415 - rich is optional

    f = report.figures
    polls = (
        f"{f['polls_per_task_mean']:.1f} (max {f['polls_per_task_max']})"
        if f["polls_per_task_mean"] is not None
        else "-"
    )
    rows: Sequence[tuple[str, object]] = (
        ("jobs", f"{f['jobs']}"),
        ("done (images downloaded)", f["done"]),
        (
            "failed by the provider (flag 2 / 3)",
            f"{f['failed']} ({f['failed_create']} / {f['failed_generate']})",
        ),
        (
            "uncertain: answer lost, not re-sent",
            f"{f['uncertain']} ({f['uncertain_billed']} billed, "
            f"{f['uncertain_not_created']} never created)",
        ),
        *((("other errors (see below)", f["unexpected"]),) if f["unexpected"] else ()),
        (
            "rate-limited waits (client limiter)",
            f"{f['rate_limited_waits']} ({f['jobs_held_back']} jobs held back)",
        ),
        (
            "submissions retried (455 / 429)",
            f"{f['submit_retries_455']} / {f['submit_retries_429']}",
        ),
        (
            "polls retried (faulted / 455)",
            f"{f['poll_retries']} ({f['poll_faults']} / {f['poll_maintenance']})",
        ),
        ("polls per task", polls),
        ("HTTP 429 from the provider", f["http_429"]),
        ("duplicate submissions", f["duplicates"]),
        ("tasks billed by the provider", f["tasks_billed"]),
        (f"files in {f['out']}", _files(f["files_written"], f["files_downloaded_now"])),
        ("wall time", f"{f['wall_seconds']:.1f} s"),
    )
    console = Console()
    console.print(summary_table(f"midvary demo (seed {f['seed']})", rows, columns=None))
    console.print(f"gallery: {f['gallery']}", markup=False, highlight=False, soft_wrap=True)
    if report.ok:
        console.print(
            "ok: every job ended done, failed by the provider, or uncertain because the "
            "provider lost its answer (never re-sent); nothing was submitted twice; every "
            "result was downloaded.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
