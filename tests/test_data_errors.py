"""Every bad-input class gives one line naming file:row: field; --skip-bad-rows counts instead."""

from __future__ import annotations

import json

import pytest

from tether.data.preferences import load_preferences
from tether.data.sft import load_demonstrations
from tether.errors import DataError

GOOD = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}


def write(tmp_path, rows, name="prefs.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def load_error(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_preferences(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "bad_row, expected",
    [
        # missing field
        ({"prompt": "p", "chosen": "a"}, 'prefs.jsonl:2: field "rejected" is missing'),
        ({"prompt": "p", "chosen": "a", "rejected": None}, 'prefs.jsonl:2: field "rejected" is missing'),
        ({"chosen": "a", "rejected": "b"}, 'prefs.jsonl:2: field "prompt" is missing'),
        # wrong type
        ({"prompt": "p", "chosen": 5, "rejected": "b"},
         'prefs.jsonl:2: field "chosen" must be a string or a list of chat messages, got a number'),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"},
         'prefs.jsonl:2: field "margin" must be a number, got a string'),
        ({"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": "b"},
         'prefs.jsonl:2: field "chosen" message 1 needs a string "content", got nothing'),
        ({"prompt": "p", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"},
         'prefs.jsonl:2: field "chosen" must end in exactly one assistant message after the prompt (got roles: user)'),
        (["not", "an", "object"], "prefs.jsonl:2: expected an object with named fields, got a list"),
        # empty text
        ({"prompt": "p", "chosen": "   ", "rejected": "b"}, 'prefs.jsonl:2: field "chosen" is empty'),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, 'prefs.jsonl:2: field "prompt" is empty'),
        ({"prompt": "p", "chosen": [], "rejected": "b"}, 'prefs.jsonl:2: field "chosen" is empty'),
        # bad ranking indices
        ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1, 5]},
         'prefs.jsonl:2: field "ranking" must order every response once (a permutation of 0..2): '
         "index 5 is out of range for 3 responses"),
        ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1, 1]},
         'prefs.jsonl:2: field "ranking" must order every response once (a permutation of 0..2): index 1 appears twice'),
        ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1]},
         'prefs.jsonl:2: field "ranking" must order every response once (a permutation of 0..2): it ranks 2 of 3 responses'),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": ["0", "1"]},
         "prefs.jsonl:2: field \"ranking\" must be a list of response indices (best first), got ['0', '1']"),
        ({"prompt": "p", "responses": ["a"], "ranking": [0]},
         'prefs.jsonl:2: field "responses" needs at least 2 responses to rank, got 1'),
        ({"prompt": "p", "responses": ["a", ""], "ranking": [0, 1]}, 'prefs.jsonl:2: field "responses[1]" is empty'),
        ({"prompt": "p", "responses": ["a", "b"]}, 'prefs.jsonl:2: field "ranking" is missing'),
    ],
)
def test_bad_row_names_file_row_and_field(tmp_path, bad_row, expected):
    path = write(tmp_path, [GOOD, bad_row])
    message = load_error(path)
    assert message == expected.replace("prefs.jsonl", str(path))


def test_unparseable_jsonl_line(tmp_path):
    path = write(tmp_path, [GOOD, '{"prompt": "p", "chosen": '])
    assert load_error(path) == f"{path}:2: invalid JSON (Expecting value at column 27)"


@pytest.mark.parametrize("case", ["missing", "directory", "extension", "not-utf8", "bad-json", "not-a-list"])
def test_unreadable_file(tmp_path, case):
    path = tmp_path / "prefs.json"
    expected = {
        "missing": f"{path}: file not found",
        "directory": f"{tmp_path / 'folder'}: not a Hugging Face datasets folder (save_to_disk)",
        "extension": f"{tmp_path / 'prefs.xlsx'}: unknown file type '.xlsx'",
        "not-utf8": f"{path}: cannot read: not UTF-8 text",
        "bad-json": f"{path}:3: invalid JSON (Expecting ',' delimiter)",
        "not-a-list": f"{path}: expected a JSON list of objects at the top level",
    }[case]
    if case == "directory":
        (path := tmp_path / "folder").mkdir()
    elif case == "extension":
        (path := tmp_path / "prefs.xlsx").write_bytes(b"PK\x03\x04")
    elif case == "not-utf8":
        path.write_bytes(b'[{"prompt": "caf\xe9"}]')
    elif case == "bad-json":
        path.write_text('[\n  {"prompt": "p", "chosen": "a", "rejected": "b"}\n  {"prompt": "q"}\n]')
    elif case == "not-a-list":
        path.write_text('{"prompt": "p"}')
    assert load_error(path).startswith(expected)


def test_json_and_csv_rows_report_their_line(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps([GOOD, GOOD | {"chosen": ""}], indent=2))
    # json.dumps(indent=2) puts the second object's "{" on line 7
    assert load_error(path) == f'{path}:7: field "chosen" is empty'
    csv_path = tmp_path / "prefs.csv"
    csv_path.write_text('prompt,chosen,rejected\np,"two\nlines",b\nq,,b\n')
    assert load_error(csv_path) == f'{csv_path}:4: field "chosen" is empty'


def test_skip_bad_rows_counts_them_and_reports_once(tmp_path):
    rows = [GOOD, {"prompt": "p", "chosen": ""}, "{broken", GOOD | {"prompt": "Other."}]
    data = load_preferences(write(tmp_path, rows), skip_bad_rows=True)
    assert len(data) == 2 and data.dropped.bad_rows == 2
    summary = data.summary()
    assert "4 rows -> 2 pairs from 2 prompts; dropped 2 bad rows" in summary
    assert 'prefs.jsonl:2: field "chosen" is empty' in summary


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path):
    path = write(tmp_path, [{"prompt": "p"}])
    assert load_error(path, skip_bad_rows=True) == f"{path}: no usable preference pairs (dropped 1 bad rows)"


def test_demonstration_errors(tmp_path):
    path = write(tmp_path, [{"prompt": "p", "completion": "c"}, {"prompt": "p"}], "sft.jsonl")
    with pytest.raises(DataError, match=r'sft\.jsonl:2: field "completion" is missing$'):
        load_demonstrations(path)
    path = write(tmp_path, [{"messages": [{"role": "assistant", "content": "hi"}]}], "sft.jsonl")
    with pytest.raises(DataError, match=r'sft\.jsonl:1: field "messages" needs a prompt turn'):
        load_demonstrations(path)


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from tether.cli import main

    path = write(tmp_path, [GOOD, {"prompt": "p", "chosen": 3, "rejected": "b"}])
    code = main(["train-rm", f"data={path}", f"output_dir={tmp_path / 'runs'}", "quiet=true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == f'error: {path}:2: field "chosen" must be a string or a list of chat messages, got a number'
