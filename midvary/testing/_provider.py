"""The fake provider: the contract's two endpoints, a result CDN, and a task state machine."""

from __future__ import annotations

import asyncio
import collections
import enum
import hmac
import random
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import attrs
import yarl
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ._callbacks import CallbackScheduler
from ._clock import ManualClock
from ._images import png_bytes
from ._settings import Endpoint, FakeSettings, FaultKind, settings_as_json
from ._state import SuccessFlag, Task, TaskSnapshot, TaskStore, VaryParams
from ._stats import FakeStats
from ._wire import (
    Rejection,
    close_connection,
    envelope,
    fault_answer,
    parent_record_data,
    parse_vary_body,
    record_data,
    result_urls,
)

SUBMIT_PATH = "/api/v1/mj/generateVary"
RECORD_INFO_PATH = "/api/v1/mj/record-info"
_RESULT_NAME = re.compile(r"(?P<task_id>.+)_(?P<index>[0-9])\.png")
# Seconds a closing provider lets in-flight requests finish (a `latency` sleep, say).
_SHUTDOWN_GRACE = 0.5


class _Phase(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class FakeProvider:
    """An in-process stand-in for the kie.ai Midjourney API, served over loopback.

    It answers ``POST /api/v1/mj/generateVary`` and ``GET /api/v1/mj/record-info`` as
    ``CONTRACT.md`` describes, awkward parts included: errors inside HTTP 200, a new task
    invisible for a while, ``paramJson`` as a JSON string, two time formats, and a result
    CDN on a different origin (``results_base_url``) that must not receive the API key.
    Knobs live in :class:`FakeSettings`; figures in :attr:`stats`.

    Answers, in the order the checks run (envelope codes; HTTP 200 unless noted, or the
    code itself with ``mirror_http_status``):

    - an injected fault (``fault_rate``), before anything else;
    - 455 during maintenance;
    - 401 for a missing or wrong ``Authorization: Bearer <key>``;
    - 400 for a body that is not JSON, or any bad field: ``taskId`` missing or not a
      non-empty string, ``imageIndex`` missing, not an int (``true`` is not an int) or out
      of range, ``waterMark`` not a string, ``callBackUrl`` not an absolute http(s) URL
      (``null`` counts as absent for the two optional fields);
    - 422 when the parent task is unknown, or is a task of the fake that has not
      succeeded;
    - 429, always as HTTP 429, beyond ``submit_limit``;
    - 402 when ``credits`` are used up;
    - otherwise 200 with ``data.taskId`` (unknown extra body fields are ignored), unless
      ``drop_submit_answer_rate`` loses the answer of the task it just created.

    ``record-info`` answers 400 without a ``taskId`` query parameter, and "not found"
    (``not_found_style``) for an unknown or still invisible task. Parents the fake did not
    create are shown as finished ``mj_txt2img`` tasks with 4 images. A task submitted with
    a ``callBackUrl`` is POSTed there when it finishes (see the ``callback_*`` settings).

    For a fake in another process, the API origin also serves control endpoints, without
    auth, faults or figures: ``GET /_fake/stats`` (the figures as JSON),
    ``POST /_fake/settings`` (a JSON object of settings to change) and
    ``POST /_fake/maintenance`` (``{"on": true}`` or ``{"on": false}``).

    Use it as an async context manager, or call :meth:`start` and :meth:`close`::

        async with FakeProvider(settings=FakeSettings(task_duration=(0.1, 0.2))) as fake:
            ...  # talk to fake.base_url with fake.api_key

    Args:
        settings: The knobs; ``None`` means ``FakeSettings()``.
        api_key: The key the API accepts; ``None`` generates a ``fake-...`` key.
        seed: Seeds every random draw (task durations and outcomes, faults, latency).
        host: The interface both servers bind.
        port: The API's port; 0 picks a free one.
        results_port: The result CDN's port; 0 picks a free one.
        clock: Seconds for durations and windows (a :class:`ManualClock` in tests);
            ``None`` means ``time.monotonic``.
        wall_clock: Read once at start (Unix seconds) to turn the clock into the reported
            ``createTime``/``completeTime``; ``None`` means ``time.time``.
    """

    def __init__(
        self,
        *,
        settings: FakeSettings | None = None,
        api_key: str | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        results_port: int = 0,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self._settings = settings if settings is not None else FakeSettings()
        if not isinstance(self._settings, FakeSettings):
            raise TypeError(f"settings must be a FakeSettings, not {type(settings).__name__}")
        self._api_key = api_key if api_key is not None else _new_key()
        self._seed = seed
        self._host = host
        self._ports = (port, results_port)
        self._clock = clock if clock is not None else time.monotonic
        self._wall_clock = wall_clock if wall_clock is not None else time.time
        self._store = TaskStore(seed=seed)
        self._rng = random.Random(f"{seed}:faults")
        self._stats = FakeStats()
        self._credits_left = self._settings.credits
        self._recent_submissions: dict[str, collections.deque[float]] = {}
        self._maintenance = False
        self._result_headers: list[CIMultiDictProxy[str]] = []
        self._phase = _Phase.NEW
        self._runners: list[web.AppRunner] = []
        self._urls: tuple[str, str] | None = None
        self._callbacks: CallbackScheduler | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._started_at = 0.0
        self._started_wall = 0.0

    def __repr__(self) -> str:
        where = self._urls[0] if self._urls else "not started"
        return f"<FakeProvider {self._phase.value} {where} seed={self._seed}>"

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind both servers and start the callback scheduler.

        Raises:
            RuntimeError: The provider was already started (a closed one cannot restart).
        """
        if self._phase is not _Phase.NEW:
            raise RuntimeError(f"this FakeProvider is {self._phase.value}; make a new one")
        self._phase = _Phase.RUNNING
        try:
            self._started_at = self._clock()
            self._started_wall = self._wall_clock()
            self._callbacks = CallbackScheduler(
                clock=self._clock,
                wall=self._wall,
                settings=lambda: self._settings,
                results_base=lambda: self.results_base_url,
                stats=self._stats,
            )
            api_url = await self._serve(self._api_app(), self._ports[0])
            results_url = await self._serve(self._results_app(), self._ports[1])
            self._urls = (api_url, results_url)
            self._callbacks.start()
            if isinstance(self._clock, ManualClock):
                self._unsubscribe = self._clock.subscribe(self._callbacks.wake)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop serving, cancel callback deliveries and close their session. Idempotent."""
        if self._phase is _Phase.CLOSED:
            return
        self._phase = _Phase.CLOSED
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._callbacks is not None:
            await self._callbacks.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    async def _serve(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=_SHUTDOWN_GRACE,
        )
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, self._host, port).start()
        bound_port = runner.addresses[0][1]
        return str(yarl.URL.build(scheme="http", host=self._host, port=bound_port))

    # -- public surface -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API's base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        return self._running_urls()[0]

    @property
    def results_base_url(self) -> str:
        """The result CDN's base URL: another port, so another origin than the API."""
        return self._running_urls()[1]

    def _running_urls(self) -> tuple[str, str]:
        if self._urls is None:
            raise RuntimeError("the FakeProvider is not started: use `async with` or start()")
        return self._urls

    @property
    def api_key(self) -> str:
        """The one key the API accepts; set it to make every other key get 401."""
        return self._api_key

    @api_key.setter
    def api_key(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("api_key must be a non-empty str")
        self._api_key = value

    def rotate_api_key(self) -> str:
        """Replace the accepted key with a new ``fake-...`` key and return it."""
        self._api_key = _new_key()
        return self._api_key

    @property
    def seed(self) -> int:
        """The seed of every random draw."""
        return self._seed

    @property
    def settings(self) -> FakeSettings:
        """The current knobs; assign a new :class:`FakeSettings` to change them at runtime.

        A new ``credits`` value (one that differs from the current one) sets the balance.
        """
        return self._settings

    @settings.setter
    def settings(self, value: FakeSettings) -> None:
        if not isinstance(value, FakeSettings):
            raise TypeError(f"settings must be a FakeSettings, not {type(value).__name__}")
        if value.credits != self._settings.credits:
            self._credits_left = value.credits
        self._settings = value
        if self._callbacks is not None:
            self._callbacks.wake()

    def update(self, **changes: Any) -> FakeSettings:
        """Change some knobs (``attrs.evolve`` of the settings) and return the new settings."""
        self.settings = attrs.evolve(self._settings, **changes)
        return self._settings

    def set_maintenance(self, on: bool) -> None:
        """Answer 455 on both endpoints from now on (``True``) or stop doing so (``False``).

        This switch adds to the ``maintenance`` windows of the settings.
        """
        self._maintenance = on

    @property
    def credits_left(self) -> int | None:
        """Credits left, or ``None`` when they are unlimited."""
        return self._credits_left

    def add_parent(self, task_id: str) -> None:
        """Make ``task_id`` a finished parent task that vary submissions may name."""
        self._store.add_parent(task_id)

    def now(self) -> float:
        """Seconds of the provider's clock since it started (the time of ``maintenance``)."""
        return self._clock() - self._started_at

    @property
    def stats(self) -> FakeStats:
        """The live figures (requests, polls, faults, callbacks, detection delays...)."""
        return self._stats

    @property
    def result_request_headers(self) -> Sequence[Mapping[str, str]]:
        """The headers of every request the result CDN received, oldest first."""
        return tuple(self._result_headers)

    @property
    def pending_callbacks(self) -> int:
        """Callback deliveries scheduled (for tasks not finished yet, or retries) or in flight."""
        return self._callbacks.pending if self._callbacks is not None else 0

    async def settle_callbacks(self) -> None:
        """Wait until every callback due by now was delivered or failed (and was recorded).

        Deliveries due later (tasks still running, retries after a delay) are not waited for.
        """
        if self._callbacks is not None:
            await self._callbacks.settle()

    def task(self, task_id: str) -> TaskSnapshot:
        """The task ``task_id`` as it stands now.

        Raises:
            KeyError: The fake did not create a task with this id.
        """
        task = self._store.get(task_id)
        if task is None:
            raise KeyError(task_id)
        return self._snapshot(task)

    @property
    def tasks(self) -> Mapping[str, TaskSnapshot]:
        """A read-only view of every task the fake created, by id, in creation order."""
        return _TasksView(self._store.tasks, self._snapshot)

    def _snapshot(self, task: Task) -> TaskSnapshot:
        flag = task.flag_at(self._clock())
        urls = (
            result_urls(self.results_base_url, task.task_id, task.image_count)
            if flag is SuccessFlag.SUCCESS
            else []
        )
        return TaskSnapshot(
            task_id=task.task_id,
            parent_task_id=task.params.parent_task_id,
            image_index=task.params.image_index,
            water_mark=task.params.water_mark,
            callback_url=task.params.callback_url,
            created_at=task.created_at,
            visible_at=task.visible_at,
            finished_at=task.finished_at,
            outcome=task.outcome,
            success_flag=flag,
            result_urls=tuple(urls),
            polls=self._stats.polls.get(task.task_id, 0),
            detection_delay=self._stats.detection_delays.get(task.task_id),
        )

    # -- the API --------------------------------------------------------------------------

    def _api_app(self) -> web.Application:
        app = web.Application(middlewares=[_envelope_for_http_errors])
        app.router.add_post(SUBMIT_PATH, self._handle_submit)
        app.router.add_get(RECORD_INFO_PATH, self._handle_record_info)
        app.router.add_get("/_fake/stats", self._handle_stats)
        app.router.add_post("/_fake/settings", self._handle_settings)
        app.router.add_post("/_fake/maintenance", self._handle_maintenance)
        return app

    def _wall(self, reading: float) -> float:
        return self._started_wall + (reading - self._started_at)

    def _answer(
        self,
        code: int,
        msg: str,
        data: object = None,
        *,
        http_status: int | None = None,
    ) -> web.Response:
        self._stats.codes[code] += 1
        return envelope(
            code,
            msg,
            data,
            mirror=self._settings.mirror_http_status,
            http_status=http_status,
        )

    def _reject(self, rejection: Rejection) -> web.Response:
        if rejection.code == 429:
            self._stats.rate_limited += 1
            return self._answer(429, rejection.msg, http_status=429)
        return self._answer(rejection.code, rejection.msg)

    async def _before(self, endpoint: Endpoint, request: web.Request) -> web.Response | None:
        """Count, delay and maybe spoil a request; a fault's answer ends the request."""
        self._stats.requests[endpoint] += 1
        settings = self._settings
        latency = settings.latency
        if isinstance(latency, tuple):
            latency = self._rng.uniform(*latency)
        if latency > 0:
            # The body arrives before the provider's slowness: a client that gives up while
            # it waits has still handed over a submission the provider will carry out.
            if request.can_read_body:
                await request.read()
            await asyncio.sleep(latency)
        if (
            settings.fault_rate > 0
            and endpoint in settings.fault_endpoints
            and self._rng.random() < settings.fault_rate
        ):
            kind: FaultKind = self._rng.choice(sorted(settings.fault_kinds))
            self._stats.faults[kind] += 1
            self._stats.faults_by_endpoint[endpoint] += 1
            return fault_answer(kind, request, mirror=settings.mirror_http_status)
        return None

    def _check_access(self, request: web.Request) -> None:
        """Raise the 455 of maintenance, or the 401 of a missing or wrong key."""
        if self._maintenance or self._settings.in_maintenance(self.now()):
            raise Rejection(455, "The service is under maintenance, please try again later")
        header = request.headers.get("Authorization")
        if header is None:
            raise Rejection(401, "Unauthorized: the Authorization: Bearer <key> header is missing")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            key.strip().encode(),
            self._api_key.encode(),
        ):
            raise Rejection(401, "Unauthorized: the API key is invalid")

    async def _handle_submit(self, request: web.Request) -> web.Response:
        spoiled = await self._before("submit", request)
        if spoiled is not None:
            return spoiled
        try:
            params = await self._admit(request)
        except Rejection as rejection:
            return self._reject(rejection)

        # No await since _admit's checks ended, so what they checked still holds.
        settings = self._settings
        now = self._clock()
        task, duplicate = self._store.create(params, settings, now)
        self._stats.tasks_created += 1
        self._stats.duplicate_submissions += duplicate
        if self._credits_left is not None:
            self._credits_left -= 1
        if settings.submit_limit is not None:
            self._recent_submissions.setdefault(self._api_key, collections.deque()).append(now)
        if settings.callbacks and params.callback_url is not None and self._callbacks:
            self._callbacks.schedule(task, settings.callback_duplicates)
        if (
            settings.drop_submit_answer_rate > 0
            and self._rng.random() < settings.drop_submit_answer_rate
        ):
            self._stats.dropped_submit_answers += 1
            return close_connection(request)
        return self._answer(200, "success", {"taskId": task.task_id})

    async def _admit(self, request: web.Request) -> VaryParams:
        """Check a submission in the provider's order; raise the first refusal."""
        self._check_access(request)
        try:
            body = await request.json()
        except ValueError:
            raise Rejection(400, "the request body is not valid JSON") from None
        settings = self._settings
        params = parse_vary_body(body, index_base=settings.index_base)
        now = self._clock()
        if not self._store.is_parent(params.parent_task_id, settings, now):
            raise Rejection(
                422,
                f"taskId {params.parent_task_id!r} is not a finished task of this account",
            )
        self._check_submit_limit(self._api_key, now)
        if self._credits_left is not None and self._credits_left <= 0:
            raise Rejection(402, "Insufficient credits")
        return params

    def _check_submit_limit(self, api_key: str, now: float) -> None:
        limit = self._settings.submit_limit
        if limit is None:
            return
        count, window = limit
        recent = self._recent_submissions.get(api_key)
        if recent is None:
            return
        while recent and recent[0] <= now - window:
            recent.popleft()
        if len(recent) >= count:
            raise Rejection(
                429,
                f"Too many requests: at most {count} submissions per {window:g} s",
            )

    async def _handle_record_info(self, request: web.Request) -> web.Response:
        spoiled = await self._before("record-info", request)
        if spoiled is not None:
            return spoiled
        try:
            self._check_access(request)
        except Rejection as rejection:
            return self._reject(rejection)
        task_id = request.query.get("taskId", "")
        if not task_id.strip():
            return self._answer(400, "taskId is required")
        return self._record_answer(task_id)

    def _record_answer(self, task_id: str) -> web.Response:
        settings = self._settings
        now = self._clock()
        task = self._store.get(task_id)
        if task is None:
            if self._store.is_extra_parent(task_id, settings):
                return self._answer(200, "success", self._parent_record(task_id))
            return self._not_found()
        self._stats.polls[task_id] = self._stats.polls.get(task_id, 0) + 1
        if now < task.visible_at:
            return self._not_found()
        if now >= task.finished_at and task_id not in self._stats.detection_delays:
            self._stats.detection_delays[task_id] = now - task.finished_at
        data = record_data(
            task,
            now,
            wall=self._wall,
            results_base=self.results_base_url,
            result_info_as_string=settings.result_info_as_string,
        )
        return self._answer(200, "success", data)

    def _parent_record(self, task_id: str) -> dict[str, Any]:
        settings = self._settings
        return parent_record_data(
            task_id,
            epoch=self._started_wall,
            style="epoch_ms" if settings.time_format == "epoch_ms" else "iso_z",
            results_base=self.results_base_url,
            result_info_as_string=settings.result_info_as_string,
        )

    def _not_found(self) -> web.Response:
        if self._settings.not_found_style == "404":
            return self._answer(404, "Task not found")
        return self._answer(422, "recordInfo is null")

    # -- control endpoints for a fake in another process (benchmarks) ---------------------

    async def _handle_stats(self, _request: web.Request) -> web.Response:
        figures = self._stats.as_dict()
        figures["credits_left"] = self._credits_left
        figures["elapsed"] = self.now()
        return web.json_response(figures)

    async def _handle_settings(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
        except ValueError:
            changes = None
        if not isinstance(changes, dict):
            error = "the body must be a JSON object of FakeSettings fields"
            return web.json_response({"error": error}, status=400)
        try:
            self.update(**changes)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(settings_as_json(self._settings))

    async def _handle_maintenance(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("on"), bool):
            return web.json_response({"error": 'expected {"on": true|false}'}, status=400)
        self.set_maintenance(body["on"])
        return web.json_response({"on": body["on"]})

    # -- the result CDN -------------------------------------------------------------------

    def _results_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/results/{name}", self._handle_result)
        return app

    async def _handle_result(self, request: web.Request) -> web.Response:
        self._stats.requests["results"] += 1
        self._result_headers.append(CIMultiDictProxy(CIMultiDict(request.headers)))
        match = _RESULT_NAME.fullmatch(request.match_info["name"])
        if match is None:
            raise web.HTTPNotFound
        task_id, index = match["task_id"], int(match["index"])
        task = self._store.get(task_id)
        if task is not None:
            exists = task.flag_at(self._clock()) is SuccessFlag.SUCCESS and index < task.image_count
        else:
            exists = self._store.is_extra_parent(task_id, self._settings) and index < 4
        if not exists:
            raise web.HTTPNotFound
        return web.Response(body=png_bytes(index), content_type="image/png")


class _TasksView(Mapping[str, TaskSnapshot]):
    """The provider's tasks as snapshots, made when read."""

    def __init__(self, tasks: Mapping[str, Task], snapshot: Callable[[Task], TaskSnapshot]):
        self._tasks = tasks
        self._snapshot = snapshot

    def __getitem__(self, task_id: str) -> TaskSnapshot:
        return self._snapshot(self._tasks[task_id])

    def __iter__(self) -> Iterator[str]:
        # A copy: tasks created while the caller iterates must not break the iteration.
        return iter(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)


@web.middleware
async def _envelope_for_http_errors(
    request: web.Request,
    handler: Callable[[web.Request], Any],
) -> web.StreamResponse:
    """Unknown paths and methods get an envelope too (with a real HTTP status)."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return envelope(exc.status, exc.reason, mirror=True)
    return response


def _new_key() -> str:
    return f"fake-{secrets.token_hex(12)}"
