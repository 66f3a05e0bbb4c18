"""``midvary generate``: a grid, then its chosen children, downloaded, against the fake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_cli import cli, is_png, provider


async def test_generate_varies_and_upscales_the_chosen_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The grid, its varied images 0 and 2 and its upscaled image 1 are all downloaded."""
    async with provider(monkeypatch) as fake:
        code = await cli(
            "generate", "a red fox", "--aspect-ratio", "3:2", "--vary", "0,2", "--upscale", "1",
            "--download", str(tmp_path), "--json",
        )  # fmt: skip
        assert fake.stats.tasks_by_endpoint == {"generate": 1, "submit": 2, "upscale": 1}
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    grid = out["grid"]
    assert grid["task_type"] == "mj_txt2img"
    assert len(grid["files"]) == 4
    children = out["children"]
    assert [(c["action"], c["image_index"], c["status"]) for c in children] == [
        ("vary", 0, "done"),
        ("vary", 2, "done"),
        ("upscale", 1, "done"),
    ]
    assert [len(c["files"]) for c in children] == [4, 4, 1]
    files = [Path(f) for c in [grid, *children] for f in c["files"]]
    assert all(is_png(path) for path in files)
    assert all(fake.task(c["task_id"]).parent_task_id == grid["task_id"] for c in children)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--vary", "4"], "--vary takes 'all' or image indexes 0..3"),
        (["--upscale", "one"], "--upscale takes 'all'"),
        (["--variety", "7"], "variety must be an int from 0 to 100 in steps of 5"),
        (["--task-type", "mj_video"], "file_urls is required"),
        (["--aspect-ratio", "4:5"], "aspect_ratio must be one of"),
        # The values the options once listed themselves: GenerateRequest's words now.
        (["--speed", "warp"], "speed must be one of 'relaxed', 'fast', 'turbo'"),
        (["--task-type", "mj_sketch"], "task_type must be one of 'mj_txt2img', 'mj_img2img'"),
        (["--video-batch-size", "3"], "video_batch_size must be one of"),
        (["--motion", "fast"], "motion must be one of 'high', 'low'"),
        (["--stylization", "5000"], "stylization must be an int from 0 to 1000"),
    ],
)
async def test_bad_options_exit_2_and_send_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    words: str,
) -> None:
    """A bad option is a usage error that says what is allowed; no request is sent."""
    async with provider(monkeypatch) as fake:
        code = await cli("generate", "a fox", *argv)
        assert sum(fake.stats.requests.values()) == 0
    assert code == 2
    assert words in capsys.readouterr().err


async def test_a_failed_grid_exits_1_and_has_no_children(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the grid fails, nothing is varied and the exit code is 1."""
    async with provider(monkeypatch, failure_rate=1.0) as fake:
        code = await cli("generate", "a fox", "--vary", "all")
        assert fake.stats.tasks_by_endpoint == {"generate": 1}
    assert code == 1
    assert "the grid failed" in capsys.readouterr().err
