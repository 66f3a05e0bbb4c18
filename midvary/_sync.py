"""SyncSession: the blocking façade of a :class:`Session` that runs on a loop of its own.

Nothing is implemented twice: a :class:`SyncSession` owns one background thread running
one event loop, builds the :class:`Session` on it, and turns each of its blocking calls into
a call of the same ``Session`` method on that loop (``asyncio.run_coroutine_threadsafe``).
The limiter, the store, keys and callbacks are therefore exactly those of async code, and
any number of threads may share one ``SyncSession``.

The blocking methods are made from the async ones by :func:`_blocking` and
:func:`_handing`: they take the async method's parameters (for type checkers, through a
``ParamSpec``; for ``inspect.signature`` and ``help()``, through ``__signature__``) and its
docstring, so a parameter added to ``Session`` appears here with no copy to keep in step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, cast

from ._errors import EventLoopError, SessionClosedError
from ._fanout import blocking_options_of
from ._handle import TaskHandle
from ._session import Session

if TYPE_CHECKING:
    from ._config import PollPolicy, RetryPolicy
    from ._models import SubmitRequest, TaskRecord
    from ._outage import Outage
    from ._store import Store

P = ParamSpec("P")
R = TypeVar("R")
A = TypeVar("A")


class _LoopThread:
    """One event loop in one thread: started with the session, stopped and joined on close."""

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._closing = False
        self._pid = os.getpid()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        # A daemon thread: a session its owner forgot to close must not keep the
        # interpreter from exiting (close() is what joins it).
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(ready),), name=name, daemon=True
        )
        self._thread.start()
        ready.result()

    async def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        ready.set_result(None)
        # asyncio.run() then cancels what is left, closes async generators and the executor.
        await self._stop.wait()

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` began: no new call is taken."""
        return self._closing

    def run(self, make: Callable[[], Awaitable[R]]) -> R:
        """Run ``make()`` on the loop and block until it is done; return its result.

        An interrupt (Ctrl-C: ``KeyboardInterrupt``) or any other exception raised in the
        calling thread while it waits cancels the call on the loop and is re-raised.

        Raises:
            SessionClosedError: The session is closed (or closed during the call).
            EventLoopError: Called from the loop's own thread (it would wait for itself).

        """
        self._check_thread()

        async def call() -> R:
            return await make()

        coroutine = call()
        with self._lock:
            if self._closing or self._loop is None:
                coroutine.close()  # never started: no "never awaited" warning
                raise SessionClosedError("this SyncSession is closed; create a new one")
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self._closing:
                raise SessionClosedError("the SyncSession was closed during this call") from None
            raise
        except BaseException:
            if not future.done():
                # Interrupted while waiting (Ctrl-C, or another exception a signal handler
                # raised in this thread): the call on the loop is cancelled, as cancelling
                # an awaited coroutine would be.
                future.cancel()
            raise

    def _check_thread(self) -> None:
        if os.getpid() != self._pid:
            # fork() copies no thread: this process has the loop but nothing running it.
            raise EventLoopError(
                f"this SyncSession was created in process {self._pid}, before a fork: its "
                "loop thread does not exist here; create a SyncSession in each process"
            )
        if threading.current_thread() is self._thread:
            raise EventLoopError(
                "a SyncSession was called from its own event loop's thread (an on_event or "
                "on_retry hook?): that call would wait for itself; hooks must not call the "
                "session"
            )

    def close(self, last: Callable[[], Awaitable[None]]) -> None:
        """Run ``last()`` on the loop, then stop the loop and join its thread (idempotent).

        In a process forked from the one that made it, only marks it closed.

        Raises:
            EventLoopError: Called from the loop's own thread (it cannot join itself).

        """
        if os.getpid() != self._pid:  # a forked copy: nothing of it runs here
            self._closing = True
            return
        self._check_thread()
        try:
            if not self._closing:
                self.run(last)
        finally:
            with self._lock:
                self._closing = True
                loop, stop = self._loop, self._stop
            if loop is not None and stop is not None:
                # The loop closed meanwhile (a second close): nothing is left to stop.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(stop.set)
            self._thread.join()


class _Blocking(Generic[A]):
    """The base of a blocking object: the async object it drives, and the loop it lives on."""

    __slots__ = ("_async", "_loop")

    def __init__(self, target: A, loop: _LoopThread) -> None:
        self._async = target
        self._loop = loop


def _document(
    call: Callable[..., Any], method: Callable[..., Any], returns: Any, note: str
) -> None:
    """Give ``call`` the name, signature and docstring of ``method`` (with ``returns``)."""
    functools.update_wrapper(call, method)
    del call.__wrapped__  # type: ignore[attr-defined]  # inspect reads __signature__ instead
    call.__signature__ = inspect.signature(method).replace(  # type: ignore[attr-defined]
        return_annotation=returns
    )
    owner = method.__qualname__.rpartition(".")[0]
    call.__doc__ = f"Blocking :meth:`{owner}.{method.__name__}`{note}.\n\n{method.__doc__ or ''}"


def _blocking(
    method: Callable[Concatenate[A, P], Awaitable[R]],
) -> Callable[Concatenate[_Blocking[A], P], R]:
    """The blocking method that runs the async ``method`` on the owner's loop."""

    def call(self: _Blocking[A], /, *args: P.args, **kwargs: P.kwargs) -> R:
        target = self._async
        return self._loop.run(lambda: method(target, *args, **kwargs))

    returns = inspect.signature(method).return_annotation
    _document(call, method, returns, ": it returns what awaiting that returns")
    return call


def _handing(
    method: Callable[Concatenate[Session, P], Awaitable[TaskHandle]],
) -> Callable[Concatenate[_Blocking[Session], P], SyncTaskHandle]:
    """The blocking submission method: ``method``'s handle, wrapped in a SyncTaskHandle."""

    def call(self: _Blocking[Session], /, *args: P.args, **kwargs: P.kwargs) -> SyncTaskHandle:
        session = self._async
        handle = self._loop.run(lambda: method(session, *args, **kwargs))
        return SyncTaskHandle(handle, self._loop)

    _document(call, method, "SyncTaskHandle", ": it returns a SyncTaskHandle, whose wait() blocks")
    return call


def _takes_arguments_of(
    init: Callable[Concatenate[Session, P], None],
) -> Callable[[Callable[..., None]], Callable[Concatenate[SyncSession, P], None]]:
    """Give the decorated ``__init__`` the parameters of ``init`` (``Session``'s)."""

    def decorate(method: Callable[..., None]) -> Callable[Concatenate[SyncSession, P], None]:
        method.__signature__ = inspect.signature(init)  # type: ignore[attr-defined]
        return method

    return decorate


class SyncTaskHandle(_Blocking[TaskHandle]):
    """A blocking reference to one task: :meth:`wait` returns its final record.

    Made by :class:`SyncSession` (:meth:`~SyncSession.vary`, :meth:`~SyncSession.task`, ...);
    it drives the :class:`TaskHandle` of the session underneath, with the same errors.
    Interrupting a wait (Ctrl-C) cancels only that wait: the task goes on at the provider,
    and ``session.task(handle.task_id)`` (or this handle) waits for it again.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(self._async).replace("<TaskHandle", "<SyncTaskHandle", 1)

    @property
    def task_id(self) -> str:
        """The task's id."""
        return self._async.task_id

    @property
    def request(self) -> SubmitRequest | None:
        """The request that created the task, or ``None`` for a re-attached handle."""
        return self._async.request

    @property
    def record(self) -> TaskRecord | None:
        """The last record seen by this handle, or ``None`` if none was fetched yet."""
        return self._async.record

    def done(self) -> bool:
        """Whether a final record has been seen (waiting then needs no request)."""
        return self._async.done()

    wait = _blocking(TaskHandle.wait)
    refresh = _blocking(TaskHandle.refresh)


class SyncSession(_Blocking[Session]):
    """A blocking session, for code that is not async (scripts, Django, Flask, Celery).

    It takes the arguments of :class:`Session` and has its methods, blocking::

        with midvary.SyncSession() as session:
            record = session.vary("parent-task-id", 0).wait(timeout=600.0)
            print(record.image_urls)

    The :class:`Session` underneath runs on one event loop in one background thread that
    this object owns; every call is a call of that session's method on that loop, so keys,
    the ``submit_rate`` limiter, the store and callbacks behave as in async code, and any
    number of threads may share one ``SyncSession`` (a web server's worker threads). It
    works in a thread that already runs an event loop (Jupyter, an async framework's sync
    handler), which it blocks while a call runs. Hooks (``on_event``, ``on_retry``) run
    on the session's loop thread and must not call the session.

    Ctrl-C during a blocking call cancels that call on the loop (a wait: the task goes on
    and can be re-attached by id; a submission: as cancelling it in async code).
    :meth:`close` (or leaving the ``with`` block) closes the session and joins its thread.

    Two arguments differ from :class:`Session`'s because they belong to an event loop:

    * ``store``: a :class:`RedisStore` or :class:`SQLiteStore` *not yet opened*: the
      ``SyncSession`` opens it on its loop and closes it when it closes (a store's
      connections belong to one loop, so give each ``SyncSession`` its own store object).
    * ``http_session`` and ``callbacks`` must belong to the session's loop; leave them
      ``None`` unless you create them there.

    Raises:
        TypeError, ValueError: An argument is invalid (as for :class:`Session`); no thread
            is left running.
        StoreError: The store could not be opened.

    """

    __slots__ = ("_store",)

    @_takes_arguments_of(Session.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        loop = _LoopThread("midvary-sync-session")
        store: Store | None = kwargs.get("store")

        async def start() -> Session:
            session = Session(*args, **kwargs)
            if store is not None:
                await store.open()
            return await session.__aenter__()

        try:
            session = loop.run(start)
        except BaseException:
            loop.close(lambda: asyncio.sleep(0))  # no session was made: nothing to close
            raise
        super().__init__(session, loop)
        self._store = store

    def __repr__(self) -> str:
        return repr(self._async).replace("<midvary.Session", "<midvary.SyncSession", 1)

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the session (as :meth:`Session.aclose`), its store, and join its thread.

        Blocking calls still running in other threads raise :class:`SessionClosedError`.
        Closing twice is harmless.
        """
        session, store = self._async, self._store

        async def last() -> None:
            try:
                await session.aclose()
            finally:
                if store is not None:
                    await store.close()

        self._loop.close(last)

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._async.base_url

    @property
    def outage(self) -> Outage | None:
        """The outage the session is waiting out, or ``None``: see :attr:`Session.outage`."""
        return self._async.outage

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run (or begun); a closed session cannot be reopened."""
        return self._loop.closing or self._async.closed

    @property
    def poll(self) -> PollPolicy:
        """The default :class:`PollPolicy` of every wait (assign one to change it)."""
        return self._async.poll

    @poll.setter
    def poll(self, policy: PollPolicy) -> None:
        self._async.poll = policy

    @property
    def retry(self) -> RetryPolicy:
        """The :class:`RetryPolicy` of submissions and downloads (assign one to change it)."""
        return self._async.retry

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self._async.retry = policy

    def call(
        self,
        function: Callable[Concatenate[Session, P], Awaitable[R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Run ``await function(session, *args, **kwargs)`` on the session's loop; block.

        ``session`` is the :class:`Session` underneath: this is how code of your own (an
        async function) uses it from blocking code, e.g. ``sync.call(my_job, "order-42")``
        with ``async def my_job(session, order): ...``. The function runs on the session's
        loop thread; the handles it makes belong to that loop (return records, not handles).

        Raises:
            SessionClosedError: The session is closed.
            EventLoopError: Called from the session's own loop thread (from a hook).

        """
        session = self._async
        return self._loop.run(lambda: function(session, *args, **kwargs))

    def task(self, task_id: str) -> SyncTaskHandle:
        """Re-attach a :class:`SyncTaskHandle` to an existing task id. No I/O.

        Raises:
            TypeError, ValueError: ``task_id`` is not a usable id.
            SessionClosedError: The session is closed.

        """
        session = self._async

        async def attach() -> TaskHandle:
            return session.task(task_id)

        return SyncTaskHandle(self._loop.run(attach), self._loop)

    vary = _handing(Session.vary)
    generate = _handing(Session.generate)
    upscale = _handing(Session.upscale)
    extend = _handing(Session.extend)
    submit = _handing(Session.submit)
    recover = _handing(Session.recover)
    run = _blocking(Session.run)
    # Generic in the requests' type, as Session.submit_all (a CollectAll) is.
    submit_all = blocking_options_of(Session.submit_many)(
        _blocking(cast("Callable[Concatenate[Session, ...], Awaitable[list[Any]]]",
                       Session.submit_all))
    )  # fmt: skip
    get_task = _blocking(Session.get_task)
    download = _blocking(Session.download)
    credits = _blocking(Session.credits)
