"""POST generateVary: answers, auth, validation, parents, limits, credits, maintenance."""

from __future__ import annotations

from typing import Any

import pytest

from midvary.testing import ManualClock

from .conftest import SUBMIT, StartFake, finish


async def test_accepted_submission_answers_a_new_task_id(start_fake: StartFake) -> None:
    """An accepted submission is HTTP 200, code 200, msg "success", data.taskId a new id."""
    fake, client = await start_fake()
    answer = await client.submit(taskId="parent-a", imageIndex=1)
    assert (answer.status, answer.code, answer.body["msg"]) == (200, 200, "success")
    assert set(answer.data) == {"taskId"}
    task_id = answer.data["taskId"]
    assert task_id != "parent-a"
    assert task_id in fake.tasks
    assert fake.stats.tasks_created == 1
    assert fake.task(task_id).parent_task_id == "parent-a"


@pytest.mark.parametrize("key", [None, "wrong-key", "", " "])
async def test_missing_or_wrong_key_is_401_on_both_endpoints(
    start_fake: StartFake, key: str | None
) -> None:
    """A missing or wrong bearer key gets code 401 on submit and on record-info."""
    fake, client = await start_fake()
    task_id = await client.submit_ok()
    submit = await client.submit(key=key)
    record = await client.record(task_id, key=key)
    assert (submit.status, submit.code) == (200, 401)
    assert (record.status, record.code) == (200, 401)
    assert fake.stats.tasks_created == 1


async def test_other_auth_schemes_are_401(start_fake: StartFake) -> None:
    """The key must come as "Bearer <key>": a Basic header with the right key is refused."""
    fake, client = await start_fake()
    answer = await client.request(
        "POST",
        SUBMIT,
        key=None,
        headers={"Authorization": f"Basic {fake.api_key}"},
        json={"taskId": "parent-1", "imageIndex": 0},
    )
    assert answer.code == 401
    lower = await client.request(
        "POST",
        SUBMIT,
        key=None,
        headers={"Authorization": f"bearer {fake.api_key}"},
        json={"taskId": "parent-1", "imageIndex": 0},
    )
    assert lower.code == 200


async def test_rotated_key_makes_the_old_key_401(start_fake: StartFake) -> None:
    """After rotate_api_key() (or setting api_key) the old key is refused, the new accepted."""
    fake, client = await start_fake(api_key="first-key")
    assert fake.api_key == "first-key"
    await client.submit_ok()
    new_key = fake.rotate_api_key()
    assert new_key.startswith("fake-")
    assert new_key != "first-key"
    assert (await client.submit(key="first-key")).code == 401
    assert (await client.submit()).code == 200
    fake.api_key = "banned-then-set"
    assert (await client.submit(key=new_key)).code == 401


async def test_errors_arrive_inside_http_200_by_default(start_fake: StartFake) -> None:
    """Like the real provider, error envelopes come with HTTP 200 unless mirroring is on."""
    _, client = await start_fake()
    answers = [
        await client.submit(key="bad"),
        await client.submit(imageIndex=9),
        await client.submit(taskId="unknown-parent"),
        await client.record("no-such-task"),
    ]
    assert [(a.status, a.code) for a in answers] == [(200, 401), (200, 400), (200, 422), (200, 422)]


async def test_mirror_http_status_sends_the_code_as_status(start_fake: StartFake) -> None:
    """With mirror_http_status the HTTP status equals the envelope code, 200 included."""
    _, client = await start_fake(mirror_http_status=True, credits=0)
    answers = [
        await client.submit(key="bad"),
        await client.submit(imageIndex=9),
        await client.submit(taskId="unknown-parent"),
        await client.submit(),
        await client.record("no-such-task"),
    ]
    assert [(a.status, a.code) for a in answers] == [
        (401, 401),
        (400, 400),
        (422, 422),
        (402, 402),
        (422, 422),
    ]


BAD_BODIES: list[tuple[str, Any]] = [
    ("missing taskId", {"imageIndex": 0}),
    ("null taskId", {"taskId": None, "imageIndex": 0}),
    ("int taskId", {"taskId": 123, "imageIndex": 0}),
    ("empty taskId", {"taskId": "", "imageIndex": 0}),
    ("blank taskId", {"taskId": "  ", "imageIndex": 0}),
    ("missing imageIndex", {"taskId": "parent-1"}),
    ("null imageIndex", {"taskId": "parent-1", "imageIndex": None}),
    ("str imageIndex", {"taskId": "parent-1", "imageIndex": "1"}),
    ("float imageIndex", {"taskId": "parent-1", "imageIndex": 1.0}),
    ("bool imageIndex", {"taskId": "parent-1", "imageIndex": True}),
    ("imageIndex 4", {"taskId": "parent-1", "imageIndex": 4}),
    ("imageIndex -1", {"taskId": "parent-1", "imageIndex": -1}),
    ("int waterMark", {"taskId": "parent-1", "imageIndex": 0, "waterMark": 5}),
    ("ftp callBackUrl", {"taskId": "parent-1", "imageIndex": 0, "callBackUrl": "ftp://h/x"}),
    ("relative callBackUrl", {"taskId": "parent-1", "imageIndex": 0, "callBackUrl": "/hook"}),
    ("int callBackUrl", {"taskId": "parent-1", "imageIndex": 0, "callBackUrl": 7}),
    ("a list body", [{"taskId": "parent-1", "imageIndex": 0}]),
    ("a string body", "parent-1"),
]


@pytest.mark.parametrize(("case", "body"), BAD_BODIES, ids=[case for case, _ in BAD_BODIES])
async def test_bad_fields_are_400_and_create_nothing(
    start_fake: StartFake, case: str, body: Any
) -> None:
    """Each bad or missing field (bool imageIndex included) is code 400 with a msg."""
    fake, client = await start_fake()
    answer = await client.submit(body)
    assert answer.code == 400, case
    assert answer.body["msg"]
    assert answer.data is None
    assert fake.stats.tasks_created == 0


async def test_null_optional_fields_count_as_absent(start_fake: StartFake) -> None:
    """The optional waterMark and callBackUrl may be null, like leaving them out."""
    _, client = await start_fake()
    await client.submit_ok(waterMark=None, callBackUrl=None)


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b'{"taskId": "parent-1",'])
async def test_malformed_json_is_400(start_fake: StartFake, raw: bytes) -> None:
    """A body that is not JSON is code 400."""
    fake, client = await start_fake()
    answer = await client.request(
        "POST", SUBMIT, data=raw, headers={"Content-Type": "application/json"}
    )
    assert answer.code == 400
    assert fake.stats.tasks_created == 0


async def test_unknown_parent_is_422(start_fake: StartFake) -> None:
    """A parent the provider does not know is code 422 with a msg naming it."""
    fake, client = await start_fake()
    answer = await client.submit(taskId="nobody-knows-me")
    assert answer.code == 422
    assert "nobody-knows-me" in answer.body["msg"]
    assert fake.stats.tasks_created == 0


async def test_parents_by_prefix_by_add_parent_and_by_success(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """Parents: ids with parent_prefix, add_parent() ids, and fake tasks once they succeed."""
    fake, client = await start_fake(parent_prefix="mj-")
    assert (await client.submit(taskId="parent-1")).code == 422
    first = await client.submit_ok(taskId="mj-123")
    fake.add_parent("added-by-test")
    await client.submit_ok(taskId="added-by-test")
    assert (await client.submit(taskId=first)).code == 422  # still generating
    finish(clock, fake, first)
    await client.submit_ok(taskId=first)


async def test_failed_fake_task_is_not_a_parent(start_fake: StartFake, clock: ManualClock) -> None:
    """A task that ended in failure cannot be varied."""
    fake, client = await start_fake(failure_rate=1.0)
    failed = await client.submit_ok()
    finish(clock, fake, failed)
    assert (await client.submit(taskId=failed)).code == 422


async def test_no_parent_prefix_means_only_explicit_parents(start_fake: StartFake) -> None:
    """parent_prefix=None leaves add_parent() as the only way to name an outside parent."""
    fake, client = await start_fake(parent_prefix=None)
    assert (await client.submit(taskId="parent-1")).code == 422
    fake.add_parent("parent-1")
    await client.submit_ok(taskId="parent-1")


async def test_index_base_one_expects_1_to_4(start_fake: StartFake) -> None:
    """With index_base=1 imageIndex 1..4 is accepted, 0 is code 400, and 4 is echoed as 4."""
    fake, client = await start_fake(index_base=1)
    assert (await client.submit(imageIndex=0)).code == 400
    for index in (1, 2, 3, 4):
        task_id = await client.submit_ok(imageIndex=index)
        assert fake.task(task_id).image_index == index
    assert (await client.submit(imageIndex=5)).code == 400


async def test_default_index_base_expects_0_to_3(start_fake: StartFake) -> None:
    """By default imageIndex 0..3 is accepted (the schema), 4 is not."""
    _, client = await start_fake()
    for index in range(4):
        await client.submit_ok(imageIndex=index)
    assert (await client.submit(imageIndex=4)).code == 400


async def test_submit_limit_is_http_429_and_recovers_after_the_window(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """Beyond n per window: HTTP 429 + code 429 (even unmirrored), not queued; then recovers."""
    # Steps that are exact in binary, so the window's edge is not a rounding question.
    fake, client = await start_fake(submit_limit=(3, 0.5))
    for _ in range(3):
        await client.submit_ok()
        clock.advance(0.125)
    refused = await client.submit()
    assert (refused.status, refused.code) == (429, 429)
    assert fake.stats.tasks_created == 3
    # Refused and invalid submissions do not use the budget.
    assert (await client.submit(imageIndex=7)).code == 400
    clock.advance(0.125)  # the first accepted submission leaves the window
    await client.submit_ok()
    assert (await client.submit()).status == 429
    clock.advance(0.5)
    for _ in range(3):
        await client.submit_ok()
    assert fake.stats.rate_limited == 2
    assert fake.stats.codes[429] == 2


async def test_submit_limit_can_change_at_runtime(start_fake: StartFake) -> None:
    """update(submit_limit=...) applies to the next submission; None lifts the limit."""
    fake, client = await start_fake(submit_limit=(1, 10.0))
    await client.submit_ok()
    assert (await client.submit()).status == 429
    fake.update(submit_limit=None)
    await client.submit_ok()


async def test_credits_run_out_with_402(start_fake: StartFake) -> None:
    """Each accepted submission uses a credit; at 0 the answer is code 402, until refilled."""
    fake, client = await start_fake(credits=2)
    await client.submit_ok()
    await client.submit_ok()
    assert fake.credits_left == 0
    answer = await client.submit()
    assert answer.code == 402
    assert fake.stats.tasks_created == 2
    fake.update(credits=1)
    assert fake.credits_left == 1
    await client.submit_ok()
    assert (await client.submit()).code == 402


async def test_duplicate_submissions_are_counted(start_fake: StartFake) -> None:
    """The same parent, imageIndex and waterMark accepted again counts as a duplicate."""
    fake, client = await start_fake()
    await client.submit_ok(taskId="parent-1", imageIndex=0)
    await client.submit_ok(taskId="parent-1", imageIndex=0)
    await client.submit_ok(taskId="parent-1", imageIndex=0, waterMark="w")
    await client.submit_ok(taskId="parent-1", imageIndex=1)
    await client.submit_ok(taskId="parent-2", imageIndex=0)
    await client.submit_ok(taskId="parent-1", imageIndex=0, callBackUrl="http://127.0.0.1:9/x")
    assert fake.stats.duplicate_submissions == 2
    assert fake.stats.tasks_created == 6


async def test_maintenance_windows_answer_455_on_both_endpoints(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """Inside a maintenance window (seconds since start) both endpoints answer code 455."""
    fake, client = await start_fake(maintenance=[(1.0, 2.0)])
    task_id = await client.submit_ok()
    clock.advance(1.0)
    assert fake.now() == pytest.approx(1.0)
    submit, record = await client.submit(), await client.record(task_id)
    assert (submit.status, submit.code) == (200, 455)
    assert (record.status, record.code) == (200, 455)
    clock.advance(1.0)
    await client.submit_ok()
    assert (await client.record(task_id)).code == 200


async def test_maintenance_switch_answers_455_until_switched_off(start_fake: StartFake) -> None:
    """set_maintenance(True) makes both endpoints answer 455; False restores them."""
    fake, client = await start_fake(mirror_http_status=True)
    task_id = await client.submit_ok()
    fake.set_maintenance(True)
    answers = [await client.submit(), await client.record(task_id)]
    assert [(a.status, a.code) for a in answers] == [(455, 455), (455, 455)]
    fake.set_maintenance(False)
    await client.submit_ok()
