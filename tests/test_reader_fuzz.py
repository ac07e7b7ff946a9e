"""The data readers under random input: preference, demonstration and prompt files in every
line format (JSONL, JSON, CSV, .txt). A malformed row is a one-line DataError naming the file
and row, never a traceback; a well-formed row is never lost, whatever characters its text holds
(U+2028, U+0085, quotes, brackets, very long cells)."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.data.preferences import load_preferences
from tether.data.prompts import load_prompts
from tether.data.sft import load_demonstrations
from tether.errors import DataError

FUZZ = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
LOADERS = {"preferences": load_preferences, "demonstrations": load_demonstrations, "prompts": load_prompts}
FIELDS = ["prompt", "chosen", "rejected", "margin", "responses", "ranking", "truncated", "chosen_truncated",
          "rejected_truncated", "completion", "messages", "role", "content"]

# ----- strategies ----------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-5, max_value=5) | st.integers(), st.floats(),
                    st.text(max_size=8), st.sampled_from(["", " ", "user", "assistant", "[0, 1]", "{}", "[]"]))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["role", "content", "x"]) | st.text(max_size=4),
                                                                inner, max_size=3),
    max_leaves=10)
rows = st.one_of(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), json_values, max_size=6), json_values)

# text a row may hold: any character but surrogates, not blank
texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(str.strip)
tricky_texts = st.one_of(texts, st.sampled_from(["a\u2028b", "x\x85y", "p\u2029q", "tab\x0bvt", "form\x0cfeed",
                                                   "sep\x1crecord", '"quoted", with comma', "[1, 2]", "{\"a\": 1}",
                                                   "line\nbreak", "cr\rlf\r\n", "x" * 200_000]))


def write(path: Path, fmt: str, records: list) -> Path:
    """Records as the given format, written the way other tools write them: JSON without ASCII
    escapes (as ``tether label export``), CSV through the csv module (cells JSON-encoded when
    they are not strings)."""
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    else:
        columns = sorted({k for r in records if isinstance(r, dict) for k in r}) or ["prompt"]
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for r in records:
                cells = r if isinstance(r, dict) else {}
                writer.writerow([c if isinstance(c := cells.get(k, ""), str) else json.dumps(c) for k in columns])
    return path


def load_or_data_error(kind: str, path: Path, skip_bad_rows: bool):
    """The loader's result, or the DataError it raised, checked to be one line naming the file."""
    try:
        if kind == "prompts":
            return load_prompts(path)
        return LOADERS[kind](str(path), skip_bad_rows=skip_bad_rows)
    except DataError as exc:
        message = str(exc)
        assert message.startswith(str(path)), message
        assert len(message.splitlines()) == 1, message
        return exc


# ----- malformed rows: a clear error, never a traceback ------------------------------------------

@FUZZ
@given(kind=st.sampled_from(sorted(LOADERS)), fmt=st.sampled_from(["jsonl", "json", "csv"]),
       records=st.lists(rows, min_size=1, max_size=5), skip=st.booleans())
def test_random_rows_give_data_or_a_one_line_data_error(kind, fmt, records, skip):
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder) / f"data.{fmt}", fmt, records)
        result = load_or_data_error(kind, path, skip)
    if kind == "preferences" and not isinstance(result, DataError):
        for pair in result.pairs:
            assert isinstance(pair.chosen, str) and pair.chosen.strip() and pair.chosen != pair.rejected
            assert pair.margin is None or pair.margin == pair.margin  # never NaN
    if kind == "demonstrations" and not isinstance(result, DataError):
        assert all(isinstance(e.completion, str) and e.completion.strip() for e in result.examples)


@FUZZ
@given(kind=st.sampled_from(sorted(LOADERS)), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".txt"]),
       content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_bytes_give_data_or_a_one_line_data_error(kind, suffix, content):
    if suffix == ".txt" and kind != "prompts":
        suffix = ".jsonl"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        load_or_data_error(kind, path, skip_bad_rows=False)


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000 + "\n", "data.jsonl:1: invalid JSON (nested too deeply)"),
    ('{"prompt": "p", "chosen": ' + "[" * 100_000 + "]" * 100_000 + ', "rejected": "r"}\n',
     "data.jsonl:1: invalid JSON (nested too deeply)"),
])
def test_json_nested_past_the_recursion_limit_is_a_bad_row(tmp_path, text, message):
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_preferences(str(path))


# ----- well-formed rows: none lost ------------------------------------------------------------------

@FUZZ
@given(fmt=st.sampled_from(["jsonl", "json", "csv"]),
       triples=st.lists(st.tuples(tricky_texts, tricky_texts, tricky_texts), min_size=1, max_size=4,
                        unique_by=lambda t: (t[0], t[1], t[2])).filter(lambda ts: all(c != r for _, c, r in ts)))
def test_every_preference_row_is_read_back_exactly(fmt, triples):
    records = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in triples]
    with tempfile.TemporaryDirectory() as folder:
        data = load_preferences(str(write(Path(folder) / f"prefs.{fmt}", fmt, records)))
    assert [(p.prompt, p.chosen, p.rejected) for p in data.pairs] == triples


@FUZZ
@given(fmt=st.sampled_from(["jsonl", "json", "csv"]),
       pairs=st.lists(st.tuples(tricky_texts, tricky_texts), min_size=1, max_size=4, unique=True))
def test_every_demonstration_is_read_back_exactly(fmt, pairs):
    records = [{"prompt": p, "completion": c} for p, c in pairs]
    with tempfile.TemporaryDirectory() as folder:
        data = load_demonstrations(str(write(Path(folder) / f"sft.{fmt}", fmt, records)))
    assert [(e.prompt, e.completion) for e in data.examples] == pairs


@FUZZ
@given(fmt=st.sampled_from(["jsonl", "json", "csv", "txt"]), prompts=st.lists(tricky_texts, min_size=1, max_size=5))
def test_every_prompt_is_read_back_exactly(fmt, prompts):
    if fmt == "txt":  # one prompt per line: a prompt cannot hold a line break there
        prompts = [p for p in prompts if "\n" not in p and "\r" not in p] or ["p\u2028q"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"prompts.{fmt}"
        if fmt == "txt":
            path.write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
        else:
            write(path, fmt, [{"prompt": p} for p in prompts])
        assert load_prompts(path) == prompts


@pytest.mark.parametrize("suffix, content", [
    (".csv", "prompt,chosen,rejected\r\nhi,hello,go away\r\n"),  # as Excel saves "CSV UTF-8"
    (".jsonl", json.dumps({"prompt": "hi", "chosen": "hello", "rejected": "go away"}) + "\n"),
])
def test_a_byte_order_mark_is_not_part_of_the_first_field(tmp_path, suffix, content):
    path = tmp_path / f"prefs{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + content.encode("utf-8"))
    assert [(p.prompt, p.chosen, p.rejected) for p in load_preferences(str(path)).pairs] == [("hi", "hello", "go away")]
