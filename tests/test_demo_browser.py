"""The demo's report.html in headless Chromium: every plot (the evaluation's and the PPO run's)
loads, and the evaluation comes before the doctor. The screenshot is left beside the report
(run with --basetemp=DIR to keep it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tether.cli import main
from tests.chromium import CHROMIUM, CHROMIUM_ARGS

TINY = ["label_prompts=4", "eval_samples=6", "ppo_iterations=2", "ppo_epochs=1", "bootstrap=200", "sample_batch_size=16"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists() and not shutil.which("chromium"), reason="Debian chromium not installed (make browser)"),
]


def test_demo_report_renders_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--model", "tiny-llama", "--out", str(out), *TINY]) == 0
    html = out / "report.html"

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            failed: list[str] = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(html.as_uri(), wait_until="load")
            images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('data-file'), i.complete, i.naturalWidth])")
            headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)")
            page.screenshot(path=str(out / "report.png"), full_page=True)
        finally:
            browser.close()

    assert failed == []
    sources = [src for src, _, _ in images]
    assert "report_plots/eval_means.png" in sources and "report_plots/eval_win_rate.png" in sources
    assert len(images) >= 4  # the evaluation's two, score-vs-KL, and a panel per metric namespace
    assert all(complete and width > 0 for _, complete, width in images), images
    assert headings[0].startswith("Evaluation: SFT vs PPO") and headings[1] == "Doctor"
    assert (out / "report.png").stat().st_size > 50_000
