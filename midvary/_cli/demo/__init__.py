"""``midvary demo``: the main job, offline, against a fake provider started in-process.

It starts :class:`midvary.testing.FakeProvider` with realistic but fast habits (tasks of
1-3 s, some failing at creation (``successFlag`` 2) or generation (3), a submit limit of 8
per 2 s shared by generate, vary and upscale, a 2 s maintenance window, a few spoiled
answers, a few lost submit answers), then does what a user would do, through the public API
only: a :class:`midvary.Session` told the provider's limit (``submit_rate``) generates 6
prompts and, as each grid succeeds, varies its 4 images and upscales one, all in one
``Session.submit_many(..., download=DIR)`` fed the way ``midvary bulk`` feeds a generate row's
``then`` children (36 jobs), with the live progress of ``midvary bulk``.

At the end it checks that the library behaved and prints a summary, per kind of job:

- every job ended done (its images downloaded as ``<task_id>_<n>.png``: 4 for a grid or a
  vary, 1 for an upscale; a results file and a gallery page of them, ``results.jsonl`` and
  ``index.html``, are written beside them), failed because the fake made its task fail
  (:class:`TaskFailedError`), or uncertain because the fake spoiled or dropped its
  submission's answer (:class:`SubmitUncertainError`, never re-sent); the children of a grid
  that did not succeed are not run, and only those;
- every vary and upscale named its own grid's task, and reached the fake as that kind;
- the fake received no duplicate submission, exactly the POSTs the fan-out announced
  (``JobEventKind.SUBMITTING``), and created no task (of any kind) that no job of that kind
  accounts for except those whose answer it lost.

Exit code 0 when every check holds, 1 (with the reasons) otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .._kit import EXIT_FAILED, EXIT_OK, UsageError, positive_int, require_rich, say
from ..progress import Progress
from ..summary import summary_table
from .assess import DemoReport, assess
from .plan import DemoPlan
from .run import run_demo, write_demo_gallery

if TYPE_CHECKING:
    from rich.table import Table

#: The seed of every random draw of the fake provider and of the client's jitter.
DEFAULT_SEED: Final = 7
#: Where the images go unless ``--out`` says otherwise (relative to the working directory).
DEFAULT_OUT: Final = Path("midvary-demo")
#: ``--fast`` multiplies every time (task durations, windows, policies) by this.
FAST_SCALE: Final = 0.1

_HELP: Final = """\
Start a fake provider in this process (tasks of 1-3 s, some failing, a submit limit of 8 per
2 s, a maintenance window, a few spoiled and lost answers), generate 6 prompts and, as each
grid is ready, vary its 4 images and upscale one, all through one Session.submit_many with
live progress; download the results, check that the library behaved, and print a summary.
Nothing leaves 127.0.0.1. Takes about 20 s.

exit codes: 0 the library behaved (every job done, failed by the provider, or uncertain
because the provider lost its answer; the children of a failed grid not run; nothing
submitted twice; every result downloaded); 1 it did not (the reasons are printed); 2 usage
error.
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
        "--prompts",
        type=positive_int,
        default=6,
        metavar="N",
        help="prompts to generate; each grid gets 4 varies and 1 upscale (6)",
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
    plan = DemoPlan(scale=FAST_SCALE if args.fast else 1.0, prompts=args.prompts)
    progress = Progress(plan.jobs, label="demo")
    header = [
        f"midvary demo: {plan.prompts} prompt{'s' if plan.prompts > 1 else ''} generated, "
        f"each grid's 4 images varied and 1 upscaled ({plan.jobs} jobs), against a fake "
        f"provider in this process, seed {args.seed}",
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


#: The per-kind table's rows: its label and the kind, in the workflow's order.
_KIND_ROWS: Final = (("generated", "generate"), ("varied", "vary"), ("upscaled", "upscale"))
_KIND_COLUMNS: Final = ("jobs", "done", "failed", "uncertain", "not_run", "tasks_billed")


def _kinds_table(kinds: dict[str, dict[str, int]]) -> Table:
    """The jobs of each kind: how many, how they ended, the tasks the provider billed."""
    from rich.table import Table  # noqa: PLC0415 - rich is optional

    table = Table(title="by kind")
    table.add_column("")
    for column in _KIND_COLUMNS:
        table.add_column(column.replace("_", " "), justify="right")
    for label, kind in _KIND_ROWS:
        table.add_row(label, *(str(kinds[kind][column]) for column in _KIND_COLUMNS))
    return table


def _print_report(report: DemoReport) -> None:
    from rich.console import Console  # noqa: PLC0415 - rich is optional

    f = report.figures
    polls = (
        f"{f['polls_per_task_mean']:.1f} (max {f['polls_per_task_max']})"
        if f["polls_per_task_mean"] is not None
        else "-"
    )
    kinds = f["kinds"]
    mix = " + ".join(f"{counts['jobs']} {kind}" for kind, counts in kinds.items())
    rows: Sequence[tuple[str, object]] = (
        ("jobs", f"{f['jobs']} ({mix})"),
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
        ("not run: their grid did not succeed", f["not_run"]),
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
    console.print(_kinds_table(kinds))
    console.print(f"gallery: {f['gallery']}", markup=False, highlight=False, soft_wrap=True)
    if report.ok:
        console.print(
            "ok: every job ended done, failed by the provider, or uncertain because the "
            "provider lost its answer (never re-sent); only the children of grids that did "
            "not succeed were not run; nothing was submitted twice; every result was "
            "downloaded.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
