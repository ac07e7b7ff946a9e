"""Ties as information: a labeler's "no difference" goes from the label store through the export
and the reader into the reward model's loss (score the two alike), and a loss without a tie term
(DPO) leaves ties out and counts them."""

from __future__ import annotations

import json

import pytest
import torch

from tether.data.batching import collate_pairs, tokenize_pairs
from tether.data.preferences import load_preferences, without_ties
from tether.errors import DataError
from tether.labeling.export import export_jsonl
from tether.labeling.simulated import simulate
from tether.labeling.store import Store
from tether.labeling.tasks import pair_tasks
from tether.models.loading import load_tokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def labeled_store(tmp_path) -> Store:
    # C(3,2) = 3 tasks: ("A.", "B c"), ("A.", "C."), ("B c", "C."); "B c" was cut off
    tasks = pair_tasks(["Say hi."], [["A.", "B c", "C."]], [[False, True, False]])
    store = Store(tmp_path / "labels.sqlite", create=True)
    store.add_tasks(tasks)
    # the labeler likes "A." best and sees no difference between "B c" and "C."
    simulate(store, lambda prompt, rs: "tie" if "A." not in rs else [rs.index("A."), 1 - rs.index("A.")], "sim")
    return store


def test_export_leaves_ties_out_unless_asked_and_then_writes_tie_records(tmp_path):
    store = labeled_store(tmp_path)
    plain = export_jsonl(store, tmp_path / "pairs.jsonl")
    assert (plain.pairs, plain.ties) == (2, 1) and "left out 1 ties" in plain.describe()
    assert all("tie" not in json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines())
    with_ties = export_jsonl(store, tmp_path / "all.jsonl", ties=True)
    assert "2 pairs, 0 rankings and 1 ties" in with_ties.describe()
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    (tie,) = [r for r in rows if r.get("tie")]
    # no chosen/rejected: a reader of TRL's pair format cannot take it for a preference
    assert tie["responses"] == ["B c", "C."] and tie["truncated"] == [True, False] and "chosen" not in tie
    pairs = load_preferences(tmp_path / "all.jsonl").pairs
    assert [(p.chosen, p.rejected, p.tie) for p in pairs] == [("A.", "B c", False), ("A.", "C.", False),
                                                              ("B c", "C.", True)]
    assert pairs[2].chosen_truncated and not pairs[2].rejected_truncated
    assert "2 pairs and 1 ties from 1 prompts" in load_preferences(tmp_path / "all.jsonl").summary()


def test_a_k_wise_tie_is_every_pair_tied_and_a_tie_with_a_ranking_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "responses": ["a", "b", "c"], "tie": True}])
    pairs = load_preferences(path).pairs
    # C(3,2) = 3 tied pairs, each weighted 1/3 like a ranking's
    assert [(p.chosen, p.rejected, p.tie, p.weight) for p in pairs] == [
        ("a", "b", True, pytest.approx(1 / 3)), ("a", "c", True, pytest.approx(1 / 3)),
        ("b", "c", True, pytest.approx(1 / 3))]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "responses": ["a", "b"], "tie": True,
                                                "ranking": [0, 1]}])
    with pytest.raises(DataError, match=r'bad.jsonl:1: field "ranking" cannot be given with tie: true'):
        load_preferences(bad)
    not_bool = write_jsonl(tmp_path / "nb.jsonl", [{"prompt": "p", "responses": ["a", "b"], "tie": "yes"}])
    with pytest.raises(DataError, match=r'nb.jsonl:1: field "tie" must be true or false'):
        load_preferences(not_bool)


def test_without_ties_counts_what_it_leaves_out_and_refuses_ties_only(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "responses": ["c", "d"], "tie": True},
    ])
    data = without_ties(load_preferences(path))
    assert [(p.chosen, p.rejected) for p in data.pairs] == [("a", "b")]
    assert data.dropped.ties == 1 and "1 tied pairs" in data.summary()
    only = write_jsonl(tmp_path / "o.jsonl", [{"prompt": "q", "responses": ["c", "d"], "tie": True}])
    with pytest.raises(DataError, match="only tied pairs"):
        without_ties(load_preferences(only))


def test_a_tie_reaches_the_batch_and_the_loss_pulls_its_scores_together(tmp_path):
    from tether.ops.losses import bradley_terry_loss

    path = write_jsonl(tmp_path / "m.jsonl", [
        {"prompt": "p", "chosen": "good answer", "rejected": "bad answer"},
        {"prompt": "p", "responses": ["one way", "another way"], "tie": True},
    ])
    items, _ = tokenize_pairs(load_preferences(path).pairs, load_tokenizer("tiny-llama"), 64)
    batch = collate_pairs(items, 0)
    assert batch.tie.tolist() == [False, True]
    # scores: preference gap +1 (right), tie gap +3: the tie's gradient pushes its first score down
    chosen = torch.tensor([1.0, 3.0], requires_grad=True)
    loss, stats = bradley_terry_loss(chosen, torch.zeros(2), ties=batch.tie)
    loss.backward()
    assert stats["accuracy"].item() == 1.0  # over the preference only
    assert chosen.grad[1].item() > 0  # descent lowers the higher-scored response of the tie


def tie_data(tmp_path):
    rows = []
    for i in range(12):
        rows.append({"prompt": f"question {i}", "chosen": f"a fine answer {i}.", "rejected": f"no {i}."})
        rows.append({"prompt": f"question {i}", "responses": [f"one way {i}.", f"another way {i}."], "tie": True})
    return write_jsonl(tmp_path / "prefs.jsonl", rows)


def test_train_rm_learns_ties_and_holds_out_only_preferences(tmp_path, monkeypatch):
    import tether.train.reward_model as rm
    from tether.train.reward_model import RewardModelConfig, train_reward_model

    seen_ties: list[list[bool] | None] = []  # per loss call: the tie marks (None: held-out evaluation)
    original = rm.bradley_terry_loss

    def spy(chosen, rejected, margin=None, weights=None, ties=None):
        seen_ties.append(None if ties is None else ties.tolist())
        return original(chosen, rejected, margin, weights, ties)

    monkeypatch.setattr(rm, "bradley_terry_loss", spy)
    config = RewardModelConfig(model="tiny-llama", data=str(tie_data(tmp_path)), eval_fraction=0.25, epochs=1,
                               batch_size=8, evals_per_epoch=1, normalize="none", output_dir=str(tmp_path),
                               run_name="rm", quiet=True)
    train_reward_model(config)
    summary = (tmp_path / "rm" / "data_summary.txt").read_text()
    assert "pairs and" in summary and "ties from" in summary  # the summary counts both kinds
    verdict = json.loads((tmp_path / "rm" / "rm_verdict.json").read_text())
    assert verdict["pairs"] == 3  # the 3 held-out prompts' preferences; their ties are not judged
    training = [t for t in seen_ties if t is not None]
    # the 9 training prompts' 18 pairs, half of them ties, all reach the loss with their marks
    assert sum(len(t) for t in training) == 18 and sum(sum(t) for t in training) == 9
    assert None in seen_ties  # and the held-out evaluation ran, on preferences only


def test_dpo_leaves_ties_out_and_counts_them(tmp_path):
    from tether.config import load_config
    from tether.train.dpo import DPOConfig, train_dpo

    config = load_config(DPOConfig, "configs/dpo-tiny.yaml", [f"data={tie_data(tmp_path)}", "eval_fraction=0.25",
                                                             f"output_dir={tmp_path}", "run_name=dpo", "max_steps=1",
                                                             "quiet=true"])
    train_dpo(config)
    summary = (tmp_path / "dpo" / "data_summary.txt").read_text()
    assert "dropped 9 tied pairs" in summary  # the 9 training prompts' ties; DPO has no tie term


def test_the_demo_exports_ties_for_the_reward_model_when_asked(tmp_path):
    from tether.demo.config import DemoConfig
    from tether.demo.pipeline import label_pairs
    from tether.labeling.tasks import write_tasks

    tasks = pair_tasks([f"q{i}" for i in range(3)], [[f"a{i}.", f"bb{i}.", f"a{i}!"] for i in range(3)],
                       [[False] * 3] * 3)
    write_tasks(tasks, tmp_path / "tasks.jsonl")
    # a labeler that prefers the longer answer and sees no difference between equal lengths
    def labeler(prompt, rs):
        if len(rs[0]) == len(rs[1]):
            return "tie"
        return [0, 1] if len(rs[0]) > len(rs[1]) else [1, 0]
    for learn in (False, True):
        out = tmp_path / f"ties-{learn}"
        out.mkdir()
        prefs, _, counts = label_pairs(DemoConfig(model="tiny-llama", rm_ties=learn), tmp_path / "tasks.jsonl",
                                       labeler, out)
        rows = [json.loads(line) for line in prefs.read_text().splitlines()]
        assert counts["ties"] == 3 and sum(bool(r.get("tie")) for r in rows) == (3 if learn else 0)
        assert sum("chosen" in r for r in rows) == 6
