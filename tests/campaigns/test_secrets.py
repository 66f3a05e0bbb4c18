"""Campaign 5: the API key never leaves the API host, and never shows in any text or file.

Every path runs with the root logger (aiohttp's and asyncio's loggers included) at DEBUG and
a recognisable key. Each test gathers what a user or an operator could ever see: log lines
with their tracebacks, reprs, exception messages with their ``__cause__`` / ``__context__``
chains (str, repr and attributes), CLI output, and every file written; none may hold the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web

import midvary
from midvary._cli import main
from midvary.testing import FakeProvider, FakeSettings, SuccessFlag

from ..conditions import until
from ..conftest import FAST_RETRY
from .scenarios import POLL, requests

#: A key nobody could mistake for anything else, and another one the provider refuses.
KEY = f"sk-midvary-CANARY-{secrets.token_hex(8)}"
WRONG_KEY = f"sk-midvary-WRONG-CANARY-{secrets.token_hex(8)}"
ONE_TRY = midvary.RetryPolicy(attempts=1, outage_budget=0.0)
FAST_FAKE = FakeSettings(task_duration=(0.02, 0.1), invisible_for=0.01, submit_limit=None)


class Evidence:
    """Everything a user or an operator could see, gathered as text; none may hold a key."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.records: list[logging.LogRecord] = []
        self._formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def text(self, *texts: object) -> None:
        """Keep ``texts`` (their str)."""
        self.texts.extend(str(text) for text in texts)

    def reprs(self, *objects: object) -> None:
        """Keep the repr and str of ``objects``."""
        for obj in objects:
            self.texts += [repr(obj), str(obj)]

    def error(self, exc: BaseException) -> None:
        """Keep an exception's traceback and the str, repr and attributes of its chain."""
        self.text("".join(traceback.format_exception(exc)))
        seen: set[int] = set()
        todo: list[BaseException | None] = [exc]
        while todo:
            current = todo.pop()
            if current is None or id(current) in seen:
                continue
            seen.add(id(current))
            self.reprs(current)
            self.text(repr(getattr(current, "__dict__", {})), repr(current.args))
            todo += [current.__cause__, current.__context__]

    def files(self, root: Path) -> None:
        """Keep the bytes of every file under ``root`` (journal, its WAL, results, images)."""
        for path in root.rglob("*"):
            if path.is_file():
                self.texts.append(path.read_bytes().decode("latin-1"))

    def assert_clean(self, *keys: str) -> None:
        """No text gathered, and no log line recorded, holds any of ``keys``."""
        assert self.records, "DEBUG logging recorded nothing: the capture is broken"
        for record in self.records:
            line = self._formatter.format(record)
            for key in keys:
                assert key not in line, line
        for text in self.texts:
            for key in keys:
                assert key not in text, text


class _Recorder(logging.Handler):
    def __init__(self, evidence: Evidence) -> None:
        super().__init__(logging.DEBUG)
        self._evidence = evidence

    def emit(self, record: logging.LogRecord) -> None:
        self._evidence.records.append(record)


@pytest.fixture
def evidence() -> Iterator[Evidence]:
    """Root logger at DEBUG, every library logger let through, and the CLI's logging undone."""
    gathered = Evidence()
    root = logging.getLogger()
    recorder = _Recorder(gathered)
    names = ("midvary", "aiohttp", "aiohttp.client", "aiohttp.server", "aiohttp.web", "asyncio")
    saved = {
        name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers))
        for name in names
    }
    root_level = root.level
    root.addHandler(recorder)
    root.setLevel(logging.DEBUG)
    for name in names:
        logging.getLogger(name).setLevel(logging.NOTSET)
    try:
        yield gathered
    finally:
        root.removeHandler(recorder)
        root.setLevel(root_level)
        for name, (level, handlers) in saved.items():
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).handlers[:] = handlers


async def raises(evidence: Evidence, call: Awaitable[Any]) -> BaseException:
    """Await ``call``, which must raise; keep the error's chain as evidence."""
    try:
        await call
    except Exception as exc:
        evidence.error(exc)
        return exc
    raise AssertionError(f"{call!r} did not raise")


@contextlib.asynccontextmanager
async def fake_with_key(**settings: Any) -> AsyncIterator[FakeProvider]:
    """A fake provider that accepts KEY."""
    async with FakeProvider(
        settings=attrs.evolve(FAST_FAKE, **settings), api_key=KEY, seed=21
    ) as fake:
        yield fake


def session_for(fake_or_url: FakeProvider | str, **options: Any) -> midvary.Session:
    """A fast session with KEY (or ``api_key``) against a fake or a base URL."""
    base_url = fake_or_url if isinstance(fake_or_url, str) else fake_or_url.base_url
    options = {"api_key": KEY, "poll": POLL, "retry": FAST_RETRY, "submit_rate": None, **options}
    return midvary.Session(base_url=base_url, **options)


def assert_result_host_never_got_the_key(fake: FakeProvider) -> None:
    """The result CDN received requests, none of them with the key or any Authorization."""
    assert fake.result_request_headers
    for headers in fake.result_request_headers:
        assert "Authorization" not in headers
        assert not any(KEY in value for value in headers.values())


async def test_library_paths_never_show_the_key(evidence: Evidence, tmp_path: Path) -> None:
    """Success, every error the fake can make, uncertain submits, fan-out, downloads: no key."""
    async with fake_with_key() as fake:
        async with session_for(fake) as session:
            evidence.reprs(session)
            handle = await session.vary("parent-1", 0, water_mark="wm")
            record = await handle
            evidence.reprs(
                handle, record, await handle.refresh(), await session.get_task(handle.task_id)
            )
            evidence.reprs(await session.download(record, tmp_path / "one"))
            # Refused: unknown parent (422), unknown task (422 "recordInfo is null").
            await raises(evidence, session.vary("unknown-parent", 1))
            await raises(evidence, session.get_task("no-such-task"))
            # Uncertain: the answer is lost, faulted (each kind), or a 500.
            fake.update(drop_submit_answer_rate=1.0)
            await raises(evidence, session.vary("parent-2", 0))
            fake.update(drop_submit_answer_rate=0.0, fault_rate=1.0, fault_endpoints=["submit"])
            for index in range(4):
                await raises(evidence, session.vary("parent-3", index))
            fake.update(fault_rate=0.0)
            # A task that fails, and a wait that times out.
            fake.update(failure_rate=1.0)
            failed = await session.vary("parent-4", 0)
            await raises(evidence, failed.wait())
            fake.update(failure_rate=0.0, task_duration=(5.0, 5.0))
            slow = await session.vary("parent-4", 1)
            await raises(evidence, slow.wait(timeout=0.05))
            fake.update(task_duration=FAST_FAKE.task_duration)
        # After the close: a wait, a submission.
        await raises(evidence, slow.wait())
        await raises(evidence, session.vary("parent-4", 2))

        # 400 (a 1-based wire index the fake does not take), 404, 402, 429, 455.
        fake.update(not_found_style="404")
        async with session_for(fake, index_base=1, retry=ONE_TRY) as session:
            await raises(evidence, session.vary("parent-5", 3))
            await raises(evidence, session.get_task("no-such-task"))
            fake.update(credits=0)
            await raises(evidence, session.vary("parent-5", 0))
            fake.update(credits=None, submit_limit=(1, 60.0))
            await session.vary("parent-5", 1)
            await raises(evidence, session.vary("parent-5", 2))
            fake.update(submit_limit=None, maintenance=[(0.0, 1e9)])
            await raises(evidence, session.vary("parent-6", 0))
            await raises(evidence, session.get_task("no-such-task"))
            fake.update(maintenance=[])
        # 401, with a key that is just as secret.
        async with session_for(fake, api_key=WRONG_KEY) as session:
            await raises(evidence, session.vary("parent-7", 0))
            await raises(evidence, session.get_task("no-such-task"))
        assert_result_host_never_got_the_key(fake)
    evidence.files(tmp_path)
    evidence.assert_clean(KEY, WRONG_KEY)


async def test_fan_out_with_every_kind_of_trouble_never_shows_the_key(
    evidence: Evidence, tmp_path: Path
) -> None:
    """A fan-out with faults, lost answers, failures, downloads and a failing hook: no key."""
    events: list[midvary.JobEvent] = []

    def hook(event: midvary.JobEvent) -> None:
        events.append(event)
        if event.kind is midvary.JobEventKind.DONE and event.index == 0:
            raise RuntimeError("a hook that fails after the job (logged with its traceback)")

    async with fake_with_key(
        fault_rate=0.3, drop_submit_answer_rate=0.1, failure_rate=0.2, submit_limit=(4, 0.05)
    ) as fake:
        async with session_for(fake, submit_rate=(8, 0.05)) as session:
            fanout = session.submit_many(
                [*requests(24), "not a request"],  # type: ignore[list-item]
                concurrency=8,
                on_event=hook,
                download=tmp_path / "images",
            )
            evidence.reprs(fanout)
            async with fanout:
                outcomes = [outcome async for outcome in fanout]
            evidence.reprs(fanout, *outcomes, *events, *fanout.unfinished)
            for outcome in outcomes:
                if outcome.error is not None:
                    evidence.error(outcome.error)
            assert {o.uncertain for o in outcomes} == {True, False}
            assert any(isinstance(o.error, midvary.TaskFailedError) for o in outcomes)
            # A fan-out cut short by the session's close.
            cut = session.submit_many(requests(8, prefix="parent-cut-"), concurrency=4)
            first = await anext(cut)
            evidence.reprs(first)
        evidence.reprs(cut, *cut.unfinished)
        assert_result_host_never_got_the_key(fake)
    evidence.files(tmp_path)
    evidence.assert_clean(KEY)


async def test_callback_receiver_paths_never_show_the_key(evidence: Evidence) -> None:
    """Callbacks delivered, forged and unknown, through a receiver: no key anywhere."""
    async with fake_with_key(callback_duplicates=2) as fake, midvary.CallbackReceiver() as receiver:
        await receiver.start("127.0.0.1", 0)
        evidence.reprs(receiver)
        async with session_for(fake, callbacks=receiver) as session:
            handles = [await session.vary("parent-cb", index) for index in range(3)]
            records = await asyncio.gather(*handles)
            evidence.reprs(*handles, *records)
            assert (await receiver.handle(b"{}", {}, f"{receiver.path}/forged-token")) == 404
            await fake.settle_callbacks()
        evidence.reprs(receiver)
        assert fake.stats.callbacks_delivered >= 3
    evidence.assert_clean(KEY)


# -- a hostile provider: it echoes the Authorization header it got into every answer -------


Answer = Callable[[str], bytes]


def _http(status: str, body: str, *, extra: str = "", ctype: str = "application/json") -> bytes:
    data = body.encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
        f"Connection: close\r\n{extra}\r\n"
    )
    return head.encode() + data


def hostile_answers(elsewhere: str) -> dict[str, Answer]:
    """Answers that each echo the Authorization header (``auth``) somewhere."""
    answers: dict[str, Answer] = {}
    for code in (400, 401, 402, 404, 422, 429, 455, 500, 501, 505, 599):
        answers[f"code {code} in HTTP 200"] = lambda auth, c=code: _http(
            "200 OK", json.dumps({"code": c, "msg": f"rejected {auth}", "data": None})
        )
        answers[f"code {code} mirrored"] = lambda auth, c=code: _http(
            f"{c} Error", json.dumps({"code": c, "msg": f"key {auth} refused", "data": {"k": auth}})
        )
    answers["HTML 502"] = lambda auth: _http(
        "502 Bad Gateway", f"<html><body>{auth}</body></html>", ctype="text/html"
    )
    answers["bare 429"] = lambda auth: _http(
        "429 Too Many", f"slow down {auth}", ctype="text/plain"
    )
    answers["not an envelope"] = lambda auth: _http("200 OK", json.dumps({"echo": auth}))
    answers["truncated"] = lambda auth: _http("200 OK", json.dumps({"msg": auth})[:-3])
    answers["code not an int"] = lambda auth: _http("200 OK", json.dumps({"code": auth}))
    answers["redirect elsewhere"] = lambda auth: _http(
        "302 Found", "", extra=f"Location: {elsewhere}/steal?k={auth}\r\n"
    )
    answers["malformed status line"] = lambda _auth: b"HTTP/1.1 abc\r\nContent-Length: 0\r\n\r\n"
    answers["malformed header"] = lambda _auth: b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"
    answers["reset"] = lambda _auth: b""
    return answers


def _echo(answer: Answer, headers: dict[str, str]) -> bytes:
    return answer(headers.get("authorization", ""))


@contextlib.asynccontextmanager
async def raw_server(answer: Callable[[dict[str, str]], bytes]) -> AsyncIterator[str]:
    """A loopback HTTP/1.1 server that answers each request with ``answer(headers)`` raw bytes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines) if k
            }
            await reader.readexactly(int(headers.get("content-length", "0")))
            writer.write(answer(headers))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_provider_that_echoes_the_key_cannot_make_midvary_show_it(
    evidence: Evidence,
) -> None:
    """Every answer echoing the Authorization header, to a POST and a GET: never shown."""
    elsewhere_hits: list[dict[str, str]] = []
    async with raw_server(lambda headers: elsewhere_hits.append(headers) or b"") as elsewhere:
        for name, answer in hostile_answers(elsewhere).items():
            echo = functools.partial(_echo, answer)
            async with raw_server(echo) as url, session_for(url, retry=ONE_TRY) as session:
                for call in (session.vary("parent-1", 0), session.get_task("task-1")):
                    error = await raises(evidence, call)
                    assert isinstance(error, midvary.MidvaryError), (name, error)
    assert elsewhere_hits == []  # a redirect is never followed
    evidence.assert_clean(KEY)


# -- a hostile provider: it echoes the key into the texts of a failed task's record --------

#: Where the record's JSON holds the key written with \\u escapes (no plain-text match).
_ESCAPED = "ESCAPED-KEY-HERE"


@contextlib.asynccontextmanager
async def echoing_provider() -> AsyncIterator[str]:
    """An aiohttp app that accepts every submission and fails it, echoing the key in its record."""

    async def submit(_request: web.Request) -> web.Response:
        return web.json_response({"code": 200, "msg": "success", "data": {"taskId": "t-echo"}})

    async def record(request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        params = {"taskId": "parent-1", "imageIndex": 0, "echo": key, "list": [key]}
        data = {
            "taskId": request.query["taskId"],
            "taskType": f"mj_vary {key}",
            "successFlag": 3,
            "errorCode": 500,
            "errorMessage": f"invalid api key {key} / {_ESCAPED}",
            "paramJson": json.dumps(params),
            "createTime": "2026-01-01T00:00:00Z",
        }
        text = json.dumps({"code": 200, "msg": "success", "data": data})
        escaped = "".join(f"\\u{ord(char):04x}" for char in key)
        return web.Response(text=text.replace(_ESCAPED, escaped), content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/v1/mj/generateVary", submit)
    app.router.add_get("/api/v1/mj/record-info", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site.port}"
    finally:
        await runner.cleanup()


async def test_a_key_echoed_in_a_records_texts_is_masked_everywhere(
    evidence: Evidence,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """errorMessage, taskType, paramJson echo the key: not in the error, JSON, results, gallery."""
    async with echoing_provider() as url:
        async with session_for(url) as session:
            handle = await session.vary("parent-1", 0)
            error = await raises(evidence, handle)
            assert isinstance(error, midvary.TaskFailedError)
            assert "invalid api key *** / ***" in str(error)
            evidence.reprs(error.record)
            evidence.text(json.dumps(midvary.to_json_dict(error.record)))
            evidence.text(json.dumps(midvary.to_json_dict(error)))
            record = await session.get_task(handle.task_id)
            assert record.error_message == "invalid api key *** / ***"
            assert record.params["echo"] == "***"
            evidence.reprs(record, record.params)
        monkeypatch.setenv("MIDVARY_API_KEY", KEY)
        monkeypatch.delenv("KIE_API_KEY", raising=False)
        monkeypatch.setenv("MIDVARY_BASE_URL", url)
        monkeypatch.setenv("CI", "true")
        jobs = tmp_path / "jobs.csv"
        jobs.write_text("task_id,image_index\nparent-1,0\n")
        assert await cli(capsys, evidence, "bulk", str(jobs), "--gallery", "-vv") == 1
    results = (tmp_path / "jobs.csv.results.jsonl").read_text()
    assert "***" in results
    assert "invalid api key ***" in (tmp_path / "jobs.csv.results.html").read_text()
    evidence.files(tmp_path)
    evidence.assert_clean(KEY)


# -- the command line -----------------------------------------------------------------------


async def cli(capsys: pytest.CaptureFixture[str], evidence: Evidence, *argv: str) -> int:
    """Run ``main(argv)`` in a worker thread; keep what it printed."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    evidence.text(out, err)
    return code


async def test_cli_paths_never_show_the_key(
    evidence: Evidence,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """vary, status, wait, bulk (journal, results, downloads, resume) at -vv: no key."""
    monkeypatch.setenv("MIDVARY_API_KEY", KEY)
    monkeypatch.delenv("KIE_API_KEY", raising=False)
    monkeypatch.setenv("CI", "true")
    async with fake_with_key(task_duration=(0.1, 0.3), invisible_for=0.05) as fake:
        monkeypatch.setenv("MIDVARY_BASE_URL", fake.base_url)
        assert await cli(capsys, evidence, "-vv", "vary", "parent-1", "0", "--no-wait") == 0
        task_id = list(fake.tasks)[-1]
        # Finished before `wait` polls (a re-attached handle polls at once), to keep it quick.
        await until(lambda: fake.task(task_id).success_flag is SuccessFlag.SUCCESS)
        assert (
            await cli(capsys, evidence, "wait", task_id, "-vv", "--download", str(tmp_path / "w"))
            == 0
        )
        assert await cli(capsys, evidence, "status", task_id, "--json", "-vv") == 0
        # Not visible: a new task, or none; `status` says so (exit 0, see test_cli_newcomer).
        assert await cli(capsys, evidence, "-vv", "status", "no-such-task") == 0
        assert await cli(capsys, evidence, "-vv", "vary", "unknown-parent", "0") == 1
        # The key on the command line, and a wrong one.
        assert await cli(capsys, evidence, "--api-key", KEY, "-vv", "status", task_id) == 0
        assert await cli(capsys, evidence, "--api-key", WRONG_KEY, "-vv", "status", task_id) == 1
        # bulk with lost and faulted answers and failures; then the resume.
        jobs = tmp_path / "jobs.csv"
        jobs.write_text(
            "task_id,image_index,water_mark,id\n"
            + "".join(f"parent-{n},{n % 4},wm,job-{n}\n" for n in range(12))
            + "unknown-parent,0,,bad-parent\nparent-x,9,,bad-index\n"
        )
        # Faults on submissions only: a faulted poll would wait for the CLI's next (seconds).
        fake.update(
            drop_submit_answer_rate=0.2,
            fault_rate=0.2,
            fault_endpoints=["submit"],
            failure_rate=0.2,
        )
        bulk = ("bulk", str(jobs), "--submit-rate", "1000", "1", "--download", str(tmp_path / "b"))
        assert await cli(capsys, evidence, "-vv", *bulk) == 1
        assert await cli(capsys, evidence, "-vv", *bulk) == 1
        assert_result_host_never_got_the_key(fake)
    results = (tmp_path / "jobs.csv.results.jsonl").read_text().splitlines()
    assert {json.loads(line)["status"] for line in results} == {"done", "failed", "uncertain"}
    evidence.files(tmp_path)
    evidence.assert_clean(KEY, WRONG_KEY)
