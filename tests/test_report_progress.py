"""phase_progress: quiet mode prints a line every N steps (or nothing), warnings once; the
live mode renders a rich bar with the fields."""

from __future__ import annotations

import io

import pytest

from tether.reporting.progress import Progress, format_fields, phase_progress


def test_quiet_mode_prints_one_line_every_n_steps_and_a_last_line():
    out = io.StringIO()
    with phase_progress("PPO", total=10, quiet=True, every=4, stream=out) as bar:
        for k in range(10):
            bar.advance(1, score=0.1 * k, kl=1.23456)
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["4/10", "8/10", "10/10"]
    assert lines[0].startswith("[PPO] 4/10 (40%) score=0.3 kl=1.23 |")
    assert "s/step" in lines[-1]


def test_quiet_mode_every_zero_is_silent_but_for_warnings():
    out = io.StringIO()
    with phase_progress("PPO", total=100, quiet=True, every=0, stream=out) as bar:
        for k in range(100):
            bar.advance(1, score=1.0, warning="β too high" if k in (40, 41, 60) else None)
        bar.warn("KL negative")
    assert out.getvalue().splitlines() == ["[PPO] warning at 41/100: β too high", "[PPO] warning at 100/100: KL negative"]
    assert bar.warnings == ["β too high", "KL negative"]


def test_default_every_gives_about_ten_lines():
    out = io.StringIO()
    with phase_progress("gen", total=95, quiet=True, stream=out) as bar:
        for _ in range(95):
            bar.advance()
    assert len(out.getvalue().splitlines()) == 10  # every 10 steps -> 9 lines, then the last line at 95


def test_auto_mode_is_quiet_on_a_pipe(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert Progress("x", 3, stream=io.StringIO()).quiet  # StringIO is not a terminal


def test_live_mode_renders_a_bar_with_fields_and_warnings():
    out = io.StringIO()  # not a terminal: rich renders the bar once, when the phase ends
    with phase_progress("PPO", total=5, quiet=False, stream=out) as bar:
        for _ in range(5):
            bar.advance(1, score=0.5, kl=2.0)
        bar.advance(0, warning="critic not learning")
    text = out.getvalue()
    assert "PPO" in text and "5/5" in text and "score=0.5 kl=2" in text
    assert "⚠ PPO 5/5: critic not learning" in text


def test_bar_closes_when_the_phase_raises():
    # quiet: no line is due during the phase (every=10), so the one line is close()'s last line,
    # at the step the phase died on; the error itself propagates
    out = io.StringIO()
    with pytest.raises(RuntimeError, match="boom"):
        with phase_progress("PPO", total=4, quiet=True, every=10, stream=out) as bar:
            bar.advance(3, score=0.5)
            raise RuntimeError("boom")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[PPO] 3/4 (75%) score=0.5 |")
    # live: a rich bar on a non-terminal renders only when it is stopped, so the rendered 3/4 shows
    # that close() stopped it (a bar left running would keep its refresh thread and the console)
    out = io.StringIO()
    with pytest.raises(RuntimeError, match="boom"):
        with phase_progress("PPO", total=4, quiet=False, stream=out) as bar:
            bar.advance(3, score=0.5)
            raise RuntimeError("boom")
    assert "PPO" in out.getvalue() and "3/4" in out.getvalue()


def test_format_fields():
    class Scalar:  # a 0-d tensor stand-in
        def item(self):
            return 0.123456

    assert format_fields({"score": Scalar(), "kl": float("nan"), "step": 3, "tag": "x"}) == "score=0.123 kl=nan step=3 tag=x"
