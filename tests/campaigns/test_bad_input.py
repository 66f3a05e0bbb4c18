"""Campaign 4: arbitrary arguments and arbitrary answers yield only documented errors."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import midvary
from midvary._bulk import read_jobs
from midvary._converter import structure_record

from ..conftest import FAST_POLL, FAST_RETRY
from ..mockapi import BASE, KEY, VARY_URL, MockAPI, record, record_url

EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)


def valid(task_id: Any, index: Any, water_mark: Any, callback_url: Any) -> bool:
    """The documented rule for vary arguments, written independently of the library."""
    if not isinstance(task_id, str) or not task_id or any(c.isspace() for c in task_id):
        return False
    if type(index) is not int or not 0 <= index <= 3:
        return False
    if water_mark is not None and not isinstance(water_mark, str):
        return False
    if callback_url is None:
        return True
    if not isinstance(callback_url, str):
        return False
    parts = urlsplit(callback_url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


async def submit(
    task_id: Any, index: Any, water_mark: Any, callback_url: Any
) -> tuple[BaseException | None, int]:
    """Call vary() against a provider that accepts everything; (error, requests sent)."""
    with MockAPI() as api:
        api.envelope("POST", VARY_URL, data={"taskId": "new"}, repeat=True)
        async with midvary.Session(api_key=KEY, base_url=BASE, retry=FAST_RETRY) as session:
            try:
                await session.vary(task_id, index, water_mark=water_mark, callback_url=callback_url)
            except Exception as exc:
                return exc, api.count()
        return None, api.count()


@EXAMPLES
@given(
    task_id=anything | st.text(min_size=1, max_size=20),
    index=anything | st.integers(min_value=-2, max_value=5),
    water_mark=anything,
    callback_url=anything
    | st.sampled_from(["https://cb.test/x", "http://h/", "ftp://h/", "/rel", "https://"]),
)
def test_vary_arguments_fail_locally_and_send_nothing(
    task_id: Any, index: Any, water_mark: Any, callback_url: Any
) -> None:
    """Invalid vary() arguments raise ValueError/TypeError with 0 requests; valid ones submit."""
    error, sent = asyncio.run(submit(task_id, index, water_mark, callback_url))
    if error is None:
        assert valid(task_id, index, water_mark, callback_url)
        assert sent == 1
    else:
        assert isinstance(error, ValueError | TypeError), repr(error)
        assert sent == 0
        assert str(error)


@EXAMPLES
@given(data=json_values)
def test_random_record_data_is_a_record_or_a_protocol_error(data: Any) -> None:
    """Any JSON as record-info data structures into a TaskRecord or raises ProtocolError."""
    with contextlib.suppress(midvary.ProtocolError):
        assert isinstance(structure_record(data), midvary.TaskRecord)


@EXAMPLES
@given(
    base=st.sampled_from([0, 1, 2, 3, 7]),
    field=st.sampled_from(sorted(record())),
    value=json_values,
)
def test_records_with_one_wrong_field(base: int, field: str, value: Any) -> None:
    """A real record with one field replaced by arbitrary JSON never escapes as a raw error."""
    data = record(flag=base)
    data[field] = value
    with contextlib.suppress(midvary.ProtocolError):
        assert isinstance(structure_record(data), midvary.TaskRecord)


async def answer(body: bytes, status: int) -> tuple[BaseException | None, BaseException | None]:
    """Serve ``body`` to a submission and to a lookup; return what each raised."""
    outcomes: list[BaseException | None] = []
    with MockAPI() as api:
        api.add(VARY_URL, "POST", status=status, body=body, repeat=True)
        api.add(record_url("t1"), "GET", status=status, body=body, repeat=True)
        async with midvary.Session(
            api_key=KEY, base_url=BASE, retry=FAST_RETRY, poll=FAST_POLL
        ) as session:
            for call in (session.vary("parent-1", 0), session.get_task("t1")):
                try:
                    await call
                except Exception as exc:
                    outcomes.append(exc)
                else:
                    outcomes.append(None)
    return outcomes[0], outcomes[1]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.builds(
            lambda code, msg, data: json.dumps({"code": code, "msg": msg, "data": data}).encode(),
            json_values,
            json_values,
            json_values,
        ),
        st.binary(max_size=40),
    ),
    status=st.sampled_from([200, 200, 201, 302, 400, 404, 429, 455, 500, 502, 503]),
)
def test_random_answers_become_midvary_errors(body: bytes, status: int) -> None:
    """Whatever body and status the provider sends, only midvary errors come out."""
    submit_error, lookup_error = asyncio.run(answer(body, status))
    for error in (submit_error, lookup_error):
        assert error is None or isinstance(error, midvary.MidvaryError), repr(error)


def test_an_unreadable_csv_row_does_not_hide_the_rows_after_it(tmp_path: Path) -> None:
    """A CSV row the csv module refuses is reported at its own line; later rows still run."""
    jobs = tmp_path / "jobs.csv"
    huge = "x" * (csv.field_size_limit() + 1)
    jobs.write_text(
        "task_id,image_index,water_mark,id\n"
        f'parent-a,0,,a\nparent-b,1,"{huge}",b\nparent-c,2,,c\nparent-d,3,,d\n'
    )
    read = read_jobs(jobs)
    assert [job.key for job in read.jobs] == ["a", "c", "d"]
    assert [job.line for job in read.jobs] == [2, 4, 5]
    (bad,) = read.bad_rows
    assert bad.startswith(f"{jobs}:3: ")
    assert "field larger than field limit" in bad


def test_jsonl_rows_split_only_at_newlines(tmp_path: Path) -> None:
    """Valid JSON lines holding U+2028 or U+0085 in a string are single rows, at their lines."""
    jobs = tmp_path / "jobs.jsonl"
    rows = [
        {"task_id": "parent-a", "image_index": 0, "water_mark": "a\u2028b"},
        {"task_id": "parent-b", "image_index": 1, "water_mark": "x\x85y"},
        {"task_id": "parent-c", "image_index": 2},
    ]
    jobs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows))
    read = read_jobs(jobs)
    assert read.bad_rows == ()
    assert [(job.line, job.request.water_mark) for job in read.jobs] == [
        (1, "a\u2028b"),
        (2, "x\x85y"),
        (3, None),
    ]
