"""Polls per task and completion-to-resolution delay, with and without a CallbackReceiver.

Runs N tasks on the in-process fake provider three ways:

- ``polling``: no receiver, the session's default :class:`midvary.PollPolicy` (learned
  schedule included);
- ``callbacks``: a :class:`midvary.CallbackReceiver` (HMAC-signed deliveries) with its
  default safety poll;
- ``callbacks lost``: the same receiver, but the provider never calls back, so only the
  safety poll resolves the handles (the worst case of the safety net).

Time is compressed by ``--scale`` (0.1: a 40 s task takes 4 s): task durations and every
policy's seconds are multiplied by it, so the figures in "real s" are the benchmark's
seconds divided by the scale. The "delay" is from the moment the provider's task finished
(its clock is this process's ``time.monotonic``) to the moment ``await handle`` returned.

Run: ``.venv/bin/python -m benchmarks.callback_figures [--tasks 100] [--scale 0.1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import attrs

import midvary
from midvary.testing import FakeProvider, FakeSettings

HMAC_KEY = "benchmark-webhook-key"
#: Realistic vary durations, in real seconds ("tens of seconds").
REAL_DURATION = (20.0, 60.0)


def scaled(policy: midvary.PollPolicy, factor: float) -> midvary.PollPolicy:
    """``policy`` with every time in it multiplied by ``factor``."""

    def times(value: float | None) -> float | None:
        return None if value is None else value * factor

    return attrs.evolve(
        policy,
        initial_delay=policy.initial_delay * factor,
        max_delay=policy.max_delay * factor,
        jitter=policy.jitter * factor,
        timeout=times(policy.timeout),
        not_found_grace=policy.not_found_grace * factor,
        target_delay=times(policy.target_delay),
    )


@attrs.frozen
class Figures:
    """What one run measured; delays in benchmark seconds."""

    mode: str
    polls: list[int]
    delays: list[float]
    callbacks_delivered: int
    wall: float


async def run(mode: str, *, tasks: int, scale: float, seed: int) -> Figures:
    """Submit ``tasks`` vary tasks at once and await them all, the way ``mode`` says."""
    low, high = REAL_DURATION
    settings = FakeSettings(
        task_duration=(low * scale, high * scale),
        invisible_for=1.0 * scale,
        submit_limit=None,
        callbacks=mode != "callbacks lost",
        callback_hmac_key=HMAC_KEY,
    )
    receiver = (
        None
        if mode == "polling"
        else midvary.CallbackReceiver(
            hmac_key=HMAC_KEY, safety_poll=scaled(midvary.DEFAULT_SAFETY_POLL, scale)
        )
    )
    resolved: dict[str, float] = {}
    started = time.monotonic()
    async with FakeProvider(settings=settings, seed=seed) as fake:
        if receiver is not None:
            await receiver.start()
        try:
            async with midvary.Session(
                api_key=fake.api_key,
                base_url=fake.base_url,
                poll=scaled(midvary.PollPolicy(), scale),
                callbacks=receiver,
                seed=seed,
            ) as session:
                handles = await asyncio.gather(
                    *(session.vary("parent-bench", n % 4) for n in range(tasks))
                )

                async def resolve(handle: midvary.TaskHandle) -> None:
                    await handle
                    resolved[handle.task_id] = time.monotonic()

                await asyncio.gather(*(resolve(handle) for handle in handles))
        finally:
            if receiver is not None:
                await receiver.stop()
        wall = time.monotonic() - started
        polls = [fake.stats.polls.get(handle.task_id, 0) for handle in handles]
        delays = [resolved[h.task_id] - fake.task(h.task_id).finished_at for h in handles]
        delivered = fake.stats.callbacks_delivered
    return Figures(mode, polls, delays, delivered, wall)


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(all_figures: list[Figures], *, tasks: int, scale: float) -> None:
    """Print one table row per mode."""
    print(
        f"{tasks} tasks per mode, durations {REAL_DURATION[0]:g}-{REAL_DURATION[1]:g} real s, "
        f"time scale {scale:g} (delays in real seconds = benchmark seconds / {scale:g})"
    )
    header = (
        f"{'mode':<15} {'polls/task':>10} {'median':>6} {'max':>4} {'GETs':>5} "
        f"{'delay median':>12} {'p90':>6} {'max':>6} {'callbacks':>9} {'run s':>6}"
    )
    print(header)
    print("-" * len(header))
    # Loopback latency does not shrink with the scale: callback delays in real seconds are
    # the benchmark's milliseconds times 1/scale, an overstatement.
    for fig in all_figures:
        real = [delay / scale for delay in fig.delays]
        row: list[Any] = [
            f"{fig.mode:<15}",
            f"{statistics.fmean(fig.polls):>10.2f}",
            f"{statistics.median(fig.polls):>6g}",
            f"{max(fig.polls):>4d}",
            f"{sum(fig.polls):>5d}",
            f"{statistics.median(real):>11.2f}s",
            f"{quantile(real, 0.9):>5.2f}s",
            f"{max(real):>5.2f}s",
            f"{fig.callbacks_delivered:>9d}",
            f"{fig.wall:>6.1f}",
        ]
        print(" ".join(row))
    for fig in all_figures:
        print(
            f"{fig.mode}: median delay {statistics.median(fig.delays) * 1000:.1f} ms of "
            f"benchmark time, {len(fig.delays)} tasks, {sum(fig.polls)} record-info GETs"
        )


async def main() -> None:
    """Run the three modes one after another and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100, help="tasks per mode (default 100)")
    parser.add_argument("--scale", type=float, default=0.1, help="time compression (0.1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fake and the jitter")
    args = parser.parse_args()
    figures = [
        await run(mode, tasks=args.tasks, scale=args.scale, seed=args.seed)
        for mode in ("polling", "callbacks", "callbacks lost")
    ]
    report(figures, tasks=args.tasks, scale=args.scale)


if __name__ == "__main__":
    asyncio.run(main())
