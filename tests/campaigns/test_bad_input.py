"""Campaign 4: arbitrary arguments, answers, JOBS files, fan-out items: documented errors only."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import midvary
from midvary._cli._kit import UsageError
from midvary._cli.jobs import read_jobs
from midvary._converter import structure_record
from midvary.testing import FakeProvider, FakeSettings

from ..conftest import FAST_POLL, FAST_RETRY
from ..mockapi import BASE, KEY, VARY_URL, MockAPI, record, record_url
from .scenarios import POLL

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


#: FAST_RETRY giving up sooner: 3 attempts instead of 8, a maintenance answer (455) waited
#: out for 0.2 s instead of 5. The retry and outage paths run the same (retries, probes, then
#: the error), and many examples are 429s, 5xx or 455s.
SHORT_OUTAGE = attrs.evolve(FAST_RETRY, attempts=3, outage_budget=0.2)


async def answer(body: bytes, status: int) -> tuple[BaseException | None, BaseException | None]:
    """Serve ``body`` to a submission and to a lookup; return what each raised."""
    outcomes: list[BaseException | None] = []
    with MockAPI() as api:
        api.add(VARY_URL, "POST", status=status, body=body, repeat=True)
        api.add(record_url("t1"), "GET", status=status, body=body, repeat=True)
        async with midvary.Session(
            api_key=KEY, base_url=BASE, retry=SHORT_OUTAGE, poll=FAST_POLL
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


# -- JOBS files: every row is a job or a reported bad row, at its own line ------------------


def _is_json(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


FIELDS = ("task_id", "image_index", "water_mark", "id")
#: Every name a JOBS row may have (the other actions' columns too), written out here again.
COLUMNS = (
    *FIELDS,
    "action",
    "then",
    "prompt",
    "task_type",
    "speed",
    "aspect_ratio",
    "version",
    "file_urls",
)
valid_rows = st.fixed_dictionaries(
    {
        "task_id": st.sampled_from(["parent-a", "parent-b", "parent-c"]),
        "image_index": st.integers(0, 3),  # in JSONL a JSON integer only (not "2", not 2.0)
    },
    optional={
        "water_mark": st.text(max_size=8),
        "id": st.text(min_size=1, max_size=6) | st.integers(),
    },
)
# Only known keys: an unknown one refuses the whole file (see test_jobs_file.py).
bad_rows = st.dictionaries(
    st.sampled_from(FIELDS), json_values | anything.filter(_is_json), max_size=5
)
text_line = st.text(max_size=30).filter(lambda t: "\n" not in t)


def _keys(line: str) -> set[str]:
    """The keys of ``line`` if it is a JSON object (else none)."""
    try:
        row = json.loads(line)
    except ValueError:
        return set()
    return set(row) if isinstance(row, dict) else set()


def jsonl_line(value: object, ascii_only: bool) -> str:
    """One JSON line (raw unicode kept when ``ascii_only`` is false)."""
    return json.dumps(value, ensure_ascii=ascii_only)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(
        st.one_of(
            st.builds(jsonl_line, valid_rows, st.booleans()),
            st.builds(jsonl_line, bad_rows, st.booleans()),
            st.builds(jsonl_line, json_values, st.booleans()),
            text_line,
        ),
        max_size=12,
    ),
    crlf=st.booleans(),
)
def test_every_jsonl_line_is_a_job_or_a_bad_row(lines: list[str], crlf: bool) -> None:
    """Any JSONL file: each non-blank line is exactly one job or one bad row, at its line."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "jobs.jsonl"
        path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode())
        keys = set().union(*map(_keys, lines))
        if not keys <= set(COLUMNS):
            with pytest.raises(UsageError, match="unknown key"):
                read_jobs(path)
            return
        assume(keys <= set(FIELDS))  # the other actions' columns make other rows than varies
        if not any(line.strip() for line in lines):
            with pytest.raises(UsageError, match="no jobs in"):
                read_jobs(path)
            return
        read = read_jobs(path)
    reported = [int(bad.split(":")[1]) for bad in read.bad_rows]
    expected = [n for n, line in enumerate(lines, start=1) if line.strip()]
    assert sorted([job.line for job in read.jobs] + reported) == expected
    assert len({job.key for job in read.jobs}) == len(read.jobs)
    for job in read.jobs:
        row = json.loads(lines[job.line - 1])
        assert job.request.task_id == row["task_id"]
        assert job.request.image_index == int(row["image_index"])


cells = st.text(max_size=10) | st.sampled_from(["parent-a", "0", "3", " 1 ", "", "9", '"'])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(st.lists(cells, min_size=0, max_size=6), max_size=12))
def test_every_csv_record_is_a_job_or_a_bad_row(records: list[list[str]]) -> None:
    """Any CSV body (quotes, commas, newlines in cells): no record is dropped or doubled."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(FIELDS)
    writer.writerows(records)
    text = buffer.getvalue()
    # An independent count: the csv module's own records, blank ones aside.
    written = [row for row in csv.reader(io.StringIO(text, newline="")) if row][1:]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "jobs.csv"
        path.write_bytes(text.encode())
        if not written:
            with pytest.raises(UsageError, match="no jobs in"):
                read_jobs(path)
            return
        read = read_jobs(path)
    assert len(read.jobs) + len(read.bad_rows) == len(written)
    for job in read.jobs:
        assert job.request.task_id.strip()
        assert 0 <= job.request.image_index <= 3


# -- fan-out items: anything that is not a request fails alone, before any POST -----------


junk_items = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.builds(dict, task_id=st.just("parent-a"), image_index=st.just(0)),
    st.tuples(st.just("parent-a"), st.just(0)),
    st.binary(max_size=3),
)


async def fan_out(items: list[object]) -> tuple[list[midvary.JobOutcome], int]:
    """Run ``items`` through submit_all against a fake; the outcomes and the POSTs sent."""
    settings_ = FakeSettings(task_duration=(0.0, 0.01), invisible_for=0.0, submit_limit=None)
    async with FakeProvider(settings=settings_) as fake:
        async with midvary.Session(
            api_key=fake.api_key, base_url=fake.base_url, poll=POLL, submit_rate=None
        ) as session:
            outcomes = await session.submit_all(items, concurrency=4)  # type: ignore[arg-type]
        return outcomes, fake.stats.requests["submit"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(
        st.one_of(st.builds(lambda n: ("request", n), st.integers(0, 3)), junk_items),
        max_size=8,
    )
)
def test_fan_out_items_that_are_not_requests_fail_alone(items: list[object]) -> None:
    """Each non-request item is its own TypeError outcome, sent nowhere; the requests succeed."""
    jobs: list[object] = [
        midvary.VaryRequest(task_id=f"parent-{position}", image_index=item[1])
        if isinstance(item, tuple) and item[:1] == ("request",)
        else item
        for position, item in enumerate(items)
    ]
    outcomes, posts = asyncio.run(fan_out(jobs))
    assert [o.index for o in outcomes] == list(range(len(jobs)))
    for job, outcome in zip(jobs, outcomes, strict=True):
        if isinstance(job, midvary.VaryRequest):
            assert outcome.ok, outcome
            assert outcome.request == job
        else:
            assert isinstance(outcome.error, TypeError), outcome
            assert "VaryRequest" in str(outcome.error)
            assert (outcome.request, outcome.task_id) == (None, None)
    assert posts == sum(isinstance(job, midvary.VaryRequest) for job in jobs)
