"""Which image is which: TaskRecord.parent_task_id / image_index, and to_json_dict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import midvary
from midvary._converter import structure_record

from .test_cli import cli, provider


def record(task_type: str | None, params: object) -> midvary.TaskRecord:
    """A record-info record with this taskType and paramJson."""
    data = {"taskId": "t1", "successFlag": 1, "paramJson": json.dumps(params)}
    if task_type is not None:
        data["taskType"] = task_type
    return structure_record(data)


@pytest.mark.parametrize("task_type", ["mj_vary", "mj_upscale", None, "something_new"])
def test_vary_and_upscale_records_name_their_parent_and_image(task_type: str | None) -> None:
    """ParamJson's taskId and imageIndex become typed fields, whatever the taskType."""
    found = record(task_type, {"taskId": "parent-9", "imageIndex": 2, "waterMark": "w"})
    assert (found.parent_task_id, found.image_index) == ("parent-9", 2)


def test_a_generate_record_has_no_parent() -> None:
    """A generate's paramJson names no parent: both fields are None."""
    found = record("mj_txt2img", {"prompt": "a cat", "taskType": "mj_txt2img"})
    assert (found.parent_task_id, found.image_index) == (None, None)
    assert (record(None, "not an object").parent_task_id, record(None, {}).image_index) == (
        None,
        None,
    )


def test_to_json_dict_of_a_record_an_outcome_and_an_error() -> None:
    """to_json_dict: a record, an outcome and an error, all json.dumps-able."""
    found = record("mj_vary", {"taskId": "parent-9", "imageIndex": 1})
    data = midvary.to_json_dict(found)
    assert data["parent_task_id"] == "parent-9"
    assert data["image_index"] == 1
    assert data["status"] == "SUCCESS"
    request = midvary.VaryRequest(task_id="parent-9", image_index=1, id="job-1")
    outcome = midvary.JobOutcome(index=0, request=request, task_id="t1", record=found)
    out = midvary.to_json_dict(outcome)
    assert (out["id"], out["ok"], out["record"]) == ("job-1", True, data)
    assert midvary.to_json_dict(ValueError("bad")) == {"type": "ValueError", "message": "bad"}
    json.dumps(out)
    with pytest.raises(TypeError):
        midvary.to_json_dict(object())  # type: ignore[arg-type]


async def test_cli_json_shows_parent_and_image_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`midvary vary --json` prints the vary's parent_task_id and image_index."""
    async with provider(monkeypatch):
        assert await cli("vary", "parent-3", "2", "--json") == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (printed["parent_task_id"], printed["image_index"]) == ("parent-3", 2)
