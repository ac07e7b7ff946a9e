"""`tether report` and `tether compare` on synthetic run directories."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tether.cli import main
from tether.diagnostics.synthetic import drop_metrics, healthy_metrics, healthy_samples, set_metric, write_run
from tether.reporting.plots import metric_groups, smooth
from tether.reporting.report import write_report

CONFIG = {"algorithm": "ppo", "kl_coef": 0.05, "learning_rate": 1.0e-5, "model": {"name": "tiny"}}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def hacked_run(tmp_path_factory) -> Path:
    """A run whose gold score falls after iteration 30 while the proxy keeps rising."""
    rows = set_metric(
        healthy_metrics(40, eval_every=5), "eval/gold_score_mean", lambda i, v: ... if v is None else v if i <= 20 else 0.6 - 0.05 * (i - 20)
    )
    samples = healthy_samples(40)
    samples[-1]["response"] = "<script>alert('x')</script> | pipes | and\nnewlines"
    return write_run(tmp_path_factory.mktemp("runs") / "hacked", rows, samples, CONFIG, {"gold_win_rate": 0.4})


@pytest.fixture(scope="module")
def report(hacked_run):
    return write_report(hacked_run)


def test_report_writes_html_markdown_and_a_plot_per_namespace(report, hacked_run):
    assert report.html == hacked_run / "report.html" and report.markdown == hacked_run / "report.md"
    names = {p.name for p in report.plots}
    # one figure per namespace the run logs, and the score-vs-KL frontier
    assert names == {f"{g}.png" for g in ("objective", "eval", "policy", "losses", "value", "rollout", "optim", "guard", "time")} | {"score_vs_kl.png"}
    for path in report.plots:
        width, height = png_size(path)
        assert width > 300 and height > 200


def test_report_html_shows_findings_first_then_plots_samples_config(report):
    html = report.html.read_text()
    doctor, plots, samples, config = (html.index(s) for s in ("<h2>Doctor", "<h2>Metrics", "<h2>Samples", "<h2>Config"))
    assert doctor < plots < samples < config
    assert "reward_hacking" in html and "critical" in html
    assert 'data-file="report_plots/objective.png"' in html
    assert "kl_coef: 0.05" in html and "gold_win_rate" in html
    # model output is escaped, never executed
    assert "<script>" not in html and "&lt;script&gt;" in html
    # self-contained: no remote resources
    assert "http://" not in html and "https://" not in html and "<script" not in html


def test_report_html_alone_carries_its_plots(report, tmp_path):
    """Copied away from report_plots/, report.html still shows every plot: each <img> is a
    data URI holding the PNG that was written beside it."""
    import base64
    import re
    import shutil

    copy = Path(shutil.copy(report.html, tmp_path / "copied.html"))
    sources = re.findall(r'<img src="([^"]+)" data-file="([^"]+)"', copy.read_text())
    assert len(sources) == len(report.plots) and len(re.findall(r"<img ", copy.read_text())) == len(sources)
    for src, name in sources:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), src[:40]
        assert base64.b64decode(src[len(prefix):]) == (report.html.parent / name).read_bytes()


def test_report_markdown_mirrors_the_html(report):
    md = report.markdown.read_text()
    assert md.startswith("# tether run report: hacked")
    assert "CRITICAL: Reward hacking" in md and "![Score vs KL to the reference](report_plots/score_vs_kl.png)" in md
    assert "\\| pipes \\|" in md  # table cells escape pipes
    assert "```yaml\nalgorithm: ppo" in md


def test_every_logged_metric_is_plotted(report, hacked_run):
    from tether.diagnostics.run import load_run

    keys = {k for row in load_run(hacked_run).metrics for k in row if k != "iteration"}
    grouped = {k for ks in metric_groups(sorted(keys)).values() for k in ks}
    assert grouped == keys
    assert {f"{g}.png" for g in metric_groups(sorted(keys))} <= {p.name for p in report.plots}


def test_report_cli_out_dir_and_critic_free_run(tmp_path, capsys):
    run = write_run(tmp_path / "grpo", drop_metrics(healthy_metrics(15), "value/"), [], None)
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    assert "report.html" in capsys.readouterr().out
    html = (tmp_path / "out" / "report.html").read_text()
    assert "No findings" in html and "No config.yaml" in html and "value.png" not in html
    assert (tmp_path / "out" / "report_plots" / "policy.png").exists()


def test_report_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "nothing to report" in capsys.readouterr().err


def test_compare_overlays_runs(tmp_path, capsys):
    a = write_run(tmp_path / "beta0.05", healthy_metrics(30, seed=1), [])
    b = write_run(tmp_path / "beta0.5", set_metric(healthy_metrics(30, seed=2), "objective/kl_k3", lambda i, v: v / 5), [])
    out = tmp_path / "cmp.png"
    assert main(["compare", str(a), str(b), "--out", str(out), "--labels", "β=0.05", "β=0.5"]) == 0
    assert png_size(out)[0] > 300
    assert main(["compare", str(a), str(b), "--labels", "one"]) == 2
    assert "2 runs" in capsys.readouterr().err
    c = write_run(tmp_path / "nokl", [{"iteration": 0, "objective/score_mean": 1.0}], [])
    assert main(["compare", str(a), str(c), "--out", str(out)]) == 2


def test_compare_shows_a_dpo_run_by_its_margin_and_accuracy(tmp_path, capsys):
    """A DPO run has no score or KL: compare draws its rewards/margin and rewards/accuracy in
    panels beside the online runs' score-vs-KL frontier instead of refusing."""
    ppo = write_run(tmp_path / "ppo", healthy_metrics(30, seed=1), [])
    dpo = write_run(tmp_path / "dpo", [{"iteration": i, "train/loss": 0.7 - 0.01 * i, "rewards/margin": 0.05 * i,
                                        "rewards/accuracy": min(1.0, 0.5 + 0.02 * i)} for i in range(1, 31)], [])
    out = tmp_path / "cmp.png"
    assert main(["compare", str(ppo), str(dpo), "--out", str(out)]) == 0, capsys.readouterr().err
    width, height = png_size(out)
    assert width > 3 * height  # the frontier and the two preference panels side by side
    assert main(["compare", str(dpo), "--out", str(tmp_path / "dpo.png")]) == 0
    assert png_size(tmp_path / "dpo.png")[0] > png_size(tmp_path / "dpo.png")[1]


def test_smoothing_is_centred():
    # a step from 0 to 1 at index 5 stays centred on index 5 (an EMA would lag to the right)
    values = [0.0] * 5 + [1.0] * 5
    out = smooth(values, window=1)
    assert out[4] == pytest.approx(1 / 3) and out[5] == pytest.approx(2 / 3)
    assert out[0] == 0.0 and out[-1] == 1.0
