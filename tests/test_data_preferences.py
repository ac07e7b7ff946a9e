"""Preference data in the formats users already have: TRL pairs (strings or conversations,
explicit or implicit prompt), K-wise rankings, and every file type, all to the same pairs."""

from __future__ import annotations

import json

import pytest

from tether.data.preferences import load_preferences, split_by_prompt
from tether.data.prompts import load_prompts
from tether.data.sft import load_demonstrations

ROWS = [
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven.", "margin": 2.0},
    {"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "No."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def as_tuples(data):
    return [(p.prompt, p.chosen, p.rejected, p.margin, p.weight) for p in data.pairs]


EXPECTED = [("Name a colour.", "Blue.", "Seven.", 2.0, 1.0), ("Say hi.", "Hi there!", "No.", None, 1.0)]


def test_trl_string_pairs_with_optional_margin(tmp_path):
    data = load_preferences(write_jsonl(tmp_path / "prefs.jsonl", ROWS))
    assert as_tuples(data) == EXPECTED
    assert data.num_rows == 2 and data.dropped.describe() == "nothing dropped"


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet", "dataset", "datasetdict"])
def test_every_file_type_reads_the_same_pairs(tmp_path, fmt):
    if fmt == "json":
        path = tmp_path / "prefs.json"
        path.write_text(json.dumps(ROWS, indent=2))
    elif fmt == "csv":
        import pandas as pd

        path = tmp_path / "prefs.csv"
        pd.DataFrame(ROWS).to_csv(path, index=False)  # the missing margin is an empty cell
    elif fmt == "parquet":
        import pandas as pd

        path = tmp_path / "prefs.parquet"
        pd.DataFrame(ROWS).to_parquet(path)  # the missing margin is NaN
    else:
        from datasets import Dataset, DatasetDict

        path = tmp_path / "prefs_ds"
        ds = Dataset.from_list(ROWS)
        (DatasetDict({"train": ds, "test": ds.select([1])}) if fmt == "datasetdict" else ds).save_to_disk(str(path))
    assert as_tuples(load_preferences(path)) == EXPECTED
    if fmt == "datasetdict":
        assert as_tuples(load_preferences(path, split="test")) == EXPECTED[1:]


def test_csv_cells_may_hold_json_conversations(tmp_path):
    import pandas as pd

    chosen = json.dumps([{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}])
    rejected = json.dumps([{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}])
    pd.DataFrame([{"chosen": chosen, "rejected": rejected}]).to_csv(tmp_path / "c.csv", index=False)
    (pair,) = load_preferences(tmp_path / "c.csv").pairs
    assert (pair.prompt, pair.chosen, pair.rejected) == ([{"role": "user", "content": "Hi?"}], "Hello!", "Go away.")


def test_conversational_explicit_prompt(tmp_path):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "4"}],
           "rejected": [{"role": "assistant", "content": "5"}]}
    (pair,) = load_preferences(write_jsonl(tmp_path / "p.jsonl", [row])).pairs
    assert (pair.prompt, pair.chosen, pair.rejected) == (prompt, "4", "5")


def test_conversational_implicit_prompt_is_the_common_prefix(tmp_path):
    # TRL's implicit-prompt format: no "prompt" field, full conversations in chosen/rejected
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"}]
    row = {"chosen": turns + [{"role": "assistant", "content": "4"}], "rejected": turns + [{"role": "assistant", "content": "22"}]}
    (pair,) = load_preferences(write_jsonl(tmp_path / "p.jsonl", [row])).pairs
    assert (pair.prompt, pair.chosen, pair.rejected) == (turns, "4", "22")


def test_explicit_prompt_repeated_inside_the_responses_is_removed(tmp_path):
    prompt = [{"role": "user", "content": "2+2?"}]
    row = {"prompt": prompt, "chosen": prompt + [{"role": "assistant", "content": "4"}],
           "rejected": prompt + [{"role": "assistant", "content": "5"}]}
    (pair,) = load_preferences(write_jsonl(tmp_path / "p.jsonl", [row])).pairs
    assert (pair.chosen, pair.rejected) == ("4", "5")


def test_ranking_of_four_becomes_six_pairs_with_equal_prompt_weight(tmp_path):
    rows = [
        {"prompt": "Rank me", "responses": ["a", "b", "c", "d"], "ranking": [2, 0, 3, 1]},  # c > a > d > b
        {"prompt": "Rank three", "responses": ["x", "y", "z"], "ranking": [0, 1, 2]},
        {"prompt": "A plain pair", "chosen": "good", "rejected": "bad"},
    ]
    data = load_preferences(write_jsonl(tmp_path / "r.jsonl", rows))
    four = [(p.chosen, p.rejected) for p in data.pairs if p.prompt == "Rank me"]
    # C(4,2) = 6 pairs: every (better, worse) pair of c > a > d > b
    assert four == [("c", "a"), ("c", "d"), ("c", "b"), ("a", "d"), ("a", "b"), ("d", "b")]
    assert all(p.weight == pytest.approx(1 / 6) for p in data.pairs if p.prompt == "Rank me")
    # each prompt's pairs sum to weight 1 whatever K is: 6 x 1/6 = 3 x 1/3 = 1 x 1
    totals = {}
    for p in data.pairs:
        totals[p.prompt] = totals.get(p.prompt, 0.0) + p.weight
    assert totals == pytest.approx({"Rank me": 1.0, "Rank three": 1.0, "A plain pair": 1.0})
    assert len({p.group for p in data.pairs if p.prompt == "Rank me"}) == 1


def test_duplicates_and_identical_pairs_are_dropped_and_counted(tmp_path):
    rows = [ROWS[0], ROWS[0], {"prompt": "p", "chosen": "same", "rejected": "same"}, ROWS[1],
            {"prompt": "q", "responses": ["u", "u", "v"], "ranking": [0, 1, 2]}]  # u == u: one identical pair
    data = load_preferences(write_jsonl(tmp_path / "d.jsonl", rows))
    # kept: the two ROWS and (u, v); the ranking gives (u, u) identical, (u, v), and (u, v) again
    assert len(data) == 3
    assert (data.dropped.duplicates, data.dropped.identical) == (2, 2)
    assert "2 duplicate pairs" in data.summary() and "2 pairs with chosen == rejected" in data.summary()


def test_split_by_prompt_keeps_a_ranking_together(tmp_path):
    rows = [{"prompt": f"p{i}", "responses": ["a", "b", "c"], "ranking": [0, 1, 2]} for i in range(10)]
    data = load_preferences(write_jsonl(tmp_path / "r.jsonl", rows))
    train, held = split_by_prompt(data, 0.2, seed=0)
    assert len(held) == 2 * 3 and len(train) == 8 * 3
    assert not {p.prompt for p in train.pairs} & {p.prompt for p in held.pairs}


def test_load_prompts_from_txt_json_and_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    assert load_prompts(tmp_path / "p.txt") == ["first", "second"]
    chat = [{"role": "user", "content": "hello"}]
    (tmp_path / "p.json").write_text(json.dumps(["one", chat]))
    assert load_prompts(tmp_path / "p.json") == ["one", chat]
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "id": 1}, {"prompt": chat}, {"messages": chat}])
    assert load_prompts(tmp_path / "p.jsonl") == ["a", chat, chat]


def test_load_demonstrations_prompt_completion_and_messages(tmp_path):
    rows = [
        {"prompt": "Say hi.", "completion": "Hi!"},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"prompt": [{"role": "user", "content": "Yes?"}], "completion": [{"role": "assistant", "content": "Yes."}]},
        {"prompt": "Say hi.", "completion": "Hi!"},  # duplicate
    ]
    data = load_demonstrations(write_jsonl(tmp_path / "sft.jsonl", rows))
    assert [(d.prompt, d.completion) for d in data.examples] == [
        ("Say hi.", "Hi!"), ([{"role": "user", "content": "2+2?"}], "4"), ([{"role": "user", "content": "Yes?"}], "Yes.")]
    assert data.dropped.duplicates == 1
