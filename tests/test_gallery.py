"""The results gallery: structure, relative image paths, escaping, bad lines, and scale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from midvary._gallery import (
    GalleryJob,
    GalleryResults,
    parse_results,
    read_results,
    render_gallery,
    write_gallery,
)

from .gallery_support import COLOURS, Tree, done_job, result, text, write_lines

HOSTILE_MARK = '"><img src=x onerror="document.title=1"><script>alert(1)</script>'
HOSTILE_ERROR = "</p><script>document.title='pwned'</script><a href=javascript:alert(1)>x</a>"
# Every element the page may contain; an injected element would be outside this set.
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "p", "main",
    "section", "div", "article", "span", "code", "dl", "dt", "dd", "strong", "figure", "a",
    "img", "figcaption", "br", "ul", "li", "footer", "q",
}  # fmt: skip
HOSTILE_PROMPT = '</q></h2><img src=x onerror="document.title=1"><script>alert(1)</script>'


def generate_line(job_id: str, status: str, **fields: Any) -> dict[str, Any]:
    """A generate job's results line as bulk writes it: no parent task nor image, a prompt."""
    return result(job_id, None, None, status, action="generate", prompt="a fox", **fields)


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bulk run's folder: images downloaded into images/, results.jsonl written there."""
    monkeypatch.chdir(tmp_path)
    first = done_job(tmp_path, "job-1", "parent-A", 2, COLOURS[:4])
    first["water_mark"] = HOSTILE_MARK
    write_lines(
        tmp_path / "results.jsonl",
        [
            result("job-1", "parent-A", 2, "uncertain"),  # superseded by the later line
            done_job(tmp_path, "job-2", "parent-B", 0, COLOURS[4:]),
            first,
            result(
                "job-3",
                "parent-A",
                0,
                "failed",
                task_id="vary-job-3",
                error={"type": "TaskFailedError", "message": HOSTILE_ERROR},
                record={
                    "error_code": 501,
                    "created_at": "2024-05-01T10:00:00+00:00",
                    "completed_at": "2024-05-01T10:01:30+00:00",
                },
            ),
            result("job-4", "parent-B", 3, "uncertain", error={"type": "X", "message": "lost"}),
            "{not json",
        ],
    )
    return tmp_path


def test_jobs_are_grouped_by_parent_with_their_images(run: Path) -> None:
    """One section per parent in order; each done job shows its 4 files, by relative paths."""
    page = write_gallery(run / "results.jsonl", run / "site" / "index.html")
    tree = Tree(page.read_text(encoding="utf-8"))
    sections = tree.find("section", "parent")
    assert [text(tree.inside(s, "code")[0]) for s in sections] == ["parent-A", "parent-B"]
    jobs = [[text(tree.inside(a, "span")[1]) for a in tree.inside(s, "article")] for s in sections]
    assert jobs == [["index 0", "index 2"], ["index 0", "index 3"]]
    for article in tree.find("article", "ok"):
        images = tree.inside(article, "img")
        assert len(images) == 4
        for image in images:
            src = image.attrs["src"] or ""
            assert image.attrs["loading"] == "lazy"
            assert not urlsplit(src).scheme
            assert not src.startswith("/")
            assert src.startswith("../images/vary-job-")
            assert (page.parent / unquote(src)).resolve().is_file()
    assert len(tree.find("img")) == 8
    badges = [text(b) for b in tree.find("span", "badge")]
    assert badges == ["failed", "done", "done", "uncertain"]


def test_hostile_values_stay_text(run: Path) -> None:
    """Water marks and error messages with markup appear as text; no element is injected."""
    page = write_gallery(run / "results.jsonl", run / "index.html").read_text(encoding="utf-8")
    tree = Tree(page)
    assert {e.tag for e in tree.elements} <= ALLOWED_TAGS
    assert tree.find("script") == []
    assert all(not name.startswith("on") for e in tree.elements for name in e.attrs)
    assert all(e.attrs.get("src") != "x" for e in tree.find("img"))
    assert all("javascript" not in (e.attrs.get("href") or "") for e in tree.find("a"))
    words = text(tree.find("body")[0])
    assert HOSTILE_MARK in words
    assert "TaskFailedError (code 501): " + HOSTILE_ERROR in words
    assert len(tree.find("title")) == 1
    assert text(tree.find("title")[0]) == "midvary gallery: results.jsonl"


def test_failed_and_uncertain_jobs_show_their_reason_and_timing(run: Path) -> None:
    """A failed job shows its error, code and duration; an uncertain one its reason."""
    tree = Tree(write_gallery(run / "results.jsonl").read_text(encoding="utf-8"))
    (failed,) = tree.find("article", "bad")
    (uncertain,) = tree.find("article", "warn")
    assert "took 90.0 s" in text(failed)
    assert "task vary-job-3" in text(failed)
    assert "".join(tree.inside(uncertain, "p")[0].text) == "X: lost"
    assert "task none" in text(uncertain)
    assert tree.inside(failed, "img") == tree.inside(uncertain, "img") == []


def test_bad_lines_are_listed_and_the_last_line_of_a_job_wins(run: Path) -> None:
    """An unreadable line is listed with its number; a re-written job shows its last line."""
    results = read_results(run / "results.jsonl")
    assert [j.id for j in results.jobs] == ["job-1", "job-2", "job-3", "job-4"]
    assert results.replaced == 1
    assert [(b.number, b.reason.split(" (")[0]) for b in results.bad_lines] == [
        (6, "not valid JSON")
    ]
    tree = Tree(write_gallery(run / "results.jsonl").read_text(encoding="utf-8"))
    (listed,) = tree.find("section", "bad-lines")
    assert "line 6: not valid JSON" in text(listed)
    assert "5 jobs" not in text(tree.find("p", "summary")[0])


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"[1, 2]", "not a JSON object but list"),
        (b'{"id": "j"}', "the field 'parent_task_id' is missing"),
        (json.dumps(result("j", "p", 0, "done", image_index="2")).encode(), "'image_index' must"),
        (json.dumps(result("j", "p", True, "done")).encode(), "'image_index' must be an integer"),
        (json.dumps(result("", "p", 0, "done")).encode(), "the field 'id' is empty"),
        (json.dumps(result("j", "p", 0, "done", files="a.png")).encode(), "'files' must be a"),
        (json.dumps(result("j", "p", 0, "done", files=[1])).encode(), "list of strings"),
        (json.dumps(result("j", "p", 0, "done", error="boom")).encode(), "'error' must be an"),
        (json.dumps(result("j", "p", 0, "done", duration=-1)).encode(), "'duration' must"),
        (b'{"id": "\xff"}', "not UTF-8"),
        (json.dumps(result("j", None, None, "done", action="generate")).encode(), "'prompt'"),
        (
            json.dumps(result("j", None, None, "done", action="vary")).encode(),
            "'parent_task_id' is",
        ),
        (json.dumps(generate_line("j", "done", image_index="1")).encode(), "'image_index' must"),
    ],
)
def test_malformed_lines_become_bad_lines(line: bytes, reason: str) -> None:
    """Each kind of malformed line is reported with its number and what is wrong."""
    good = json.dumps(result("ok", "parent", 1, "done")).encode()
    results = parse_results(good + b"\n" + line + b"\n")
    assert [j.id for j in results.jobs] == ["ok"]
    (bad,) = results.bad_lines
    assert bad.number == 2
    assert reason in bad.reason


def old_format(line: dict[str, Any]) -> dict[str, Any]:
    """``line`` in the format before issue 18: parent in ``task_id``, task in ``vary_task_id``."""
    old = {k: v for k, v in line.items() if k not in ("parent_task_id", "task_id")}
    return old | {"task_id": line["parent_task_id"], "vary_task_id": line["task_id"]}


def test_lines_written_before_the_rename_read_the_same(tmp_path: Path) -> None:
    """An old results file (``vary_task_id``) gives the same jobs as today's format."""
    today = [
        done_job(tmp_path, "vary-1", "parent-A", 2, COLOURS[:4]),
        result("vary-2", "parent-B", 0, "uncertain"),
        generate_line("grid", "done", task_id="grid-task"),
        result("up", "grid-task", 1, "failed", action="upscale", task_id="up-task"),
    ]
    new = parse_results("".join(json.dumps(line) + "\n" for line in today))
    old = parse_results("".join(json.dumps(old_format(line)) + "\n" for line in today))
    assert old == new
    assert new.bad_lines == ()
    assert [(j.parent_task_id, j.task_id) for j in new.jobs] == [
        ("parent-A", "vary-vary-1"),
        ("parent-B", None),
        (None, "grid-task"),
        ("grid-task", "up-task"),
    ]


def test_optional_and_future_fields_are_shown(tmp_path: Path) -> None:
    """action, prompt and timing fields are rendered (escaped) when present."""
    line = result(
        "j", "p", 1, "done", action="upscale", prompt="a <b>cat</b>", duration=12.25,
        created_at="2024-05-01T10:00:00Z",
    )  # fmt: skip
    tree = Tree(render_gallery(parse_results(json.dumps(line)), base_dir=tmp_path))
    (article,) = tree.find("article")
    assert "action upscale" in text(article)
    assert "took 12.2 s" in text(article)
    assert "created 2024-05-01T10:00:00Z" in text(article)
    assert text(tree.find("p", "prompt")[0]) == "a <b>cat</b>"
    assert tree.find("b") == []


def test_undownloaded_images_are_links_never_loaded(tmp_path: Path) -> None:
    """Without files, each http(s) URL becomes a link (no <img>); other schemes stay text."""
    line = result("j", "p", 0, "done", image_urls=["https://cdn.example/a.png", "javascript:x"])
    tree = Tree(render_gallery(parse_results(json.dumps(line)), base_dir=tmp_path))
    assert tree.find("img") == []
    assert [a.attrs["href"] for a in tree.find("a")] == ["https://cdn.example/a.png"]
    assert "image 2: javascript:x" in text(tree.find("article")[0])


def test_files_are_found_beside_the_results_when_not_in_the_cwd(
    run: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from elsewhere, relative file entries resolve against the results file's folder."""
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    out = tmp_path_factory.mktemp("pages") / "g.html"
    tree = Tree(write_gallery(run / "results.jsonl", out).read_text(encoding="utf-8"))
    sources = [image.attrs["src"] or "" for image in tree.find("img")]
    assert len(sources) == 8
    assert all((out.parent / unquote(src)).resolve().is_file() for src in sources)
    missing = render_gallery(read_results(run / "results.jsonl"), base_dir=out.parent)
    assert Tree(missing).find("img") == []
    assert missing.count("file missing") == 8


def test_odd_file_names_are_encoded_paths(tmp_path: Path) -> None:
    """A file named like a URL or with quotes is a percent-encoded relative path."""
    name = 'javascript:alert(1)" x=".png'
    (tmp_path / name).write_bytes(b"png")
    line = result("j", "p", 0, "done", files=[str(tmp_path / name)])
    tree = Tree(render_gallery(parse_results(json.dumps(line)), base_dir=tmp_path))
    (image,) = tree.find("img")
    assert set(image.attrs) == {"src", "alt", "loading", "decoding", "width", "height"}
    src = image.attrs["src"] or ""
    assert not urlsplit(src).scheme
    assert unquote(src) == name


def jobs(count: int, folder: Path) -> GalleryResults:
    """``count`` done jobs, 4 per parent, each with 4 downloaded files in ``folder``."""
    image = folder / "img.png"
    image.write_bytes(b"png")
    made: list[Any] = [
        GalleryJob(
            number=n + 1,
            id=f"job-{n:06d}",
            parent_task_id=f"parent-{n // 4:06d}",
            image_index=n % 4,
            status="done",
            task_id=f"task-{n:06d}",
            files=(str(image),) * 4,
        )
        for n in range(count)
    ]
    return GalleryResults(jobs=tuple(made))


def test_five_thousand_jobs_make_one_linear_lazy_page(tmp_path: Path) -> None:
    """5,000 jobs render to 20,000 lazy images; the page grows linearly with the jobs."""
    sizes = {n: len(render_gallery(jobs(n, tmp_path), base_dir=tmp_path)) for n in (0, 500, 1000)}
    page = render_gallery(jobs(5000, tmp_path), base_dir=tmp_path)
    tree = Tree(page)
    images = tree.find("img")
    assert len(images) == 20_000
    assert all(image.attrs["loading"] == "lazy" for image in images)
    assert len(tree.find("section", "parent")) == 1250
    per_job = (sizes[1000] - sizes[500]) / 500
    assert per_job == pytest.approx((sizes[500] - sizes[0]) / 500, rel=0.01)
    assert len(page) == pytest.approx(sizes[0] + 5000 * per_job, rel=0.01)


def test_generate_jobs_head_their_group_with_prompt_grid_and_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grid's group: its prompt, its grid, then its varies by index and its upscale."""
    monkeypatch.chdir(tmp_path)
    grid = done_job(tmp_path, "p1", "unused", 0, COLOURS[:4])
    grid.update(action="generate", prompt="a red fox", parent_task_id=None, image_index=None)
    grid_task = grid["task_id"]
    child = {"action": "vary", "parent": "p1"}
    write_lines(
        tmp_path / "results.jsonl",
        [
            result("plain", "parent-X", 1, "done"),
            grid,
            result("p1/upscale0", grid_task, 0, "done", action="upscale") | {"parent": "p1"},
            result("p1/vary2", grid_task, 2, "failed") | child,
            done_job(tmp_path, "p1-vary0", grid_task, 0, COLOURS[4:]) | child,
            result("by-task", grid_task, 3, "done"),  # no parent key: joins by the grid's task
            generate_line(
                "p2", "uncertain", error={"type": "SubmitUncertainError", "message": "lost"}
            ),
            result("orphan", "fakegen-elsewhere", 1, "done") | {"parent": "gone"},
        ],
    )
    results = read_results(tmp_path / "results.jsonl")
    assert results.bad_lines == ()
    tree = Tree(write_gallery(tmp_path / "results.jsonl").read_text(encoding="utf-8"))
    sections = tree.find("section", "parent")
    headings = [text(tree.inside(s, "h2")[0]) for s in sections]
    assert headings == [
        "parent parent-X 1 job",
        "prompt a red fox its grid and 4 children",
        "prompt a fox its grid, no children",
        "parent fakegen-elsewhere 1 job",
    ]
    assert [s.classes for s in sections] == [
        {"parent"}, {"parent", "grid"}, {"parent", "grid"}, {"parent"}
    ]  # fmt: skip
    cards = [text(tree.inside(a, "span")[1]) for a in tree.inside(sections[1], "article")]
    assert cards == ["grid", "index 0", "index 2", "index 3", "upscale of image 0"]
    first = tree.inside(sections[1], "article")[0]
    assert len(tree.inside(first, "img")) == 4
    assert "task " + grid_task in text(first)
    assert tree.find("p", "prompt") == []  # a grid's prompt is its heading, not repeated
    (uncertain,) = tree.inside(sections[2], "article")
    assert "".join(tree.inside(uncertain, "p")[0].text) == "SubmitUncertainError: lost"
    assert text(tree.find("p", "summary")[0]).startswith("8 jobs · 2 prompts · 2 parents")


def test_hostile_prompt_stays_text(tmp_path: Path) -> None:
    """A prompt with markup is shown as text in its group's heading; nothing is injected."""
    page = render_gallery(
        parse_results(json.dumps(generate_line("g", "done") | {"prompt": HOSTILE_PROMPT})),
        base_dir=tmp_path,
    )
    tree = Tree(page)
    assert {e.tag for e in tree.elements} <= ALLOWED_TAGS
    assert tree.find("script") == []
    assert tree.find("img") == []
    assert all(not name.startswith("on") for e in tree.elements for name in e.attrs)
    (quote,) = tree.find("q")
    assert text(quote) == " ".join(HOSTILE_PROMPT.split())


def test_a_video_and_its_extend_show_in_video_elements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A video generate's .mp4 files and an extend's show as <video controls>, no script."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    for name in ("gen-v_0.mp4", "gen-v_1.mp4", "ext-1_0.mp4"):
        (tmp_path / "images" / name).write_bytes(b"\x00\x00\x00\x18ftypmp42")
    video = generate_line(
        "v", "done", task_id="gen-v", files=["images/gen-v_0.mp4", "images/gen-v_1.mp4"]
    )
    extend = result(
        "v/extend1", "gen-v", 1, "done", action="extend", task_id="ext-1",
        files=["images/ext-1_0.mp4"],
    ) | {"parent": "v"}  # fmt: skip
    write_lines(tmp_path / "results.jsonl", [video, extend])
    page = write_gallery(tmp_path / "results.jsonl").read_text(encoding="utf-8")
    tree = Tree(page)
    videos = tree.find("video")
    assert [unquote(v.attrs["src"] or "") for v in videos] == [
        "images/gen-v_0.mp4",
        "images/gen-v_1.mp4",
        "images/ext-1_0.mp4",
    ]
    assert all("controls" in v.attrs and v.attrs["preload"] == "metadata" for v in videos)
    assert tree.find("img") == []
    assert tree.find("script") == []
    (section,) = tree.find("section", "parent")
    cards = [text(tree.inside(a, "span")[1]) for a in tree.inside(section, "article")]
    assert cards == ["grid", "extend of video 1"]
    assert "media-src 'self' file:" in page
    assert {e.tag for e in tree.elements} <= ALLOWED_TAGS | {"video"}
