"""report.html opened in headless Chromium: every plot loads (naturalWidth > 0), the doctor's
findings come first, and a full-page screenshot is left for a human to look at
(run with --basetemp=DIR to keep it at DIR/.../report.png)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tether.diagnostics.synthetic import healthy_metrics, healthy_samples, set_metric, write_run
from tether.reporting.report import write_report
from tests.chromium import CHROMIUM, CHROMIUM_ARGS


pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists() and not shutil.which("chromium"), reason="Debian chromium not installed (make browser)"),
]


def test_report_renders_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    rows = set_metric(healthy_metrics(60), "objective/score_mean", lambda i, v: v - 2.5, range(35, 60))
    rows = set_metric(rows, "policy/approx_kl", lambda i, v: 0.4, range(34, 35))
    run = write_run(tmp_path / "collapse", rows, healthy_samples(60), {"algorithm": "ppo", "kl_coef": 0.05})
    files = write_report(run)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            failed: list[str] = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(files.html.as_uri(), wait_until="load")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
            first_heading = page.inner_text("h2")
            first_finding = page.inner_text(".finding h3")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()

    assert failed == []
    assert len(widths) == len(files.plots)
    assert all(complete and width > 0 for _, complete, width in widths), widths
    assert first_heading == "Doctor"
    assert "Score collapsed right after a large update" in first_finding
    assert (tmp_path / "report.png").stat().st_size > 50_000
