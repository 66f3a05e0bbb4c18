"""The fake's two web applications: the API (submissions, record-info) and the result CDN."""

from __future__ import annotations

import asyncio
import collections
import functools
import hmac
import random
import re
import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ._callbacks import CallbackScheduler
from ._images import mp4_bytes, png_bytes
from ._settings import Endpoint, FakeSettings, FaultKind
from ._state import TIME_STYLES, SubmitParams, SuccessFlag, TaskStore
from ._stats import FakeStats
from ._submit import (
    parse_extend_body,
    parse_generate_body,
    parse_upscale_body,
    parse_vary_body,
)
from ._wire import (
    Rejection,
    close_connection,
    envelope,
    fault_answer,
    parent_record_data,
    record_data,
)

SUBMIT_PATH = "/api/v1/mj/generateVary"
GENERATE_PATH = "/api/v1/mj/generate"
UPSCALE_PATH = "/api/v1/mj/generateUpscale"
EXTEND_PATH = "/api/v1/mj/generateVideoExtend"
RECORD_INFO_PATH = "/api/v1/mj/record-info"
CREDIT_PATH = "/api/v1/chat/credit"
DOWNLOAD_URL_PATH = "/api/v1/common/download-url"
#: Seconds a temporary download link stays valid (the provider's 20 minutes).
LINK_LIFETIME = 20 * 60.0
#: What the credit endpoint reports for an account with unlimited credits (``credits=None``),
#: less one per task created: a balance that is never refused yet still shows the spend.
UNLIMITED_BALANCE = 1_000_000_000
_RESULT_NAME = re.compile(r"(?P<task_id>.+)_(?P<index>[0-9])\.(?P<media>png|mp4)")


@attrs.define(kw_only=True)
class Account:
    """The account state the API checks and uses up, shared with the provider's surface.

    Attributes:
        api_key: The one key the API accepts.
        credits_left: Credits left; ``None`` means unlimited.
        maintenance: The ``set_maintenance`` switch.
        recent_submissions: Per key, clock readings of accepted submissions still in the
            ``submit_limit`` window (one window for all the submission endpoints).
    """

    api_key: str
    credits_left: int | None
    maintenance: bool = False
    recent_submissions: dict[str, collections.deque[float]] = attrs.field(factory=dict)


class ProviderApps:
    """The handlers of both servers: the serving half of :class:`FakeProvider`, its subclass.

    The subclass holds the state they read (declared here) and defines :meth:`now`,
    :meth:`_wall` and :attr:`results_base_url`.
    """

    _store: TaskStore
    _stats: FakeStats
    _account: Account
    _settings: FakeSettings
    _clock: Callable[[], float]
    _started_wall: float
    _callbacks: CallbackScheduler | None

    def __init__(self, *, seed: int) -> None:
        self._rng = random.Random(f"{seed}:faults")
        #: The headers of every request the result CDN received, oldest first.
        self._result_headers: list[CIMultiDictProxy[str]] = []
        # Temporary download links handed out: token -> (file name, clock reading it ends).
        self._links: dict[str, tuple[str, float]] = {}

    if TYPE_CHECKING:  # FakeProvider's

        def now(self) -> float: ...
        def _wall(self, reading: float) -> float: ...
        @property
        def results_base_url(self) -> str: ...

    def _api_app(self, extra_routes: Sequence[web.RouteDef] = ()) -> web.Application:
        """The API: the submission endpoints, record-info, and ``extra_routes``."""
        app = web.Application(middlewares=[_envelope_for_http_errors])
        submissions: dict[str, tuple[Endpoint, Callable[[object], SubmitParams]]] = {
            SUBMIT_PATH: ("submit", self._parse_vary),
            GENERATE_PATH: ("generate", parse_generate_body),
            UPSCALE_PATH: ("upscale", parse_upscale_body),
            EXTEND_PATH: ("extend", parse_extend_body),
        }
        for path, (endpoint, parse) in submissions.items():
            app.router.add_post(path, functools.partial(self._submission, endpoint, parse))
        app.router.add_get(RECORD_INFO_PATH, self._handle_record_info)
        app.router.add_get(CREDIT_PATH, self._handle_credit)
        app.router.add_post(DOWNLOAD_URL_PATH, self._handle_download_url)
        app.router.add_routes(extra_routes)
        return app

    def _answer(
        self,
        code: int,
        msg: str,
        data: object = None,
        *,
        http_status: int | None = None,
    ) -> web.Response:
        self._stats.codes[code] += 1
        settings = self._settings
        return envelope(
            code,
            msg,
            data,
            mirror=settings.mirror_http_status,
            http_status=http_status,
            message_key=settings.message_key,
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
        if endpoint in settings.unserved_endpoints:
            # A host without this endpoint: its web server's bare answer, no envelope.
            status = settings.unserved_status
            text = "404 page not found" if status == 404 else "405 method not allowed"
            return web.Response(status=status, text=text)
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
        if self._account.maintenance or self._settings.in_maintenance(self.now()):
            raise Rejection(455, "The service is under maintenance, please try again later")
        header = request.headers.get("Authorization")
        if header is None:
            raise Rejection(401, "Unauthorized: the Authorization: Bearer <key> header is missing")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            key.strip().encode(),
            self._account.api_key.encode(),
        ):
            raise Rejection(401, "Unauthorized: the API key is invalid")

    def _parse_vary(self, body: object) -> SubmitParams:
        return parse_vary_body(body, index_base=self._settings.index_base)

    async def _submission(
        self,
        endpoint: Endpoint,
        parse: Callable[[object], SubmitParams],
        request: web.Request,
    ) -> web.Response:
        """One submission, whichever endpoint: the same checks, budget and answers."""
        spoiled = await self._before(endpoint, request)
        if spoiled is not None:
            return spoiled
        try:
            params = await self._admit(request, parse)
        except Rejection as rejection:
            return self._reject(rejection)

        # No await since _admit's checks ended, so what they checked still holds.
        settings = self._settings
        now = self._clock()
        task, duplicate = self._store.create(params, settings, now)
        self._stats.tasks_created += 1
        self._stats.tasks_by_endpoint[endpoint] += 1
        self._stats.duplicate_submissions += duplicate
        if self._account.credits_left is not None:
            self._account.credits_left -= 1
        if settings.submit_limit is not None:
            recent = self._account.recent_submissions
            recent.setdefault(self._account.api_key, collections.deque()).append(now)
        callbacks = self._callbacks
        if settings.callbacks and params.callback_url is not None and callbacks is not None:
            callbacks.schedule(task, settings.callback_duplicates)
        if (
            settings.drop_submit_answer_rate > 0
            and self._rng.random() < settings.drop_submit_answer_rate
        ):
            self._stats.dropped_submit_answers += 1
            return close_connection(request)
        return self._answer(200, "success", {"taskId": task.task_id})

    async def _admit(
        self,
        request: web.Request,
        parse: Callable[[object], SubmitParams],
    ) -> SubmitParams:
        """Check a submission in the provider's order; raise the first refusal."""
        self._check_access(request)
        params = parse(await _json_body(request))
        settings = self._settings
        now = self._clock()
        parent, index = params.parent_task_id, params.image_index
        if parent is not None and index is not None:  # a vary, upscale or extend
            if params.kind == "extend":
                refusal = self._store.video_parent_refusal(parent, index, now)
            else:
                offset = settings.index_base if params.kind == "vary" else 0
                refusal = self._store.parent_refusal(parent, index - offset, settings, now)
            if refusal is not None:
                raise Rejection(422, refusal)
        self._check_submit_limit(self._account.api_key, now)
        if self._account.credits_left is not None and self._account.credits_left <= 0:
            raise Rejection(402, "Insufficient credits")
        return params

    def _check_submit_limit(self, api_key: str, now: float) -> None:
        limit = self._settings.submit_limit
        if limit is None:
            return
        count, window = limit
        recent = self._account.recent_submissions.get(api_key)
        if recent is None:
            return
        while recent and recent[0] <= now - window:
            recent.popleft()
        if len(recent) >= count:
            raise Rejection(
                429,
                f"Too many requests: at most {count} submissions per {window:g} s",
            )

    async def _read(self, endpoint: Endpoint, request: web.Request) -> web.Response | None:
        """A read's fault, 455 or 401 answer (it ends the request), or ``None`` to go on."""
        spoiled = await self._before(endpoint, request)
        if spoiled is not None:
            return spoiled
        try:
            self._check_access(request)
        except Rejection as rejection:
            return self._reject(rejection)
        return None

    async def _handle_record_info(self, request: web.Request) -> web.Response:
        refused = await self._read("record-info", request)
        if refused is not None:
            return refused
        task_id = request.query.get("taskId", "")
        if not task_id.strip():
            return self._answer(400, "taskId is required")
        return self._record_answer(task_id)

    async def _handle_credit(self, request: web.Request) -> web.Response:
        """``GET /api/v1/chat/credit``: the remaining credits (a wrong key: 401 in HTTP 200)."""
        refused = await self._read("credit", request)
        if refused is not None:
            return refused
        left = self._account.credits_left
        if left is None:
            left = max(UNLIMITED_BALANCE - self._stats.tasks_created, 0)
        return self._answer(200, "success", left)

    async def _handle_download_url(self, request: web.Request) -> web.Response:
        """``POST /api/v1/common/download-url``: a temporary link (20 min) to a result file."""
        spoiled = await self._before("download-url", request)
        if spoiled is not None:
            return spoiled
        try:
            self._check_access(request)
            name = await self._linked_file(request)
        except Rejection as rejection:
            return self._reject(rejection)
        token = secrets.token_urlsafe(16)
        self._links[token] = (name, self._clock() + LINK_LIFETIME)
        return self._answer(200, "success", f"{self.results_base_url}/results/{name}?token={token}")

    async def _linked_file(self, request: web.Request) -> str:
        """The result file name a download-url body's ``url`` names (or the refusal)."""
        body = await _json_body(request)
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url:
            raise Rejection(400, "url is required")
        prefix = f"{self.results_base_url}/results/"
        name = url.removeprefix(prefix).partition("?")[0]
        if not url.startswith(prefix) or not self._result_exists(name):
            raise Rejection(422, "url is not a result file of this account")
        return name

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
            flag_format=settings.flag_format,
            callback_failed_flag=settings.callback_failed_flag,
        )
        return self._answer(200, "success", data)

    def _parent_record(self, task_id: str) -> dict[str, Any]:
        settings = self._settings
        return parent_record_data(
            task_id,
            epoch=self._started_wall,
            style=TIME_STYLES.get(settings.time_format, "iso_z"),  # "mixed": ISO with Z
            results_base=self.results_base_url,
            result_info_as_string=settings.result_info_as_string,
        )

    def _not_found(self) -> web.Response:
        if self._settings.not_found_style == "404":
            return self._answer(404, "Task not found")
        return self._answer(422, "recordInfo is null")

    def _results_app(self) -> web.Application:
        """The result CDN: ``/results/<taskId>_<n>.png`` (or ``.mp4`` for videos)."""
        app = web.Application()
        app.router.add_get("/results/{name}", self._handle_result)
        return app

    def _result_exists(self, name: str) -> bool:
        """Whether ``name`` (``<taskId>_<n>.<media>``) is a result file the CDN serves now."""
        match = _RESULT_NAME.fullmatch(name)
        if match is None:
            return False
        task_id, index, media = match["task_id"], int(match["index"]), match["media"]
        task = self._store.get(task_id)
        if task is not None:
            return (
                task.flag_at(self._clock()) is SuccessFlag.SUCCESS
                and index < task.image_count
                and media == task.params.media
            )
        return self._store.is_extra_parent(task_id, self._settings) and index < 4 and media == "png"

    def _link_is_valid(self, name: str, token: str | None) -> bool:
        link = self._links.get(token) if token is not None else None
        return link is not None and link[0] == name and self._clock() < link[1]

    async def _handle_result(self, request: web.Request) -> web.Response:
        self._stats.requests["results"] += 1
        self._result_headers.append(CIMultiDictProxy(CIMultiDict(request.headers)))
        name = request.match_info["name"]
        refusal = self._settings.refuse_direct_downloads
        if refusal is not None and not self._link_is_valid(name, request.query.get("token")):
            # An expired URL, or a client the host does not like: only a temporary link works.
            return web.Response(status=refusal, text=f"{refusal} refused by the result host")
        if not self._result_exists(name):
            raise web.HTTPNotFound
        match = _RESULT_NAME.fullmatch(name)
        assert match is not None  # noqa: S101 - _result_exists matched it
        task_id, index, media = match["task_id"], int(match["index"]), match["media"]
        if media == "mp4":
            return web.Response(body=mp4_bytes(index), content_type="video/mp4")
        return web.Response(body=png_bytes(task_id, index), content_type="image/png")


async def _json_body(request: web.Request) -> Any:
    """The request's JSON body, or the 400 of one that is not JSON."""
    try:
        return await request.json()
    except ValueError:
        raise Rejection(400, "the request body is not valid JSON") from None


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
