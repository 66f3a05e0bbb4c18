"""Generate and upscale against the fake provider: the whole workflow on one pipeline."""

from __future__ import annotations

import asyncio

import attrs
import pytest

import midvary
import midvary.testing
from midvary.testing import ManualClock

from ..conditions import until
from .conftest import OpenSession, StartFake, finish

#: Enough patience for a storm of 429s (milliseconds, as the fast mode).
PATIENT_RETRY = attrs.evolve(midvary.testing.FAST_RETRY, attempts=200)
MIRROR = pytest.mark.parametrize("mirror", [False, True], ids=["http-200", "http-mirrored"])


async def test_generate_then_vary_each_image_then_upscale_one(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """A generate gives a grid of 4; each image varied; one upscaled to a record of 1 image."""
    fake = await start_fake()
    session = await open_session(fake)

    handle = await session.generate("a red fox in the snow", aspect_ratio="3:2", speed="fast")
    grid = await handle

    assert grid.status is midvary.TaskStatus.SUCCESS
    assert grid.task_type == "mj_txt2img"
    assert len(grid.image_urls) == 4
    assert grid.params == {
        "taskType": "mj_txt2img",
        "prompt": "a red fox in the snow",
        "speed": "fast",
        "aspectRatio": "3:2",
    }
    varied = [await (await session.vary(grid.task_id, i)) for i in range(4)]
    assert [record.task_type for record in varied] == ["mj_vary"] * 4
    assert [record.params["imageIndex"] for record in varied] == [0, 1, 2, 3]
    big = await (await session.upscale(grid.task_id, 2))
    assert (big.task_type, len(big.image_urls)) == ("mj_upscale", 1)
    assert big.params == {"taskId": grid.task_id, "imageIndex": 2}
    assert fake.stats.tasks_by_endpoint == {"generate": 1, "submit": 4, "upscale": 1}
    assert fake.stats.duplicate_submissions == 0


async def test_video_generate_has_its_batch_of_videos(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """A video generate comes back with video_batch_size result files."""
    fake = await start_fake()
    session = await open_session(fake)
    image = "https://img.test/in.png"
    record = await (
        await session.generate("waves", task_type="mj_video", file_urls=[image], video_batch_size=2)
    )
    assert record.task_type == "mj_video"
    assert len(record.image_urls) == 2
    assert all(url.endswith(".mp4") for url in record.image_urls)


@pytest.mark.parametrize("kind", ["vary", "upscale"])
async def test_a_parent_that_is_not_finished_is_a_typed_refusal(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock, kind: str
) -> None:
    """Varying or upscaling a grid still generating is refused (422) as ValidationError."""
    fake = await start_fake(clock=clock, invisible_for=0.0)
    session = await open_session(fake)
    grid = await session.generate("a fox")
    submit = session.vary if kind == "vary" else session.upscale

    with pytest.raises(midvary.ValidationError) as info:
        await submit(grid.task_id, 0)
    assert info.value.code == 422
    assert fake.stats.tasks_created == 1  # only the grid

    finish(clock, fake, grid.task_id)
    await grid
    child = await submit(grid.task_id, 0)
    assert fake.task(child.task_id).parent_task_id == grid.task_id


@MIRROR
async def test_an_unknown_parent_of_an_upscale_is_refused(
    start_fake: StartFake, open_session: OpenSession, mirror: bool
) -> None:
    """An upscale of a task the provider never made is a ValidationError, sent once."""
    fake = await start_fake(mirror_http_status=mirror)
    session = await open_session(fake)
    with pytest.raises(midvary.ValidationError) as info:
        await session.upscale("never-made", 1)
    assert info.value.http_status == (422 if mirror else 200)
    assert fake.stats.requests["upscale"] == 1


@MIRROR
async def test_out_of_credits_on_generate_and_upscale(
    start_fake: StartFake, open_session: OpenSession, mirror: bool
) -> None:
    """Code 402 on either endpoint is InsufficientCreditsError, never retried."""
    fake = await start_fake(credits=1, mirror_http_status=mirror)
    session = await open_session(fake)
    grid = await (await session.generate("a fox"))
    with pytest.raises(midvary.InsufficientCreditsError):
        await session.upscale(grid.task_id, 0)
    with pytest.raises(midvary.InsufficientCreditsError):
        await session.generate("another fox")
    assert (fake.stats.requests["upscale"], fake.stats.requests["generate"]) == (1, 2)


async def test_the_shared_limit_429_is_retried_for_generate(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """Generate and upscale meet the one account limit; their 429s are retried, not lost."""
    fake = await start_fake(submit_limit=(3, 0.1))
    session = await open_session(fake, retry=PATIENT_RETRY)
    parent = fake.sample_parent_id
    handles = await asyncio.gather(
        *(session.generate(f"fox {n}") for n in range(8)),
        *(session.upscale(parent, n) for n in range(4)),
        *(session.vary(parent, n) for n in range(4)),
    )
    assert len({handle.task_id for handle in handles}) == 16
    assert fake.stats.rate_limited > 0
    assert fake.stats.tasks_by_endpoint == {"generate": 8, "upscale": 4, "submit": 4}
    assert fake.stats.duplicate_submissions == 0


async def test_an_answer_lost_on_generate_is_uncertain_and_not_resent(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """A generate whose answer is dropped is SubmitUncertainError; the fake saw one POST."""
    fake = await start_fake(drop_submit_answer_rate=1.0)
    session = await open_session(fake)
    with pytest.raises(midvary.SubmitUncertainError) as info:
        await session.generate("a fox")
    assert isinstance(info.value.request, midvary.GenerateRequest)
    assert "generate('a fox')" in str(info.value)
    assert fake.stats.requests["generate"] == 1
    assert fake.stats.tasks_created == 1  # created and billed: that is why it is not re-sent


async def test_fan_out_mixes_the_three_kinds(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """submit_all takes generate, vary and upscale requests in one list: one outcome each."""
    fake = await start_fake()
    session = await open_session(fake)
    parent = fake.sample_parent_id
    requests: list[midvary.GenerateRequest | midvary.VaryRequest | midvary.UpscaleRequest] = [
        midvary.GenerateRequest(prompt="a fox", id="g"),
        midvary.VaryRequest(task_id=parent, image_index=1, id="v"),
        midvary.UpscaleRequest(task_id=parent, image_index=3, id="u"),
        midvary.UpscaleRequest(task_id="never-made", image_index=0, id="bad"),
    ]
    outcomes = await session.submit_all(requests)
    assert [outcome.request for outcome in outcomes] == requests
    kinds = [outcome.record.task_type if outcome.record else None for outcome in outcomes]
    assert kinds == ["mj_txt2img", "mj_vary", "mj_upscale", None]
    assert isinstance(outcomes[3].error, midvary.ValidationError)
    assert fake.stats.tasks_by_endpoint == {"generate": 1, "submit": 1, "upscale": 1}


async def test_generate_is_resolved_by_its_callback(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """With a CallbackReceiver, a generate gets a ticket URL and its delivery resolves it."""
    fake = await start_fake(clock=clock, invisible_for=0.0)
    never = midvary.PollPolicy(
        initial_delay=3600.0, max_delay=3600.0, jitter=0.0, timeout=None, target_delay=None
    )
    async with midvary.CallbackReceiver(safety_poll=never) as receiver:
        await receiver.start("127.0.0.1", 0)
        async with midvary.Session(
            api_key=fake.api_key, base_url=fake.base_url, callbacks=receiver, submit_rate=None
        ) as session:
            handle = await session.generate("a fox by callback")
            sent = fake.task(handle.task_id).callback_url
            assert sent is not None
            assert sent.startswith(receiver.public_url)
            waiter = asyncio.create_task(handle.wait())
            finish(clock, fake, handle.task_id)
            record = await waiter
    assert len(record.image_urls) == 4
    await until(lambda: fake.stats.callbacks_delivered == 1)
    assert fake.stats.polls.get(handle.task_id, 0) == 1
