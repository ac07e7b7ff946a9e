"""Prompt sets for sampling (PPO rollouts, reference samples for reward normalisation).

A prompt is a string or a list of chat messages. Accepted files: ``.txt`` (one prompt per
non-empty line), a JSON list (of strings, message lists, or objects with a ``prompt``
field), or any row format ``read_rows`` reads (JSONL, CSV, Parquet, datasets folder) with a
``prompt`` (or ``messages``) field.
"""

from __future__ import annotations

from pathlib import Path

from tether.data import fields
from tether.data.readers import Row, lines, read_rows
from tether.data.templates import Prompt
from tether.errors import DataError
from tether.utils.hub import looks_like_hub_dataset

ASSETS = Path(__file__).parent / "assets"


def load_prompts(path: str | Path, split: str | None = None) -> list[Prompt]:
    """All prompts of a file, in file order. Errors name file:row: field."""
    path = Path(path).expanduser()
    if not path.exists() and not looks_like_hub_dataset(str(path)):  # a Hub data set: read_rows resolves it
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() == ".txt":
        prompts = [line for line in lines(_read_text(path)) if line.strip()]
    elif path.suffix.lower() == ".json" and _is_plain_list(path):
        prompts = [_prompt_from_value(Row(f"{path}:item {i}"), item) for i, item in enumerate(_load_json(path), 1)]
    else:
        prompts = [_prompt_from_row(row) for row in read_rows(path, split)]
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def load_builtin_prompts(name: str) -> list[Prompt]:
    """A prompt set shipped in ``tether/data/assets`` (``demo``, ``demo-train``, ``demo-eval``),
    found by name with any supported extension."""
    for suffix in (".jsonl", ".json", ".txt"):
        candidate = ASSETS / f"{name}{suffix}"
        if candidate.is_file():
            return load_prompts(candidate)
    available = sorted({p.stem for p in ASSETS.glob("*")}) if ASSETS.is_dir() else []
    raise DataError(f"no built-in prompt set '{name}' in {ASSETS} (available: {', '.join(available) or 'none'})")


def _prompt_from_row(row: Row) -> Prompt:
    if row.error:
        raise DataError(f"{row.where}: {row.error}")
    if "prompt" not in row.data and "messages" in row.data:
        return fields.text_or_messages(row, "messages")
    return fields.text_or_messages(row, "prompt")


def _prompt_from_value(row: Row, value) -> Prompt:
    if isinstance(value, dict):
        return _prompt_from_row(Row(row.where, value))
    if isinstance(value, (str, list)):
        return fields.text_or_messages(row, "prompt", value)
    raise fields.field_error(row, "prompt", "must be a string or a list of chat messages")


def _load_json(path: Path):
    import json

    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: invalid JSON (nested too deeply)") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _is_plain_list(path: Path) -> bool:
    """A JSON list whose items are not all objects (``read_rows`` handles lists of objects)."""
    data = _load_json(path)
    return isinstance(data, list) and not all(isinstance(item, dict) for item in data)
