"""One progress bar per long phase (generation, PPO iterations, RM epochs), with live fields.

    with phase_progress("PPO", total=n_iterations) as bar:
        for iteration in range(n_iterations):
            ...
            bar.advance(1, score=stats["objective/score_mean"], kl=stats["objective/kl_k3"])
            for finding in doctor.update(iteration, stats):
                bar.warn(finding.title)

Two displays behind one interface:
- live (a terminal): a rich bar with done/total, elapsed, remaining, and the latest fields;
  warnings print once above the bar and the bar counts them.
- quiet (CI, pipes, ``quiet=True``): one plain line every ``every`` steps (default: ten
  lines per phase) and a last line when the phase ends; ``every=0`` prints no progress
  lines at all. Warnings always print, once each: they are what a CI log is read for.

``quiet=None`` (the default) picks quiet when the stream is not a terminal or ``CI`` is set.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


def format_fields(fields: dict[str, Any]) -> str:
    """'score=0.512 kl=1.3': floats to 3 significant digits, other values as they print."""
    parts = []
    for key, value in fields.items():
        if hasattr(value, "item"):  # a 0-d tensor or numpy scalar
            value = value.item()
        if isinstance(value, float):
            text = f"{value:.3g}" if math.isfinite(value) else str(value)
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


class Progress:
    """Progress of one phase. Use through ``phase_progress``; ``advance`` and ``warn`` are
    the whole interface the loops need."""

    def __init__(
        self,
        name: str,
        total: int | None = None,
        *,
        quiet: bool | None = None,
        every: int | None = None,
        stream: TextIO | None = None,
    ):
        self.name = name
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.console = Console(file=self.stream, highlight=False)
        if quiet is None:
            quiet = not self.console.is_terminal or bool(os.environ.get("CI"))
        self.quiet = quiet
        self.every = every if every is not None else max(1, math.ceil((total or 100) / 10))
        self.completed = 0
        self.fields: dict[str, Any] = {}
        self.warnings: list[str] = []
        self._started = time.perf_counter()
        self._last_line_at = 0
        self._live: RichProgress | None = None
        self._task = None

    # ---- the interface -------------------------------------------------------------------

    def advance(self, n: int = 1, *, warning: str | None = None, **fields: Any) -> None:
        """Count ``n`` more steps done; ``fields`` (score=..., kl=...) replace the shown values;
        ``warning`` is shown like ``warn(warning)``. Metric names with '/' pass as a dict:
        ``bar.advance(1, **{"objective/kl_k3": kl})``."""
        self.completed += n
        self.fields.update(fields)
        if warning:
            self.warn(warning)
        if self._live is not None:
            self._live.update(self._task, completed=self.completed, info=self._info())
        elif self.every and self.completed - self._last_line_at >= self.every:
            self._last_line_at = self.completed
            self._line()

    def warn(self, message: str) -> None:
        """Print a warning once (repeats of the same message are dropped)."""
        if message in self.warnings:
            return
        self.warnings.append(message)
        where = f"{self.completed}/{self.total}" if self.total else str(self.completed)
        if self._live is not None:
            self._live.console.print(f"[yellow]⚠ {self.name} {where}: {message}[/yellow]")
            self._live.update(self._task, info=self._info())
        else:
            self._print(f"[{self.name}] warning at {where}: {message}")

    def log(self, message: str) -> None:
        """A line of text that does not disturb the bar."""
        if self._live is not None:
            self._live.console.print(message)
        else:
            self._print(f"[{self.name}] {message}")

    def show(self, renderable: Any) -> None:
        """A rich renderable (a table of samples) printed above the bar, or into the log when quiet."""
        console = self._live.console if self._live is not None else self.console
        console.print(renderable)

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> "Progress":
        self._started = time.perf_counter()
        if not self.quiet:
            self._live = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
            )
            self._live.start()
            self._task = self._live.add_task(self.name, total=self.total, info="")
        return self

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._task, completed=self.completed, info=self._info())
            self._live.stop()
            self._live = None
        elif self.every and self.completed != self._last_line_at:
            self._line()

    # ---- helpers -------------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    def _info(self) -> str:
        text = format_fields(self.fields)
        if self.warnings:
            text += f" [yellow]⚠ {len(self.warnings)}[/yellow]"
        return text

    def _line(self) -> None:
        done = f"{self.completed}/{self.total}" if self.total else str(self.completed)
        pct = f" ({100 * self.completed / self.total:.0f}%)" if self.total else ""
        rate = f", {self.elapsed / self.completed:.2f} s/step" if self.completed else ""
        fields = f" {format_fields(self.fields)}" if self.fields else ""
        self._print(f"[{self.name}] {done}{pct}{fields} | {self.elapsed:.1f} s{rate}")

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


@contextmanager
def phase_progress(
    name: str,
    total: int | None = None,
    quiet: bool | None = None,
    *,
    every: int | None = None,
    stream: TextIO | None = None,
) -> Iterator[Progress]:
    """A ``Progress`` started on entry and closed on exit (also when the phase raises)."""
    bar = Progress(name, total, quiet=quiet, every=every, stream=stream).start()
    try:
        yield bar
    finally:
        bar.close()
