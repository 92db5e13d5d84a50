"""The task page in a real browser (Debian's chromium driven by Playwright), on SQLite and PostgreSQL: log in,
rank by dragging (with a tie), score with clicks and with the keyboard, mark two overlapping error spans with
notes, edit a response into a new one, submit with Ctrl+Enter -- then the database rows and the exports must
say exactly what was clicked. A screenshot of the task page is kept in tests/output/ for a person to look at."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import select

from annotate_kit import PASSWORD, Client, browser_task, shared_env
from novalign.annotate.db import make_engine, session_factory
from novalign.annotate.models import Response, Score, SpanRow, Submission, Task

OUTPUT = Path(__file__).parent / "output"
SELECT_JS = """([rid, start, end]) => {
  const node = document.querySelector(`.content[data-rid="${rid}"]`);
  const walker = document.createTreeWalker(node, NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  let pos = 0, started = false, t;
  while ((t = walker.nextNode())) {
    const len = t.textContent.length;
    if (!started && start < pos + len) { range.setStart(t, start - pos); started = true; }
    if (started && end <= pos + len) { range.setEnd(t, end - pos); break; }
    pos += len;
  }
  const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
}"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "Debian's chromium is not installed (apt-get install chromium; `make test` does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request, tmp_path_factory):
    return shared_env(request.param, tmp_path_factory.getbasetemp())


def _spans(text: str) -> list[tuple[int, int]]:
    a = text.index("Sydney, the largest city")
    b = text.index("the largest city, chosen because it is the oldest")
    return [(a, a + len("Sydney, the largest city")), (b, b + len("the largest city, chosen because it is the oldest"))]


def test_task_page_end_to_end(env, browser):
    """ann_any (skill *) takes b1 of project 5. Ranking: drag B to the top gap, then C onto A's tier, so
    [[r1], [r0, r2]]. Scores: r0 h1 f4 s5, r1 h5 f5 s5 (clicks), r2 h1 f2 s5 (keys h 1 f 2 s 5), the edit h5 f5 s5.
    RM targets (one annotator, minmax over their own scores): helpfulness 1,5,1,5 -> 0,1,0,1; fluency 4,5,2,5 ->
    2/3,1,0,1; safety all 5 -> 0.5. r-hat = mean: r0 (0+2/3+.5)/3 = 0.388889, r1 2.5/3 = 0.833333, r2 0.5/3 =
    0.166667, edit 0.833333."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(env["base"] + "/login")
    page.fill("input[name=username]", "ann_any")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.click("#next-5")
    page.wait_for_selector("article.resp[data-rid=r2]")
    assert "/assignments/" in page.url
    aid = int(page.url.rstrip("/").rsplit("/", 1)[1])
    assert page.inner_text(".msg.system").endswith("You are a careful geography tutor.")
    assert page.inner_text('.content[data-rid="r2"]') == "Melbourne <b>probably</b>."  # HTML shown as text
    assert page.locator('.content[data-rid="r2"] b').count() == 0

    page.locator('.chip[data-rid="r1"]').drag_to(page.locator('.gap[data-gap="0"]'))
    page.locator('.chip[data-rid="r2"]').drag_to(page.locator('.tier[data-tier="1"]'))
    tiers = page.eval_on_selector_all(".tier", "ts => ts.map(t => [...t.querySelectorAll('.chip')].map(c => c.dataset.rid))")
    assert tiers == [["r1"], ["r0", "r2"]]

    def click_score(rid: str, dim: str, v: int) -> None:
        page.click(f'button.score[data-rid="{rid}"][data-dim="{dim}"][data-v="{v}"]')

    for rid, (h, f, s) in {"r0": (1, 4, 5), "r1": (5, 5, 5)}.items():
        for dim, v in zip(("helpfulness", "fluency", "safety"), (h, f, s)):
            click_score(rid, dim, v)
    page.click('article.resp[data-rid="r2"] h3')
    for key in ("h", "1", "f", "2", "s", "5"):
        page.keyboard.press(key)

    text = browser_task()["responses"][0]["content"]
    notes = [("factual", "Canberra is the capital, not Sydney."), ("logical", "Age was not the reason.")]
    for (start, end), (kind, note) in zip(_spans(text), notes):
        page.evaluate(SELECT_JS, ["r0", start, end])
        page.click('article.resp[data-rid="r0"] button.mark')
        page.select_option('.spanform[data-rid="r0"] select', kind)
        page.fill('.spanform[data-rid="r0"] .span-note', note)
        page.click('.spanform[data-rid="r0"] .span-add')
    assert page.locator('.content[data-rid="r0"] mark.d2').count() == 1  # the overlap is marked twice as deep

    fixed = "The capital is Canberra, chosen in 1908 as a compromise between Sydney and Melbourne."
    page.click('article.resp[data-rid="r0"] button.edit')
    page.fill('article.resp[data-rid="r0"] textarea.edit-text', fixed)
    page.click('article.resp[data-rid="r0"] button.edit-keep')
    for dim in ("helpfulness", "fluency", "safety"):
        click_score("r0-edit", dim, 5)

    OUTPUT.mkdir(exist_ok=True)
    shot = OUTPUT / f"annotate_task_page_{env['kind']}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"task page screenshot: {shot}")
    page.keyboard.press("Control+Enter")
    page.wait_for_function("() => document.getElementById('status').textContent === 'submitted'", timeout=15000)
    assert not errors, errors
    page.close()

    engine = make_engine(env["db"])
    with session_factory(engine)() as s:
        task = s.scalar(select(Task).where(Task.external_id == "b1"))
        sub = s.scalar(select(Submission).where(Submission.task_id == task.id))
        assert sub.assignment_id == aid and sub.user.username == "ann_any"
        assert sub.result["ranking"] == [["r1"], ["r0", "r2"]]
        new_id = f"r0-edit{aid}"
        scores = {(x.response_id, x.dimension): x.value for x in s.scalars(select(Score).where(Score.submission_id == sub.id))}
        want = {"r0": (1, 4, 5), "r1": (5, 5, 5), "r2": (1, 2, 5), new_id: (5, 5, 5)}
        assert scores == {(r, d): v for r, vs in want.items() for d, v in zip(("helpfulness", "fluency", "safety"), vs)}
        spans = [(x.response_id, x.start, x.end, x.kind, x.note)
                 for x in s.scalars(select(SpanRow).where(SpanRow.submission_id == sub.id).order_by(SpanRow.id))]
        assert spans == [("r0", a, b, k, n) for (a, b), (k, n) in zip(_spans(text), notes)]
        edit = s.scalar(select(Response).where(Response.task_id == task.id, Response.response_id == new_id))
        assert edit.content == fixed and edit.parent_id is not None
        assert f"-{text}" in edit.diff and f"+{fixed}" in edit.diff
    engine.dispose()

    admin = Client(env["base"], "admin")
    results = [json.loads(x) for x in admin.http.get("/projects/5/export/results").text.splitlines()]
    assert results == [sub.result]
    group = next(json.loads(x) for x in admin.http.get("/projects/5/export/rm").text.splitlines())
    got = {r["response_id"]: r["score"] for r in group["responses"]}
    assert got == pytest.approx({"r0": 0.388889, "r1": 0.833333, "r2": 0.166667, new_id: 0.833333}, abs=1e-6)
    admin.close()
