"""bulk with videos: a video generate row whose ``then`` extends, and ``action=extend`` rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import midvary

from .test_cli import cli, provider, read_results

IMAGE = "https://img.test/in.png"


async def test_a_video_generate_row_then_extends_and_an_extend_row_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """then=extend:0 extends the row's video once it succeeds; an extend row runs too."""
    async with provider(monkeypatch) as fake:
        async with midvary.Session(api_key=fake.api_key, base_url=fake.base_url) as session:
            video = await session.run(
                midvary.GenerateRequest(
                    prompt="waves", task_type="mj_video", file_urls=[IMAGE], video_batch_size=2
                )
            )
        rows = [
            {"action": "generate", "id": "clip", "prompt": "tide", "task_type": "mj_video",
             "file_urls": [IMAGE], "then": "extend:0"},
            {"action": "extend", "id": "more", "task_id": video.task_id, "image_index": 1,
             "prompt": "the wave breaks"},
        ]  # fmt: skip
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_text("".join(json.dumps(row) + "\n" for row in rows))
        code = await cli("bulk", str(jobs), "--download", str(tmp_path / "out"))
        assert code == 0
        results = {line["id"]: line for line in read_results(tmp_path / "jobs.jsonl.results.jsonl")}
        assert sorted(results) == ["clip", "clip/extend0", "more"]
        assert all(line["status"] == "done" for line in results.values())
        clip = results["clip"]["task_id"]
        extends = {key: fake.task(results[key]["task_id"]) for key in results if key != "clip"}
        assert {key: (t.parent_task_id, t.image_index) for key, t in extends.items()} == {
            "clip/extend0": (clip, 0),
            "more": (video.task_id, 1),
        }
        assert extends["more"].task_type == "mj_video_extend_manual"
        assert extends["clip/extend0"].task_type == "mj_video_extend_auto"
        assert results["more"]["action"] == "extend"
        assert results["more"]["prompt"] == "the wave breaks"
        assert all(f.endswith(".mp4") for line in results.values() for f in line["files"])
        assert fake.stats.duplicate_submissions == 0


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"action": "generate", "prompt": "a fox", "then": "extend:0"}, "video generate row"),
        (
            {"action": "generate", "prompt": "w", "task_type": "mj_video",
             "file_urls": [IMAGE], "then": "vary:all"},
            "this row makes videos",
        ),
        ({"action": "extend", "task_id": "t", "image_index": 4}, "0, 1, 2 or 3"),
        ({"action": "extend", "task_id": "t", "image_index": 0, "speed": "fast"}, "speed"),
        ({"action": "vary", "task_id": "t", "image_index": 0, "file_urls": [IMAGE]}, "file_urls"),
    ],
)  # fmt: skip
async def test_bad_video_rows_are_reported_and_nothing_runs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    row: dict[str, object],
    words: str,
) -> None:
    """A row that mixes video and image steps, or a bad extend, is a bad row: no POST."""
    async with provider(monkeypatch) as fake:
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_text(json.dumps(row) + "\n")
        assert await cli("bulk", str(jobs)) != 0
        assert fake.stats.tasks_created == 0
    out, err = capsys.readouterr()
    assert words in out + err
