"""``midvary generate PROMPT``: a grid from a prompt, then its chosen children, downloaded.

Generate one task and wait for its grid; then vary and/or upscale the images chosen with
``--vary`` and ``--upscale`` (one fan-out, through the session's limiter), wait for each,
and download everything if ``--download`` is given. Progress goes to stderr, one line a step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import midvary

from ._kit import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    open_session,
    positive_float,
    say,
)
from .chain import Step, action_of, child_request, parse_indexes, steps_for

_TASK_TYPES = (
    "mj_txt2img",
    "mj_img2img",
    "mj_style_reference",
    "mj_omni_reference",
    "mj_video",
    "mj_video_hd",
)


def options(parser: argparse.ArgumentParser) -> None:
    """Add ``generate``'s options to ``parser``."""
    parser.set_defaults(handler=_generate)
    parser.add_argument("prompt", metavar="PROMPT", help="the prompt (1 to 2000 characters)")
    parser.add_argument("--task-type", default="mj_txt2img", choices=_TASK_TYPES)
    parser.add_argument("--speed", choices=("relaxed", "fast", "turbo"))
    parser.add_argument("--aspect-ratio", metavar="W:H", help="e.g. 1:1, 3:2, 16:9")
    parser.add_argument("--version", dest="mj_version", metavar="V", help="7, 6.1, 6, ... niji6")
    parser.add_argument(
        "--file-url", action="append", dest="file_urls", metavar="URL", help="an input image"
    )
    for name, allowed in (
        ("stylization", "0..1000"),
        ("weirdness", "0..3000"),
        ("variety", "0..100, steps of 5"),
        ("ow", "omni weight 1..1000"),
    ):
        parser.add_argument(f"--{name}", type=int, metavar="N", help=allowed)
    parser.add_argument("--water-mark", metavar="W", help="watermark text")
    parser.add_argument("--translate", action="store_true", help="translate the prompt")
    parser.add_argument("--video-batch-size", type=int, choices=(1, 2, 4))
    parser.add_argument("--motion", choices=("high", "low"))
    parser.add_argument(
        "--vary", metavar="all|0,2", help="vary these images of the grid when it is ready"
    )
    parser.add_argument("--upscale", metavar="all|0,2", help="upscale these images of the grid")
    parser.add_argument("--download", type=Path, metavar="DIR", help="download every result")
    parser.add_argument(
        "--timeout", type=positive_float, metavar="S", help="seconds each task may take (900)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _request(args: argparse.Namespace) -> tuple[midvary.GenerateRequest, tuple[Step, ...]]:
    steps: list[Step] = []
    try:
        for action in ("vary", "upscale"):
            text = getattr(args, action)
            if text is not None:
                steps.extend(steps_for(action, parse_indexes(text, what=f"--{action}")))
        request = midvary.GenerateRequest(
            prompt=args.prompt,
            task_type=args.task_type,
            speed=args.speed,
            aspect_ratio=args.aspect_ratio,
            version=args.mj_version,
            file_urls=args.file_urls,
            stylization=args.stylization,
            weirdness=args.weirdness,
            variety=args.variety,
            ow=args.ow,
            water_mark=args.water_mark,
            enable_translation=True if args.translate else None,
            video_batch_size=args.video_batch_size,
            motion=args.motion,
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return request, tuple(steps)


def _note(text: str) -> None:
    say(f"generate: {text}", stream=sys.stderr)


def _generate(args: argparse.Namespace) -> int:
    request, steps = _request(args)
    timeout = args.timeout if args.timeout is not None else midvary.USE_DEFAULT

    async def run() -> int:
        async with open_session(args) as session:
            handle = await session.submit(request)
            _note(f"submitted {handle.task_id}; waiting for the grid")
            try:
                grid = await handle.wait(timeout)
            except midvary.TaskFailedError as exc:
                return _failed_grid(args, exc)
            files = await session.download(grid, args.download) if args.download else ()
            _note(f"grid {grid.task_id} ready: {len(grid.image_urls)} images")
            children = [child_request(grid.task_id, step) for step in steps]
            outcomes = await session.submit_all(
                children, timeout=timeout, download=args.download, on_event=_on_event
            )
        _report(args, grid, files, outcomes)
        return EXIT_OK if all(outcome.ok for outcome in outcomes) else EXIT_FAILED

    return asyncio.run(run())


def _on_event(event: midvary.JobEvent) -> None:
    request = event.request
    what = request.describe() if request is not None else f"job {event.index}"
    if event.kind is midvary.JobEventKind.SUBMITTED:
        _note(f"{what} submitted as {event.task_id}")
    elif event.kind is midvary.JobEventKind.DONE:
        _note(f"{what} done")
    elif event.kind is midvary.JobEventKind.FAILED:
        _note(f"{what} failed: {type(event.error).__name__}: {event.error}")


def _failed_grid(args: argparse.Namespace, exc: midvary.TaskFailedError) -> int:
    if args.json:
        say(
            json.dumps(
                {"grid": {**midvary.to_json_dict(exc.record), "error": midvary.to_json_dict(exc)}}
            )
        )
    else:
        say(f"error: the grid failed: {exc}", stream=sys.stderr)
    return EXIT_FAILED


def _child_json(outcome: midvary.JobOutcome) -> dict[str, Any]:
    request = outcome.request
    return {
        "action": action_of(request),
        "image_index": getattr(request, "image_index", None),
        "task_id": outcome.task_id,
        "status": "done" if outcome.ok else "failed",
        "image_urls": list(outcome.record.image_urls) if outcome.record else [],
        "files": [str(path) for path in outcome.paths],
        "error": midvary.to_json_dict(outcome.error) if outcome.error is not None else None,
    }


def _report(
    args: argparse.Namespace,
    grid: midvary.TaskRecord,
    files: tuple[Path, ...],
    outcomes: Sequence[midvary.JobOutcome],
) -> None:
    children = [_child_json(outcome) for outcome in outcomes]
    if args.json:
        grid_json = {**midvary.to_json_dict(grid), "files": [str(path) for path in files]}
        say(json.dumps({"grid": grid_json, "children": children}))
        return
    say(f"grid     {grid.task_id}")
    for url in grid.image_urls:
        say(f"image    {url}")
    for path in files:
        say(f"file     {path}")
    for child in children:
        say(f"{child['action']:<8} {child['image_index']} -> {child['task_id']} {child['status']}")
        for path in child["files"]:
            say(f"file     {path}")
        if child["error"] is not None:
            say(f"error    {child['error']['type']}: {child['error']['message']}")
