"""A table of a few samples on the console every N iterations, as TRL prints one: what the policy
writes, what the reward says of it (in total and per reward source) and how far it has moved
from the reference. samples.jsonl keeps every logged sample; the table is for a person watching."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

PROMPT_CHARS = 120  # longer prompts are shown by their end (the question is usually last)
RESPONSE_CHARS = 300  # longer responses are shown by their start


def sample_table(iteration: int, rows: list[dict]) -> Table:
    """``rows``: samples.jsonl rows (prompt, response, score, kl, optional rewards: name -> score)."""
    components = list(rows[0].get("rewards", {})) if rows and len(rows[0].get("rewards", {})) > 1 else []
    table = Table(title=f"samples at iteration {iteration}", show_lines=True, title_justify="left")
    table.add_column("prompt", overflow="fold", ratio=2)
    table.add_column("response", overflow="fold", ratio=3)
    table.add_column("score", justify="right", no_wrap=True)
    for name in components:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("KL", justify="right", no_wrap=True)
    for row in rows:
        # Text, not markup: a response may hold "[bold]" or "[/]" and must print as written
        cells = [Text(_tail(row["prompt"], PROMPT_CHARS)), Text(_head(row["response"], RESPONSE_CHARS)),
                 _number(row["score"]), *(_number(row["rewards"][name]) for name in components), _number(row["kl"])]
        table.add_row(*cells)
    return table


def _number(value: float) -> str:
    return f"{value:.3g}"


def _head(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]
