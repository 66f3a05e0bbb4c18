"""The demo's plan: the fake provider's habits and the client's settings that match them.

It configures the fake only through the public :mod:`midvary.testing` API
(:class:`~midvary.testing.FakeSettings`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, TypeVar

import attrs

import midvary
from midvary.testing import FakeSettings

from ..chain import IMAGE_INDEXES, Step, steps_for
from ..jobs import BulkJob

_Policy = TypeVar("_Policy", midvary.PollPolicy, midvary.RetryPolicy)

#: The demo's prompts, used in turn (a second round gets a "take 2" suffix: the fake
#: counts the same prompt twice as a duplicate submission).
PROMPTS: Final = (
    "a red fox in the snow",
    "a lighthouse at dusk, oil painting",
    "a bowl of ramen, studio photo",
    "an old tram in Lisbon, watercolour",
    "a paper crane on a desk, macro",
    "a glass greenhouse full of ferns",
)


@attrs.frozen(kw_only=True)
class DemoPlan:
    """What the demo runs: the fake provider's habits and the client's matching settings.

    Attributes:
        scale: Multiplies every time, in the fake and in the client's policies (1.0, or
            :data:`midvary._cli.demo.FAST_SCALE` with ``--fast``).
        prompts: Prompts generated; each grid, once done, gets its 4 images varied and one
            upscaled (image ``n % 4`` of the ``n``-th prompt, counting from 0).
        concurrency: Jobs in flight at once (the ``submit_many`` default).
        submit_limit: Submissions per window the fake accepts, and the client is told.
        submit_window: The window of ``submit_limit``, in seconds before scaling.
    """

    scale: float = 1.0
    prompts: int = 6
    concurrency: int = 16
    submit_limit: int = 8
    submit_window: float = 2.0

    @property
    def jobs(self) -> int:
        """How many jobs in all: per prompt, 1 generate, 4 vary, 1 upscale."""
        return len(self.jobs_to_run())

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
            fault_endpoints=("generate", "submit", "upscale", "record-info"),
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

    def jobs_to_run(self) -> list[BulkJob]:
        """The jobs, as ``midvary bulk`` holds a JOBS file's generate rows and their ``then``.

        Per prompt: a generate job keyed ``prompt-N`` (N from 1), then its children keyed
        ``prompt-N/vary0`` .. ``prompt-N/vary3`` and ``prompt-N/upscaleI``, whose requests
        are made from the grid's task id once it succeeds.
        """
        jobs: list[BulkJob] = []
        for n in range(self.prompts):
            text = PROMPTS[n % len(PROMPTS)]
            if n >= len(PROMPTS):
                text += f", take {n // len(PROMPTS) + 1}"
            key = f"prompt-{n + 1}"
            then = (*steps_for("vary", IMAGE_INDEXES), Step("upscale", n % len(IMAGE_INDEXES)))
            grid = BulkJob(
                key=key,
                line=n + 1,
                content=key,
                request=midvary.GenerateRequest(prompt=text, id=key),
                then=then,
            )
            jobs.extend((grid, *grid.children()))
        return jobs

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
            f"client: Session(submit_rate=({count}, {window:g})) -> submit_many(an async input: "
            f"{self.prompts} GenerateRequests, then as each grid succeeds its 4 VaryRequests "
            f"and 1 UpscaleRequest; concurrency={self.concurrency}, download=DIR)"
        )
