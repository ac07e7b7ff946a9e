"""A round of `tether rlhf` labeled by two people on the page, in headless Chromium (Debian's,
driven by Playwright; skipped without it): the run serves the page, waits while alice and then
bob answer the round's tasks, and goes on to the reward model and PPO once both are done."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tether.labeling.store import Store
from tether.labeling.testing import free_port
from tether.rounds.config import RoundsConfig
from tether.rounds.pipeline import round_paths, run_rlhf


pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_thread")]



def answer_every_task(page, url: str, token: str, tasks: int, screenshot=None) -> None:
    """Open the page with a labeler's token and answer each task with the keyboard: A is better."""
    from playwright.sync_api import expect

    page.goto(f"{url}?token={token}")
    for done in range(tasks):
        expect(page.locator("#progress-text")).to_have_text(f"{done} of {tasks}")
        expect(page.locator("#round")).to_have_text("Round 1")
        if screenshot is not None and done == 0:
            page.screenshot(path=str(screenshot), full_page=True)
        page.keyboard.press("1")
        page.keyboard.press("Enter")
    expect(page.locator("#done")).to_be_visible()


def test_two_labelers_answer_a_round_on_the_page_while_the_run_waits(browser, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)  # the first task appears once the run has sampled it
    db = tmp_path / "labels.sqlite"
    store = Store(db, create=True)
    tokens = {name: store.add_labeler(name) for name in ("alice", "bob")}
    port = free_port()
    # one round of 2 prompts x 2 responses = 2 tasks, each to be answered by both labelers
    config = RoundsConfig(model="tiny-llama", rounds=1, label_prompts=2, responses_per_prompt=2,
                          pair_max_new_tokens=16, sample_batch_size=8, eval_samples=4, rm_epochs=1, rm_batch_size=4,
                          ppo_iterations=1, batch_size=4, mini_batch_size=4, micro_batch_size=4, ppo_epochs=1,
                          max_new_tokens=16, label_db=str(db), labelers=["alice", "bob"], answers_per_task=2,
                          port=port, poll_interval_s=0.2, require_learned_reward=False, output_dir=str(tmp_path),
                          run_name="rlhf", quiet=True)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = run_rlhf(config)
        except BaseException as exc:  # re-raised in the test below
            outcome["error"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and runner.is_alive():
        try:
            if httpx.get(url + "api/health", timeout=1.0).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    if "error" in outcome:
        raise outcome["error"]
    paths = round_paths(tmp_path / "rlhf", 1)
    try:
        alice = browser.new_context().new_page()
        problems: list[str] = []
        alice.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        answer_every_task(alice, url, tokens["alice"], 2, tmp_path / "rounds-page.png")
        time.sleep(1.0)  # a few of the run's polls: one labeler's answers are not enough
        assert runner.is_alive() and not paths.labels.exists() and not paths.ppo.exists()

        bob = browser.new_context().new_page()  # a browser of his own: his own token in his localStorage
        answer_every_task(bob, url, tokens["bob"], 2)
        bob.screenshot(path=str(tmp_path / "rounds-page-done.png"), full_page=True)
        runner.join(timeout=180)
        assert problems == []
    finally:
        runner.join(timeout=180)
    if "error" in outcome:
        raise outcome["error"]
    labels = json.loads(paths.labels.read_text())
    assert (labels["tasks"], labels["answered"], labels["preferences"], labels["deadline_passed"]) == (2, 2, 4, False)
    assert (paths.policy / "config.json").exists()  # the run went on to PPO
    records = [json.loads(line) for line in paths.preferences.read_text().splitlines()]
    assert sorted(r["labeler"] for r in records) == ["alice", "alice", "bob", "bob"]
    assert {r["round"] for r in records} == {1}
    assert outcome["result"].rows[0]["labels_so_far"] == 4
