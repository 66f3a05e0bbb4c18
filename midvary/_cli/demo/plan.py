"""The demo's plan: the fake provider's habits and the client's settings that match them.

It configures the fake only through the public :mod:`midvary.testing` API
(:class:`~midvary.testing.FakeSettings`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import attrs

import midvary
from midvary.testing import FakeSettings

_Policy = TypeVar("_Policy", midvary.PollPolicy, midvary.RetryPolicy)


@attrs.frozen(kw_only=True)
class DemoPlan:
    """What the demo runs: the fake provider's habits and the client's matching settings.

    Attributes:
        scale: Multiplies every time, in the fake and in the client's policies (1.0, or
            :data:`midvary._cli.demo.FAST_SCALE` with ``--fast``).
        parents: Parent tasks; each gets its 4 images varied.
        concurrency: Jobs in flight at once (the ``vary_many`` default).
        submit_limit: Submissions per window the fake accepts, and the client is told.
        submit_window: The window of ``submit_limit``, in seconds before scaling.
    """

    scale: float = 1.0
    parents: int = 6
    concurrency: int = 16
    submit_limit: int = 8
    submit_window: float = 2.0

    @property
    def jobs(self) -> int:
        """How many vary jobs: 4 per parent."""
        return self.parents * 4

    @property
    def submit_rate(self) -> tuple[int, float]:
        """The fake's submit limit, ``(count, window seconds)``, scaled."""
        return self.submit_limit, self.submit_window * self.scale

    def fake_settings(self) -> FakeSettings:
        """The fake provider's knobs."""
        s = self.scale
        return FakeSettings(
            task_duration=(1.0 * s, 3.0 * s),
            invisible_for=0.5 * s,
            failure_rate=0.15,
            create_failure_share=0.5,  # as many successFlag 2 as 3
            submit_limit=self.submit_rate,
            maintenance=((3.0 * s, 5.0 * s),),
            fault_rate=0.04,
            fault_endpoints=("submit", "record-info"),
            drop_submit_answer_rate=0.05,
            time_format="mixed",
        )

    def poll(self) -> midvary.PollPolicy:
        """The library's default :class:`PollPolicy`, its times scaled."""
        default = midvary.PollPolicy()
        scaled = self._scaled(default, "initial_delay", "max_delay", "jitter")
        return attrs.evolve(scaled, target_delay=(default.target_delay or 3.0) * self.scale)

    def retry(self) -> midvary.RetryPolicy:
        """The library's default :class:`RetryPolicy`, its times scaled."""
        return self._scaled(midvary.RetryPolicy(), "wait_initial", "wait_max", "wait_jitter")

    def _scaled(self, policy: _Policy, *times: str) -> _Policy:
        """``policy`` with each field named in ``times`` (seconds) multiplied by the scale."""
        return attrs.evolve(policy, **{name: getattr(policy, name) * self.scale for name in times})

    def requests(self) -> list[midvary.VaryRequest]:
        """The jobs: each image 0..3 of each parent task."""
        return [
            midvary.VaryRequest(task_id=f"parent-demo-{parent}", image_index=index)
            for parent in range(1, self.parents + 1)
            for index in range(4)
        ]

    def describe(self) -> Iterator[str]:
        """What the demo is about to do, for people."""
        fake = self.fake_settings()
        low, high = fake.task_duration
        start, end = fake.maintenance[0]
        count, window = self.submit_rate
        yield (
            f"fake provider: tasks of {low:g}-{high:g} s, {fake.failure_rate:.0%} failing "
            f"(successFlag 2 or 3), at most {count} submissions per {window:g} s, maintenance "
            f"(455) from {start:g} s to {end:g} s, {fake.fault_rate:.0%} of answers spoiled, "
            f"{fake.drop_submit_answer_rate:.0%} of submit answers lost"
        )
        yield (
            f"client: Session(submit_rate=({count}, {window:g})) -> vary_many({self.jobs} "
            f"requests, concurrency={self.concurrency}, download=DIR)"
        )
