"""The converter: both time formats, JSON-in-a-string fields, tolerance, strictness."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

import pytest

import midvary
from midvary._converter import structure_record
from midvary.testing._state import SubmitParams, SuccessFlag, Task, TimeStyle
from midvary.testing._wire import parent_record_data, record_data

from .mockapi import record


def test_iso_and_epoch_ms_times_parse_to_aware_datetimes() -> None:
    """ISO strings (Z, offset, naive, space) and epoch milliseconds all parse as UTC-aware."""
    expected = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)
    for value in (
        "2026-11-21T10:00:00Z",
        "2026-11-21T10:00:00.000Z",
        "2026-11-21T11:00:00+01:00",
        "2026-11-21T10:00:00",
        "2026-11-21 10:00:00",
        int(expected.timestamp() * 1000),
        str(int(expected.timestamp() * 1000)),
        int(expected.timestamp()),
    ):
        parsed = structure_record(record(createTime=value)).created_at
        assert parsed == expected, value
        assert parsed is not None
        assert parsed.tzinfo is not None


def test_missing_complete_time_is_none() -> None:
    """A null or empty completeTime means None, not an error."""
    assert structure_record(record(completeTime=None)).completed_at is None
    assert structure_record(record(completeTime="")).completed_at is None


def test_result_info_as_string_parses() -> None:
    """ResultInfoJson sent as a JSON string yields the same URLs as the object form."""
    as_object = structure_record(record(flag=1))
    as_string = structure_record(
        record(
            flag=1,
            resultInfoJson=json.dumps(
                {"resultUrls": [{"resultUrl": u} for u in as_object.image_urls]}
            ),
        )
    )
    assert as_string.image_urls == as_object.image_urls
    assert len(as_string.image_urls) == 4


def test_param_json_is_decoded() -> None:
    """ParamJson (a JSON string) becomes a mapping."""
    assert structure_record(record()).params == {"taskId": "parent", "imageIndex": 0}


def test_malformed_param_json_does_not_hide_a_result() -> None:
    """A broken paramJson echo leaves params empty instead of failing the record."""
    result = structure_record(record(flag=1, paramJson="{not json"))
    assert result.params == {}
    assert result.status is midvary.TaskStatus.SUCCESS


def test_unknown_fields_are_tolerated() -> None:
    """Keys the provider adds later do not break structuring."""
    assert structure_record(record(brandNew={"x": 1})).task_id == "t1"


def test_undocumented_success_flag_is_unknown_not_final() -> None:
    """A successFlag outside 0..3 becomes UNKNOWN, which is not final."""
    result = structure_record(record(flag=7))
    assert result.status is midvary.TaskStatus.UNKNOWN
    assert not result.is_final


@pytest.mark.parametrize(
    ("flag", "status"),
    [
        ("1", midvary.TaskStatus.SUCCESS),
        (" 3 ", midvary.TaskStatus.GENERATE_FAILED),
        ("SUCCESS", midvary.TaskStatus.SUCCESS),
        ("success", midvary.TaskStatus.SUCCESS),
        ("PENDING", midvary.TaskStatus.GENERATING),
        ("CREATE_TASK_FAILED", midvary.TaskStatus.CREATE_FAILED),
        ("GENERATE_FAILED", midvary.TaskStatus.GENERATE_FAILED),
        ("generate-audio-failed", midvary.TaskStatus.GENERATE_FAILED),
        ("SOMETHING_NEW", midvary.TaskStatus.UNKNOWN),
        ("yes", midvary.TaskStatus.UNKNOWN),
    ],
)
def test_success_flag_as_a_string_is_decoded(flag: str, status: midvary.TaskStatus) -> None:
    """A numeric string or a status word is its status; an unknown word is UNKNOWN, no error."""
    found = structure_record(record(flag=1) | {"successFlag": flag})
    assert found.status is status
    assert len(found.image_urls) == 4  # the result is kept whatever the flag's spelling


@pytest.mark.parametrize("flag", [4, "4", "CALLBACK_EXCEPTION"])
def test_flag_4_with_result_urls_is_a_success(flag: object) -> None:
    """Flag 4 ("succeeded, callback failed") with URLs is SUCCESS; without URLs not final."""
    with_urls = structure_record(record(flag=1) | {"successFlag": flag})
    assert with_urls.status is midvary.TaskStatus.SUCCESS
    assert len(with_urls.image_urls) == 4
    without = structure_record(record(flag=0) | {"successFlag": flag})
    assert without.status is midvary.TaskStatus.UNKNOWN
    assert not without.is_final


def test_epoch_times_out_of_range_are_protocol_errors() -> None:
    """An epoch beyond what a datetime holds is a ProtocolError, not an OverflowError."""
    for value in (10**20, -(10**20), 253402300800000):
        with pytest.raises(midvary.ProtocolError, match="out of range"):
            structure_record(record(completeTime=value))


def test_failure_fields() -> None:
    """ErrorCode and errorMessage come through; a numeric string code is an int."""
    result = structure_record(record(flag=3, errorCode="501"))
    assert result.error_code == 501
    assert result.error_message == "generation failed"
    assert result.status.is_failure


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "text",
        {"successFlag": 1},
        {"taskId": "t1"},
        {"taskId": 5, "successFlag": 1},
        record(successFlag=[1]),
        record(successFlag=True),
        record(successFlag=1.0),
        record(createTime="yesterday"),
        record(createTime=[1]),
        record(flag=1, resultInfoJson="{broken"),
        record(flag=1, resultInfoJson={"resultUrls": "nope"}),
        record(flag=1, resultInfoJson={"resultUrls": [{"resultUrl": 3}]}),
        record(errorCode="E1"),
    ],
)
def test_malformed_records_are_protocol_errors(data: object) -> None:
    """Wrong types or missing essentials raise ProtocolError, never KeyError/TypeError."""
    with pytest.raises(midvary.ProtocolError):
        structure_record(data)


def test_records_are_frozen() -> None:
    """A TaskRecord cannot be mutated in place."""
    result = structure_record(record())
    with pytest.raises(AttributeError):
        result.task_id = "x"  # type: ignore[misc]


def _fake_bodies(*, as_string: bool) -> list[dict[str, Any]]:
    """The fake provider's record-info data: every outcome and time style."""
    params = SubmitParams(
        kind="vary",
        task_type="mj_vary",
        parent_task_id="parent",
        image_index=2,
        water_mark=None,
        callback_url=None,
        param_json=json.dumps({"taskId": "parent", "imageIndex": 2}),
        identity=("vary", "parent", 2),
    )
    bodies = []
    styles: tuple[TimeStyle, ...] = ("iso_z", "iso_offset", "epoch_ms")
    for style in styles:
        bodies.append(
            parent_record_data(
                "parent-x",
                epoch=1.7e9,
                style=style,
                results_base="http://fake.test",
                result_info_as_string=as_string,
            )
        )
        for outcome, now in itertools.product(SuccessFlag, (5.0, 50.0)):
            task = Task(
                task_id=f"fakevary-{outcome.value}",
                params=params,
                created_at=1.0,
                visible_at=1.0,
                finished_at=30.0,
                outcome=outcome,
                time_style=style,
                image_count=4,
            )
            bodies.append(
                record_data(
                    task,
                    now,
                    wall=lambda reading: 1.7e9 + reading,
                    results_base="http://fake.test",
                    result_info_as_string=as_string,
                )
            )
    return bodies


_WIRE_BODIES = [
    *(record(flag=flag) for flag in (0, 1, 2, 3, 7, -1)),
    record(createTime="2026-11-21T10:00:00Z"),
    record(createTime="2026-11-21T11:00:00+01:00"),
    record(createTime="2026-11-21 10:00:00"),
    record(createTime=1763719200000),
    record(createTime="1763719200000"),
    record(createTime=1763719200),
    record(completeTime=""),
    record(flag=1, resultInfoJson='{"resultUrls": [{"resultUrl": "https://cdn.test/a.png"}]}'),
    record(flag=1, resultInfoJson={"resultUrls": []}),
    record(flag=1, resultInfoJson={}),
    record(flag=1, paramJson="{not json"),
    record(paramJson='{"a": 1} trailing'),
    record(paramJson="[1, 2]"),
    record(paramJson=""),
    record(paramJson={"taskId": "parent"}),
    record(paramJson=None),
    record(brandNew={"x": 1}),
    record(flag=3, errorCode="501"),
    record(taskType=5),
    record(errorMessage=404),
    record(successFlag="1"),
    {"taskId": "t1", "successFlag": 1},
]


@pytest.mark.parametrize(
    "data", [*_fake_bodies(as_string=False), *_fake_bodies(as_string=True), *_WIRE_BODIES]
)
def test_every_wire_shape_structures_to_its_task(data: dict[str, Any]) -> None:
    """Each shape the provider (and the fake) sends becomes a record of the task it names."""
    parsed = structure_record(data)
    assert parsed.task_id == data["taskId"]
    assert parsed.status.value == int(data["successFlag"]) or (
        parsed.status is midvary.TaskStatus.UNKNOWN
    )
    assert isinstance(parsed.params, dict)
    assert all(url.startswith("http") for url in parsed.image_urls)


@pytest.mark.parametrize(
    "data",
    [
        record(successFlag=[1]),
        record(createTime="yesterday"),
        record(flag=1, resultInfoJson={"resultUrls": [{"resultUrl": 3}]}),
        record(flag=1, resultInfoJson={"resultUrls": [{"resultUrl": ""}]}),
        record(errorCode="E1"),
        record(errorCode=True),
    ],
)
def test_unusable_fields_are_protocol_errors(data: dict[str, Any]) -> None:
    """A field that cannot be read is a ProtocolError, never a raw cattrs or Python error."""
    with pytest.raises(midvary.ProtocolError):
        structure_record(data)
