"""Recovery of a submission whose answer was lost, by the provider's callback.

The provider calls back every task it created, at the ``callBackUrl`` its submission
carried. A submission sent with a receiver's ticket whose answer was lost
(:class:`~midvary.SubmitUncertainError`) therefore keeps its ticket, marked lost
(``_tickets``), and a :class:`Recovery` waits for a delivery to it:

1. a delivery is checked as any other (``_callbacks``: token, signature, body), against the
   task id its body names: that is only a claim;
2. the claim is confirmed with one ``record-info`` GET (:meth:`TaskHandle.refresh`), whose
   ``paramJson`` echo must be the submission's: its parent ``taskId`` and ``imageIndex``
   (or ``taskType`` and ``prompt``) and a ``callBackUrl`` ending in the ticket's token
   (:func:`echo_problem`);
3. then the ticket is bound to the task as if the answer had come, a keyed submission's key
   records the task id (a re-run, another process or a queue's re-delivery re-attaches to
   it), and the handle is returned.

With a receiver on a shared store, the claims are also kept in the token's store record,
and a keyed submission's token is findable from its key: a later run of the key, in any
process, recovers it the same way (with no ticket of its own: it waits on the store's
record, looking again at a growing interval). A recovery ends unrecovered when the token
expires (the receiver's ``token_ttl``), its session closes, or its caller's timeout passes;
it never sends anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from ._errors import APIError, NotFoundError, ProtocolError, StoreError, TransportError
from ._handle import TaskHandle
from ._polling import Alarm
from ._relay import token_id

if TYPE_CHECKING:
    from ._config import PollPolicy
    from ._core import SessionCore
    from ._models import SubmitRequest, TaskRecord
    from ._relay import CallbackRelay
    from ._submit import SubmitStore
    from ._tickets import Ticket

logger = logging.getLogger(__name__)

#: Seconds between two looks at the store's record of a lost token (doubling to the last).
RECHECK: Final = (0.25, 5.0)
#: The fields of a submission's body its record's echo must repeat (those it has).
ECHOED: Final = ("taskId", "imageIndex", "index", "taskType", "prompt")


def echo_problem(record: TaskRecord, body: Mapping[str, Any], token_name: str) -> str | None:
    """Why ``record`` is not the task of the submission sent as ``body``; ``None`` if it is.

    Args:
        record: The task's record (one ``record-info`` GET).
        body: The submission's wire body (its callback URL aside).
        token_name: The ``_relay.token_id`` of the submission's callback token.

    """
    params = record.params
    for field in ECHOED:
        if field in body and params.get(field) != body[field]:
            return f"its {field} is {params.get(field)!r}, the submission's {body[field]!r}"
    url = params.get("callBackUrl")
    if not isinstance(url, str) or token_id(url.split("?", 1)[0].rpartition("/")[2]) != token_name:
        return "its callBackUrl does not carry the submission's callback token"
    return None


class Recovery:
    """Waits for the callback of one submission whose answer was lost; see the module.

    Args:
        core: The session's shared state (the confirming GET, open/closed).
        request: The submission's request.
        body: Its wire body (what the record's echo is compared with).
        token_name: The ``_relay.token_id`` of its callback token.
        ticket: The lost ticket in this process's receiver, or ``None`` (a later run: the
            store's record only).
        relay: The receiver's shared store, or ``None``.
        poll: The poll policy of the recovered handle (the receiver's safety poll).
        keys: Where a keyed submission's key records the task id; ``None`` for no key.
        key: The submission's key, or ``None``.

    """

    def __init__(
        self,
        core: SessionCore,
        request: SubmitRequest,
        body: Mapping[str, Any],
        *,
        token_name: str,
        ticket: Ticket | None,
        relay: CallbackRelay | None,
        poll: PollPolicy | None,
        keys: SubmitStore | None,
        key: str | None,
    ) -> None:
        self._core = core
        self._request = request
        self._body = body
        self._token_name = token_name
        self._ticket = ticket
        self._relay = relay
        self._poll = poll
        self._keys = keys if key is not None else None
        self._key = key or ""
        self._refuted: set[str] = set()
        self._handle: TaskHandle | None = None

    async def wait(self, timeout: float | None) -> TaskHandle | None:
        """Wait up to ``timeout`` seconds (``None``: while the token lives) for the task.

        Returns:
            The handle of the confirmed task, or ``None`` when none was confirmed: the
            token expired or was forgotten, or ``timeout`` passed (call again later).

        Raises:
            SessionClosedError: The session closed.

        """
        if self._handle is not None:
            return self._handle
        loop = asyncio.get_running_loop()
        give_up = None if timeout is None else loop.time() + timeout
        pause = RECHECK[0]
        while True:
            self._core.check_open()
            ticket = self._ticket
            if ticket is not None:
                ticket.news.clear()
            claims, alive = await self._claims()
            for task_id in claims:
                handle = await self._confirm(task_id)
                if handle is not None:
                    return handle
            left = self._left(loop, give_up)
            if not alive or (left is not None and left <= 0):
                return None
            wait = pause if left is None else min(pause, left)
            if claims or ticket is None:  # after a refuted claim, no GET before the pause
                await asyncio.sleep(wait)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await ticket.news.wait()
            pause = min(RECHECK[1], pause * 2)

    def _left(self, loop: asyncio.AbstractEventLoop, give_up: float | None) -> float | None:
        """Seconds left to wait (the caller's deadline and the local ticket's expiry)."""
        left = None if give_up is None else give_up - loop.time()
        ticket = self._ticket
        if ticket is not None:
            expires = ticket.expires_at - ticket.book.clock()
            left = expires if left is None else min(left, expires)
        return left

    async def _claims(self) -> tuple[list[str], bool]:
        """The task ids deliveries named, not refuted yet, and whether the token lives."""
        claims: list[str] = []
        ticket = self._ticket
        alive = False
        if ticket is not None:
            alive = ticket.live and ticket.lost
            claims.extend(ticket.reports)
        if self._relay is not None:
            try:
                record = await self._relay.record(self._token_name)
            except StoreError as exc:
                logger.warning("could not look for a lost answer's callback: %s", exc)
                alive = True  # not known to be gone: look again later
            else:
                if record is not None:
                    alive = alive or ticket is None
                    if record.reported is not None and record.reported not in claims:
                        claims.append(record.reported)
                elif ticket is None:
                    alive = False
        return [claim for claim in claims if claim not in self._refuted], alive

    async def _confirm(self, task_id: str) -> TaskHandle | None:
        """One GET of ``task_id``: its handle if the record is this submission's."""
        alarm = Alarm()
        handle = TaskHandle(
            self._core, task_id, request=self._request, poll=self._poll, alarm=alarm
        )
        try:
            record = await handle.refresh()
        except NotFoundError as exc:  # no such task (in this account): forget the claim
            self._refuted.add(task_id)
            logger.warning("a callback for a lost answer named task %s: %s", task_id, exc)
            return None
        except (APIError, TransportError, ProtocolError) as exc:  # look again later
            logger.warning("could not confirm task %s of a lost answer: %s", task_id, exc)
            return None
        problem = echo_problem(record, self._body, self._token_name)
        if problem is not None:
            self._refuted.add(task_id)
            logger.warning(
                "a callback named task %s for %s, but %s: ignored",
                task_id,
                self._request.describe(),
                problem,
            )
            return None
        ticket = self._ticket
        if ticket is not None and ticket.live:
            ticket.bind(task_id, alarm)
        if self._keys is not None:
            await self._record_key(self._keys, task_id)
        logger.info(
            "recovered %s as task %s (its answer was lost; the provider's callback named it)",
            self._request.describe(),
            task_id,
        )
        self._handle = handle
        return handle

    async def _record_key(self, keys: SubmitStore, task_id: str) -> None:
        """Record key -> ``task_id``; a failure is logged with both, never raised."""
        try:
            recorded = await keys.recovered(self._key, task_id)
            problem = "" if recorded else "the key was forgotten or names another task"
        except StoreError as exc:
            problem = str(exc)
        if problem:
            logger.warning(
                "recovered %s as task %s, but the store did not record it (%s)",
                self._request.describe(),
                task_id,
                problem,
            )
