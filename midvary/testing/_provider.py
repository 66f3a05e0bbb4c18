"""The fake provider: the API's four endpoints, a result CDN, and a task state machine."""

from __future__ import annotations

import enum
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Self

import attrs
import yarl
from aiohttp import web

from ._apps import Account, ProviderApps
from ._callbacks import CallbackScheduler
from ._clock import ManualClock
from ._control import control_routes
from ._settings import FakeSettings
from ._state import SuccessFlag, Task, TaskSnapshot, TaskStore
from ._stats import FakeStats
from ._wire import task_result_urls

# Seconds a closing provider lets in-flight requests finish (a `latency` sleep, say).
_SHUTDOWN_GRACE = 0.5


class _Phase(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class FakeProvider(ProviderApps):
    """An in-process stand-in for the kie.ai Midjourney API, served over loopback.

    It answers ``POST /api/v1/mj/generate``, ``POST /api/v1/mj/generateVary``,
    ``POST /api/v1/mj/generateUpscale``, ``POST /api/v1/mj/generateVideoExtend``,
    ``GET /api/v1/mj/record-info`` and ``GET /api/v1/chat/credit`` (the credits left:
    ``credits``) as
    ``docs/provider.md`` describes, awkward parts included: errors inside HTTP 200, a new
    task invisible for a while, ``paramJson`` as a JSON string, two time formats, and a
    result CDN on a different origin (``results_base_url``) that must not receive the API
    key. Knobs live in :class:`FakeSettings`; figures in :attr:`stats`.

    Which ids are finished parents (what vary and upscale may name): any id starting with
    the settings' ``parent_prefix`` (``"parent-"`` by default, so ``"parent-1"`` works),
    ids given to :meth:`add_parent`, and the fake's own generate and vary tasks once they
    succeeded. :attr:`sample_parent_id` gives one to paste; :meth:`is_parent` tells.

    A submission's answers, in the order the checks run (envelope codes; HTTP 200 unless
    noted, or the code itself with ``mirror_http_status``):

    - an injected fault (``fault_rate``), before anything else;
    - 455 during maintenance;
    - 401 for a missing or wrong ``Authorization: Bearer <key>``;
    - 400 for a body that is not JSON, or a field missing, of the wrong type or outside its
      allowed values (``null`` counts as absent for optional fields; ``true`` is not an
      int). Vary and upscale: ``taskId`` a non-empty string, ``imageIndex`` an int 0..3
      (vary: from ``index_base``), ``waterMark`` a string, ``callBackUrl`` an absolute
      http(s) URL. Generate: ``taskType`` one of ``mj_txt2img``, ``mj_img2img``,
      ``mj_style_reference``, ``mj_omni_reference``, ``mj_video``, ``mj_video_hd``;
      ``prompt`` 1 to 2000 characters; ``speed`` relaxed/fast/turbo; ``aspectRatio`` one
      of 1:2, 9:16, 2:3, 3:4, 5:6, 6:5, 4:3, 3:2, 1:1, 16:9, 2:1; ``version`` one of "7",
      "6.1", "6", "5.2", "5.1", "niji6"; ``variety`` 0..100 in steps of 5;
      ``stylization`` 0..1000; ``weirdness`` 0..3000; ``ow`` 1..1000; ``fileUrls`` a list
      of absolute http(s) URLs; ``videoBatchSize`` 1, 2 or 4; ``motion`` high/low;
      ``enableTranslation`` a bool;
    - 422 for a generate field its ``taskType`` does not allow: ``speed`` with video or
      omni reference, ``ow`` without omni reference, ``videoBatchSize`` or ``motion``
      without video, no ``fileUrls`` for an image-input type, not exactly one for video;
    - 422 when a vary's or upscale's parent is unknown, still generating, failed, an
      upscale or a video, or has no image at ``imageIndex``;
    - for an extend: 400 unless ``taskId`` is a non-empty string, ``index`` an int >= 0
      and ``taskType`` ``mj_video_extend_manual`` or ``mj_video_extend_auto``; 422 for a
      manual extend without ``prompt`` or an auto one with it; 422 when the parent is not
      an ``mj_video``/``mj_video_hd`` generate task of the fake that succeeded with a
      video at ``index`` (an extend makes one ``.mp4``, ``taskType`` the request's);
    - 429, always as HTTP 429, beyond ``submit_limit`` (one budget for every submission endpoint);
    - 402 when ``credits`` are used up;
    - otherwise 200 with ``data.taskId`` (unknown extra body fields are ignored), unless
      ``drop_submit_answer_rate`` loses the answer of the task it just created.

    Records (``record-info``): ``taskType`` is the request's ``taskType`` for a generate,
    ``"mj_vary"`` for a vary and ``"mj_upscale"`` for an upscale; ``paramJson`` echoes the
    request's known fields as sent. A successful image generate or vary has
    ``images_per_task`` images (4 by default), an upscale 1, a video generate
    ``videoBatchSize`` ``.mp4`` files. Task ids are unique across fake instances, whatever
    the seed.

    ``chat/credit`` answers like ``record-info``'s access checks (455 in maintenance, 401
    for a wrong key, inside HTTP 200) and otherwise the credits left as ``data``.

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
        super().__init__(seed=seed)
        self._settings = settings if settings is not None else FakeSettings()
        if not isinstance(self._settings, FakeSettings):
            raise TypeError(f"settings must be a FakeSettings, not {type(settings).__name__}")
        self._seed = seed
        self._host = host
        self._ports = (port, results_port)
        self._clock = clock if clock is not None else time.monotonic
        self._wall_clock = wall_clock if wall_clock is not None else time.time
        self._store = TaskStore(seed=seed)
        self._stats = FakeStats()
        self._account = Account(
            api_key=api_key if api_key is not None else _new_key(),
            credits_left=self._settings.credits,
        )
        self._callbacks: CallbackScheduler | None = None
        self._phase = _Phase.NEW
        self._runners: list[web.AppRunner] = []
        self._urls: tuple[str, str] | None = None
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

    async def __aexit__(self, *_exc: object) -> None:
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
            api_url = await self._serve(self._api_app(control_routes(self)), self._ports[0])
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
        return self._account.api_key

    @api_key.setter
    def api_key(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("api_key must be a non-empty str")
        self._account.api_key = value

    def rotate_api_key(self) -> str:
        """Replace the accepted key with a new ``fake-...`` key and return it."""
        self._account.api_key = _new_key()
        return self._account.api_key

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
            self._account.credits_left = value.credits
        self._settings = value
        if self._callbacks is not None:
            self._callbacks.wake()

    def update(self, **changes: Any) -> FakeSettings:
        """Change some knobs (``attrs.evolve`` of the settings) and return the new settings."""
        self.settings = attrs.evolve(self._settings, **changes)
        return self._settings

    def set_maintenance(self, on: bool) -> None:
        """Answer 455 on every API endpoint from now on (``True``) or stop doing so (``False``).

        This switch adds to the ``maintenance`` windows of the settings.
        """
        self._account.maintenance = on

    @property
    def credits_left(self) -> int | None:
        """Credits left, or ``None`` when they are unlimited."""
        return self._account.credits_left

    def add_parent(self, task_id: str | None = None) -> str:
        """Make ``task_id`` a finished parent task (of 4 images) that vary and upscale may name.

        Args:
            task_id: The id; ``None`` makes up a new one, unique across fakes.

        Returns:
            The parent's id.
        """
        if task_id is None:
            task_id = self._store.new_parent_id()
        elif not isinstance(task_id, str) or not task_id.strip():
            raise ValueError(f"a parent id must be a non-empty str, not {task_id!r}")
        self._store.add_parent(task_id)
        return task_id

    def is_parent(self, task_id: str) -> bool:
        """Whether a vary or upscale of image 0 of ``task_id`` would be accepted now.

        That is an id with the ``parent_prefix``, one given to :meth:`add_parent`, or a
        generate or vary task of the fake that succeeded (not one still generating or
        failed, nor an upscale or a video).
        """
        return self._store.parent_refusal(task_id, 0, self._settings, self._clock()) is None

    @property
    def sample_parent_id(self) -> str:
        """A task id this fake accepts as a finished parent right now, to paste into a vary.

        ``parent_prefix + "1"`` (``"parent-1"`` by default); without a prefix, the first id
        given to :meth:`add_parent`, else the fake's first successful generate or vary
        task, else a new parent made with :meth:`add_parent`.
        """
        prefix = self._settings.parent_prefix
        if prefix is not None:
            return f"{prefix}1"
        added = self._store.added_parents
        if added:
            return added[0]
        finished = self._store.finished_parents(self._clock())
        return finished[0] if finished else self.add_parent()

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

    def _wall(self, reading: float) -> float:
        return self._started_wall + (reading - self._started_at)

    def _snapshot(self, task: Task) -> TaskSnapshot:
        flag = task.flag_at(self._clock())
        urls = task_result_urls(self.results_base_url, task) if flag is SuccessFlag.SUCCESS else []
        return TaskSnapshot(
            task_id=task.task_id,
            kind=task.params.kind,
            task_type=task.params.task_type,
            parent_task_id=task.params.parent_task_id,
            image_index=task.params.image_index,
            param_json=task.params.param_json,
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


def _new_key() -> str:
    return f"fake-{secrets.token_hex(12)}"
