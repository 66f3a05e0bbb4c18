"""How RedisStore's script calls are packed: its keys and arguments as RESP bytes.

Every operation is one call of the one script (``_lua.py``), whose KEYS and ARGV are listed
there. Most of a call's parts are the same from call to call (the namespace's five key
names, the operation, the namespace's marker, the lease, the rate), so :class:`Packer`
packs them once and joins them with the few that change (the key, the holder, the slot,
the fingerprint and request, the task id): about a fifth of the work of packing all
twenty-one parts each time.
"""

from __future__ import annotations

from typing import Final

from ._base import SlotRequest, new_epoch
from ._redis_pipe import bulk

PREFIX: Final = "midvary:{"
EMPTY: Final = bulk(b"")
_REFUNDED: Final = bulk(b"1")
#: ARGV 8-10 of a call without a slot: no count, no window, no slot lease.
_NO_RATE: Final = EMPTY + EMPTY + bulk(b"0.0")
#: ARGV 11-13 of a call that sends none of them.
NO_EXTRA: Final = EMPTY * 3
#: ARGV 11-12 of a call that sends neither.
NO_FINGERPRINT: Final = EMPTY * 2
#: The script's operations (ARGV 1), packed.
OPS: Final = {
    op: bulk(op.encode())
    for op in (
        "claim", "send", "renew", "task", "release", "unsend", "uncertain", "done",
        "acquire", "end", "slow", "allowance",
    )
}  # fmt: skip
#: The most packed leases or rates kept (a session uses one of each; more start over).
_CACHED: Final = 64


def key_names(namespace: str, key: str = "") -> list[str]:
    """KEYS 1-5 of a call: the marker, ``key``'s hash, the window, its stamps and flight."""
    base = f"{PREFIX}{namespace}}}:"
    return [base + "epoch", base + "k:" + key, base + "win", base + "stamps", base + "flight"]


def extra(fingerprint: str = "", request: str = "", task_id: str = "") -> bytes:
    """ARGV 11-13 packed: fingerprint (or pause, s), request JSON, task id."""
    return bulk(fingerprint.encode()) + bulk(request.encode()) + bulk(task_id.encode())


def _slot_rate(slot: SlotRequest) -> bytes:
    """ARGV 8-10 packed: ``slot``'s count and window ('' = no limit), and its lease (s)."""
    count, window = slot.rate if slot.rate is not None else ("", "")
    return b"".join(bulk(str(part).encode()) for part in (count, window, slot.lease_s))


class Space:
    """One namespace's constant parts of every script call, packed once."""

    __slots__ = ("_markers", "after_key", "before_key", "epoch", "key_prefix")

    def __init__(self, namespace: str) -> None:
        epoch, record, *window = key_names(namespace)
        self.before_key = bulk(epoch.encode())
        self.key_prefix = record.encode()  # the key's hash is this, then the key
        self.after_key = b"".join(bulk(name.encode()) for name in window)
        self.epoch = b""  # the namespace's marker, once a call has seen it
        self._markers = b""

    def markers(self) -> bytes:
        """ARGV 2-3 packed: the marker expected, and a fresh one if none is known yet."""
        return self._markers or EMPTY + bulk(new_epoch().encode())

    def learn(self, epoch: bytes) -> None:
        """A call saw the namespace's marker ``epoch``."""
        self.epoch = epoch
        self._markers = bulk(epoch) + EMPTY


class Packer:
    """Packs one store's script calls (the parts after ``EVALSHA sha 5``)."""

    __slots__ = ("_rates", "_spaces", "_times")

    def __init__(self) -> None:
        self._spaces: dict[str, Space] = {}
        self._times: dict[tuple[float, float], bytes] = {}
        self._rates: dict[tuple[tuple[int, float] | None, float], bytes] = {}

    def space(self, namespace: str) -> Space:
        """The packed constant parts of ``namespace``'s calls (its marker, once seen)."""
        space = self._spaces.get(namespace)
        if space is None:
            space = self._spaces[namespace] = Space(namespace)
        return space

    def command(
        self,
        space: Space,
        op: bytes,
        key: str,
        *,
        holder: str,
        lease_s: float,
        key_ttl: float,
        slot: SlotRequest | None,
        slot_id: str | None,
        extra: bytes,
        refunded: bool,
    ) -> bytes:
        """KEYS and ARGV of one call of ``op`` (a row of :data:`OPS`; ``extra``: ARGV 11-13).

        ``lease_s`` and ``key_ttl`` are seconds; ``slot`` (``None``: none) gives the slot id
        and the rate, else ``slot_id`` (``None``: no slot) the slot to end.
        """
        if slot is not None:
            slot_id = slot.slot_id
            rate = self._rates.get((slot.rate, slot.lease_s)) or self._rate(slot)
        else:
            rate = _NO_RATE
        return b"".join((
            space.before_key,
            bulk(space.key_prefix + key.encode()),
            space.after_key,
            op,
            space.markers(),
            bulk(holder.encode()),
            self._times.get((lease_s, key_ttl)) or self._time(lease_s, key_ttl),
            bulk(slot_id.encode()) if slot_id else EMPTY,
            rate,
            extra,
            _REFUNDED if refunded else EMPTY,
        ))  # fmt: skip

    def _time(self, lease_s: float, key_ttl: float) -> bytes:
        """ARGV 5-6 packed: the claim's lease (s) and the key's ttl (ms), kept for next time."""
        if len(self._times) >= _CACHED:
            self._times.clear()
        packed = bulk(str(lease_s).encode()) + bulk(b"%d" % int(key_ttl * 1000))
        self._times[lease_s, key_ttl] = packed
        return packed

    def _rate(self, slot: SlotRequest) -> bytes:
        """ARGV 8-10 packed for ``slot``, kept for next time."""
        if len(self._rates) >= _CACHED:
            self._rates.clear()
        packed = self._rates[slot.rate, slot.lease_s] = _slot_rate(slot)
        return packed
