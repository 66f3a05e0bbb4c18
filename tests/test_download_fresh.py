"""Fresh download links: a refused result URL is fetched once through common/download-url."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

import midvary
from midvary.testing import PNG_SIGNATURE, FakeProvider, FakeSettings, ManualClock

from .fanout_support import fake_session, requests


@pytest.mark.parametrize("status", [401, 403, 404, 410])
async def test_a_refused_result_url_is_fetched_once_through_a_fresh_link(
    tmp_path: Path, status: int
) -> None:
    """Each refused image costs one download-url POST and one fetch of its temporary URL.

    The key goes to the API host only: no request to the result host carries it.
    """
    async with fake_session(refuse_direct_downloads=status) as (fake, session):
        (outcome,) = await session.submit_all(requests(1))
        assert outcome.record is not None
        paths = await session.download(outcome.record, tmp_path)
        headers = fake.result_request_headers
        asked = fake.stats.requests["download-url"]
        fetched = fake.stats.requests["results"]
    assert [path.name for path in paths] == [f"{outcome.task_id}_{n}.png" for n in range(4)]
    assert all(path.read_bytes().startswith(PNG_SIGNATURE) for path in paths)
    assert (asked, fetched) == (4, 8)  # per image: the refused fetch, then the fresh one
    assert all("Authorization" not in h and fake.api_key not in str(dict(h)) for h in headers)


async def test_a_served_result_url_asks_for_no_fresh_link(tmp_path: Path) -> None:
    """Without a refusal, no download-url request is sent."""
    async with fake_session() as (fake, session):
        (outcome,) = await session.submit_all(requests(1))
        assert outcome.record is not None
        await session.download(outcome.record, tmp_path)
        assert fake.stats.requests["download-url"] == 0


async def test_a_url_the_api_does_not_know_raises_the_hosts_refusal(tmp_path: Path) -> None:
    """The API's 422 for a foreign URL: the result host's DownloadError, the 422 its cause."""
    async with fake_session(refuse_direct_downloads=410) as (fake, session):
        (outcome,) = await session.submit_all(requests(1))
        assert outcome.record is not None
        foreign = midvary.TaskRecord(
            task_id=outcome.record.task_id,
            status=midvary.TaskStatus.SUCCESS,
            image_urls=(f"{fake.results_base_url}/elsewhere/x.png",),
        )
        with pytest.raises(midvary.DownloadError) as info:
            await session.download(foreign, tmp_path)
        assert fake.stats.requests["download-url"] == 1
    assert info.value.http_status == 404  # the CDN has no /elsewhere/: not its refusal knob
    assert isinstance(info.value.__cause__, midvary.ValidationError)


async def test_temporary_links_expire_after_20_minutes(tmp_path: Path) -> None:
    """The fake's links work for 20 minutes of its clock, for that file only."""
    clock = ManualClock(0.0)
    settings = FakeSettings(refuse_direct_downloads=403)
    async with FakeProvider(settings=settings, clock=clock) as fake:
        fake.add_parent("parent-x")
        url = f"{fake.results_base_url}/results/parent-x_0.png"
        async with aiohttp.ClientSession() as http:
            answer = await http.post(
                f"{fake.base_url}/api/v1/common/download-url",
                json={"url": url},
                headers={"Authorization": f"Bearer {fake.api_key}"},
            )
            link = (await answer.json())["data"]
            other = link.replace("parent-x_0.png", "parent-x_1.png")
            statuses = [(await http.get(link)).status, (await http.get(other)).status]
            clock.advance(20 * 60)
            statuses.append((await http.get(link)).status)
    assert statuses == [200, 403, 403]
