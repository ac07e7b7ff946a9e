"""The labeling page in a real browser: Debian's headless Chromium driven by Playwright.

Never downloads a browser: without /usr/bin/chromium (``make browser`` installs it) the test
skips and says why.
"""

from __future__ import annotations

import json

import pytest

from tether.labeling.export import export_jsonl
from tether.labeling.store import Store
from tether.labeling.tasks import Task
from tether.labeling.testing import start_server


pytestmark = pytest.mark.browser

TASKS = [
    Task("t1", "Say hi to a new colleague.", ("Hi!", "Hello, and welcome to the team. Let me know if you need anything.")),
    Task("t2", "Name a primary colour.", ("Red.", "Blue is a primary colour in both the RGB and RYB models.")),
    Task("t3", "Pick a number from 1 to 10.", ("7", "Seven")),
    Task("t4", "Count to three.", ("1, 2, 3", "one two three", "1 2 3 4")),
]


def test_label_with_mouse_and_keyboard_then_undo_and_export(browser, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)  # two shared cores: be patient, not flaky
    store = Store(tmp_path / "labels.sqlite", create=True)
    store.add_tasks(TASKS)
    token = store.add_labeler("ann")
    server = start_server(store.path, tmp_path / "server.log")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.on("request", lambda req: None if req.url.startswith((server.url, "data:")) else problems.append(f"external: {req.url}"))

        page.goto(f"{server.url}/?token={token}")
        progress, prompt = page.locator("#progress-text"), page.locator("#prompt")
        expect(progress).to_have_text("0 of 4")
        expect(page.locator("#who")).to_have_text("labeling as ann")
        assert "token" not in page.url  # saved to localStorage, then taken out of the address bar

        # 1. mouse: choose A, then Submit
        expect(prompt).to_have_text(TASKS[0].prompt)
        page.get_by_role("button", name="A is better").click()
        expect(page.locator(".response").first).to_have_class("response chosen")
        page.screenshot(path=str(tmp_path / "labeling-page.png"), full_page=True)
        page.get_by_role("button", name="Submit").click()

        # 2. keyboard: 2 = B, type a reason, Enter submits
        expect(prompt).to_have_text(TASKS[1].prompt)
        expect(progress).to_have_text("1 of 4")
        page.keyboard.press("2")
        page.locator("#reason").click()
        page.keyboard.type("mentions both colour models")
        page.keyboard.press("Enter")

        # 3. keyboard: 1 = A, Enter ... then undo it (mouse) and answer tie instead (keyboard)
        expect(prompt).to_have_text(TASKS[2].prompt)
        page.keyboard.press("1")
        page.keyboard.press("Enter")
        expect(prompt).to_have_text(TASKS[3].prompt)
        expect(progress).to_have_text("3 of 4")
        page.get_by_role("button", name="Undo last answer").click()
        expect(prompt).to_have_text(TASKS[2].prompt)
        expect(progress).to_have_text("2 of 4")
        page.keyboard.press("t")
        page.keyboard.press("Enter")

        # 4. three responses: click them best -> worst (the last is ranked by itself), Enter
        expect(prompt).to_have_text(TASKS[3].prompt)
        cards = page.locator(".response")
        cards.nth(2).click()
        cards.nth(0).click()
        expect(cards.locator(".badge")).to_have_text(["2nd", "3rd", "1st"])
        page.screenshot(path=str(tmp_path / "labeling-ranking.png"), full_page=True)
        page.keyboard.press("Enter")
        expect(page.locator("#done")).to_be_visible()
        expect(progress).to_have_text("4 of 4")

        page.reload()  # the token stays in this browser: no need to enter it again
        expect(page.locator("#done")).to_be_visible()
        assert problems == []
    finally:
        server.stop()

    summary = export_jsonl(store, tmp_path / "prefs.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    t1, t2, _, t4 = TASKS
    assert rows == [
        {"prompt": t1.prompt, "chosen": t1.responses[0], "rejected": t1.responses[1], "labeler": "ann", "task_id": "t1", "reason": None},
        {"prompt": t2.prompt, "chosen": t2.responses[1], "rejected": t2.responses[0], "labeler": "ann", "task_id": "t2",
         "reason": "mentions both colour models"},
        {"prompt": t4.prompt, "responses": list(t4.responses), "ranking": [2, 0, 1], "labeler": "ann", "task_id": "t4", "reason": None},
    ]
    assert (summary.pairs, summary.rankings, summary.ties, summary.skips) == (2, 1, 1, 0)
    assert [a.undone_at is not None for a in store.answer_rows()] == [False, False, True, False, False]
