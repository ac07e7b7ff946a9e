"""What makes the labels steer the policy: cut-off responses scored as the policy produces them
(no EOS it did not generate), every pair of K samples as a comparison, reward-model batches of
whole prompts, early stopping, the held-out accuracy judged against chance, critic warm-up, and
the suite of simulated tastes."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from tether.data.batching import collate_pairs, tokenize_pairs
from tether.data.preferences import load_preferences
from tether.labeling.export import export_jsonl
from tether.labeling.simulated import simulate, tie_share_warning
from tether.labeling.store import MIGRATIONS, Store
from tether.labeling.tasks import Task, load_tasks, pair_tasks, write_tasks
from tether.models.loading import load_tokenizer
from tether.utils.stats import grouped_accuracy_ci

pytestmark = pytest.mark.usefixtures("one_thread")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ----- cut-off responses: recorded, exported, never given an EOS -------------------------------


def test_truncation_flags_go_from_tasks_through_the_store_to_the_export(tmp_path):
    tasks = pair_tasks(["Say hi."], [["Hello there.", "Hi, I am glad to", "Hey"]], [[False, True, False]])
    # C(3,2) = 3 pairs: (0,1) (0,2) (1,2), each carrying the flags of its two responses
    assert [t.responses for t in tasks] == [("Hello there.", "Hi, I am glad to"), ("Hello there.", "Hey"),
                                            ("Hi, I am glad to", "Hey")]
    assert [t.truncated for t in tasks] == [(False, True), (False, False), (True, False)]
    write_tasks(tasks, tmp_path / "tasks.jsonl")
    assert load_tasks(tmp_path / "tasks.jsonl") == tasks  # the file keeps them
    store = Store(tmp_path / "labels.sqlite", create=True)
    store.add_tasks(tasks)
    assert [t.truncated for t in store.tasks()] == [t.truncated for t in tasks]
    simulate(store, lambda prompt, rs: [1, 0], "sim")  # always the second response
    export_jsonl(store, tmp_path / "prefs.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert [(r["chosen"], r["chosen_truncated"], r["rejected_truncated"]) for r in rows] == [
        ("Hi, I am glad to", True, False), ("Hey", False, False), ("Hey", False, True)]
    pairs = load_preferences(tmp_path / "prefs.jsonl").pairs
    assert [(p.chosen_truncated, p.rejected_truncated) for p in pairs] == [(True, False), (False, False), (False, True)]


def test_a_ranking_row_marks_its_cut_off_responses(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1],
                                               "truncated": [False, True, False]}])
    pairs = load_preferences(path).pairs  # c > a, c > b, a > b
    assert [(p.chosen, p.rejected, p.chosen_truncated, p.rejected_truncated) for p in pairs] == [
        ("c", "a", False, False), ("c", "b", False, True), ("a", "b", False, True)]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1],
                                                "truncated": [True]}])
    with pytest.raises(Exception, match=r'bad.jsonl:1: field "truncated" must be a list of 2 booleans'):
        load_preferences(bad)


def test_the_reward_model_never_trains_on_an_eos_the_policy_did_not_generate(tmp_path, monkeypatch):
    """train-rm on pairs whose chosen response was cut off at the length limit: every row the
    reward model scores for a cut-off response ends on its last text token, and every finished
    response ends on EOS."""
    import tether.train.reward_model as rm

    tokenizer = load_tokenizer("tiny-llama")
    eos = tokenizer.eos_token_id
    rows = [{"prompt": f"question {i}", "chosen": f"an answer that was cut {i}", "rejected": f"done {i}.",
             "chosen_truncated": True, "rejected_truncated": False} for i in range(12)]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    seen: list[tuple[list[int], bool]] = []  # (response ids, was the chosen response)
    original = rm.pair_scores

    def spy(model, batch):
        for side, is_chosen in ((batch.chosen, True), (batch.rejected, False)):
            for ids, mask in zip(side.response_ids, side.response_mask):
                seen.append((ids[mask].tolist(), is_chosen))
        return original(model, batch)

    monkeypatch.setattr(rm, "pair_scores", spy)
    config = rm.RewardModelConfig(model="tiny-llama", data=str(data), eval_fraction=0.25, epochs=1, batch_size=4,
                                  normalize="responses", output_dir=str(tmp_path), run_name="rm", quiet=True)
    rm.train_reward_model(config)
    assert seen and any(c for _, c in seen) and any(not c for _, c in seen)
    for ids, is_chosen in seen:
        if is_chosen:  # cut off: its last token is text, not an EOS appended by the tokeniser
            assert ids[-1] != eos, ids
        else:
            assert ids[-1] == eos, ids
    # the pre-fix behaviour, for contrast: tokenised as finished, the cut-off one would end in EOS
    finished, _ = tokenize_pairs([p.__class__(p.prompt, p.chosen, p.rejected) for p in load_preferences(data).pairs],
                                 tokenizer, 512)
    assert finished[0].chosen[-1] == eos


def test_a_labeling_database_of_the_previous_schema_migrates(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("INSERT INTO tasks (id, position, prompt, responses, k) VALUES ('t1', 0, 'p', '[\"a\", \"b\"]', 2)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = Store(path)
    assert store.tasks() == [Task("t1", "p", ("a", "b"), None)]  # not known: treated as finished
    assert store.schema_version() == len(MIGRATIONS)


# ----- reward-model batches: whole prompts, each response scored once --------------------------


def test_pairs_of_one_prompt_share_a_batch_and_each_response_is_scored_once(tmp_path):
    from tether.train.reward_model import prompt_batches

    tokenizer = load_tokenizer("tiny-llama")
    rows = [{"prompt": f"q{g}", "responses": ["a", "bb", "ccc", "dddd"], "ranking": [0, 1, 2, 3]} for g in range(5)]
    data = load_preferences(write_jsonl(tmp_path / "r.jsonl", rows))
    items, _ = tokenize_pairs(data.pairs, tokenizer, 512)
    assert len(items) == 30  # C(4,2) = 6 pairs per prompt
    # batch_size 12 pairs = 2 prompts of 6: batches [2, 2, 1] prompts, never a prompt split
    batches = prompt_batches(items, 12, seed=3)
    assert [len(b) for b in batches] == [12, 12, 6]
    for batch in batches:
        groups = {items[i].group for i in batch}
        assert sum(1 for it in items if it.group in groups) == len(batch)
    batch = collate_pairs([items[i] for i in batches[0]], tokenizer.pad_token_id)
    rows, chosen, rejected = batch.unique_joint()
    assert len(rows) == 8  # 2 prompts x 4 distinct responses, not 2 x 12 rows
    # every pair's index points at its own chosen / rejected row
    joint = batch.joint()
    for n in range(len(batch)):
        for side, index in ((n, chosen[n]), (n + len(batch), rejected[n])):
            want = joint.response_ids[side][joint.response_mask[side]]
            got = rows.response_ids[index][rows.response_mask[index]]
            assert torch.equal(want, got)


def test_unique_rows_score_exactly_as_every_row():
    from tether.models.scalar_head import ScalarHeadModel
    from tether.train.reward_model import pair_scores

    tokenizer = load_tokenizer("tiny-llama")
    from tether.data.preferences import PreferencePair

    pairs = [PreferencePair("q", "a b", "c"), PreferencePair("q", "a b", "d e f"), PreferencePair("q", "c", "d e f")]
    items, _ = tokenize_pairs(pairs, tokenizer, 512)
    batch = collate_pairs(items, tokenizer.pad_token_id)
    model = ScalarHeadModel.from_pretrained("tiny-llama", torch.device("cpu")).eval()
    with torch.no_grad():
        chosen, rejected = pair_scores(model, batch)
        joint = batch.joint()
        inputs = joint.inputs()
        every = model.sequence_scores(inputs, joint.last_index(inputs))
    torch.testing.assert_close(torch.cat([chosen, rejected]), every, atol=1e-5, rtol=1e-5)


# ----- did the reward model learn? ----------------------------------------------------------------


def test_grouped_accuracy_interval_by_hand():
    # 3 prompts: group 0 right on both pairs, group 1 wrong on its one pair, group 2 right.
    # accuracy = (1 + 1 + 0 + 1) / 4 = 0.75
    correct, groups = [1.0, 1.0, 0.0, 1.0], [0, 0, 1, 2]
    accuracy, lo, hi = grouped_accuracy_ci(correct, groups, resamples=500, seed=0)
    assert accuracy == pytest.approx(0.75)
    # resampling prompts: the lowest possible draw is group 1 three times (0), the highest any
    # draw without group 1 (1.0); the interval lies within
    assert 0.0 <= lo < 0.75 < hi <= 1.0
    # weighted: the first two pairs weigh 1/2 each (one ranked prompt) -> (0.5 + 0.5 + 0 + 1) / 3
    accuracy, _, _ = grouped_accuracy_ci(correct, groups, [0.5, 0.5, 1.0, 1.0], resamples=10)
    assert accuracy == pytest.approx(2 / 3)


def coin_flip_labeler(prompt: str, responses: list[str]) -> list[int]:
    """Labels that carry no taste: a hash of the task decides."""
    import hashlib

    return [0, 1] if hashlib.sha256(repr((prompt, responses)).encode()).digest()[0] < 128 else [1, 0]


def test_demo_stops_before_ppo_when_the_reward_model_learned_nothing(tmp_path, capsys):
    """Coin-flip labels on the tiny model: the held-out accuracy's interval reaches 50%, and the
    demo says so and stops with exit 2 instead of optimising noise."""
    from tether.cli import main

    out = tmp_path / "demo"
    code = main(["demo", "--quick", "--model", "tiny-llama", "--out", str(out), "label_prompts=40",
                 "rm_eval_fraction=0.5", "ppo_iterations=1", "eval_samples=4", "require_learned_reward=true",
                 "--labeler", "tests.test_learning_quality:coin_flip_labeler"])
    err = capsys.readouterr().err
    assert code == 2
    assert "is not above chance (50%)" in err and "require_learned_reward=false" in err
    assert not (out / "ppo").exists()
    verdict = json.loads((out / "rm" / "rm_verdict.json").read_text())
    assert verdict["learned"] is False and verdict["ci95"][0] <= 0.5 and verdict["prompts"] == 20
    # `tether doctor` on the reward-model run says the same
    assert main(["doctor", str(out / "rm")]) in (0, 1)
    assert "reward_model_at_chance" in capsys.readouterr().out


def test_too_many_ties_are_reported_at_labeling_time():
    assert tie_share_warning(3, 10) is None
    line = tie_share_warning(5, 10)
    assert line.startswith("5 of 10 answers (50%) were ties or skips")


# ----- critic warm-up -------------------------------------------------------------------------------


def test_critic_warm_up_moves_the_critic_and_leaves_the_policy(tmp_path):
    from safetensors.torch import load_file

    from tether.models.registry import resolve_model
    from tether.train.ppo import train_ppo
    from tether.train.ppo_config import PPOConfig

    config = PPOConfig(reward_function="tether.rollout.rules:length_reward", critic="separate", total_iterations=1,
                       critic_warmup_iterations=1, batch_size=4, mini_batch_size=4, micro_batch_size=4,
                       max_new_tokens=6, learning_rate=1e-3, output_dir=str(tmp_path), run_name="w", quiet=True)
    run = train_ppo(config)
    start = load_file(str(resolve_model("tiny-llama") / "model.safetensors"))
    policy = load_file(str(run / "policy" / "model.safetensors"))
    assert all(torch.equal(policy[k], start[k]) for k in start)  # the policy waited
    critic = load_file(str(run / "critic" / "model.safetensors"))
    changed = [k for k in critic if k.startswith("model.") and k in start and not torch.equal(critic[k], start[k])]
    assert changed  # the critic (initialised from the policy here) learned
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "losses/value_loss" in metrics[0] and "losses/policy_loss" not in metrics[0]


# ----- the taste suite -------------------------------------------------------------------------------


def test_each_taste_scores_what_it_says():
    from tether.demo import tastes

    # length band 12-30 words: 5 words are 7 short -> -0.7; 20 words inside -> 0; 40 are 10 over -> -1.0
    assert tastes.length_band_score("q", "one two three four five") == pytest.approx(-0.7)
    assert tastes.length_band_score("q", " ".join(["w"] * 20)) == 0.0
    assert tastes.length_band_score("q", " ".join(["w"] * 40)) == pytest.approx(-1.0)
    # formal: "I love it!" has "I", "love" (chatty) and "!" in 3 words -> -10 * 3 / 3 = -10
    assert tastes.formal_score("q", "I love it!") == pytest.approx(-10.0)
    assert tastes.formal_score("q", "The river's water is cold.") == 0.0  # a possessive is not a contraction
    # example: none -> 0; "such as" and "3" -> 1 + 0.1
    assert tastes.example_score("q", "Use a pan.") == 0.0
    assert tastes.example_score("q", "Use tools such as a pan for 3 minutes.") == pytest.approx(1.1)
    # list format: two list lines (2) plus line breaks (0.5)
    assert tastes.list_format_score("q", "Steps:\n1. Mix.\n2. Bake.") == pytest.approx(2.5)
    assert tastes.list_format_score("q", "Mix and bake.") == 0.0
    # plain words: "Go now. Eat it." = 4 words in 2 sentences (2 per sentence -> -0.2), mean word
    # length (2 + 3 + 3 + 2) / 4 = 2.5 letters (-> -0.5): -0.7
    assert tastes.plain_words_score("q", "Go now. Eat it.") == pytest.approx(-0.7)
    assert tastes.length_band_labeler("q", ["a b c", " ".join(["w"] * 15)]) == [1, 0]
    assert tastes.example_labeler("q", ["no", "none"]) == "tie"


def test_the_noisy_human_flips_about_a_quarter_of_its_answers():
    from tether.demo.gold import gold_labeler
    from tether.demo.tastes import noisy_gold_labeler

    tasks = [(f"Question {i}?", [f"Answer {i}.", f"A longer answer number {i}"]) for i in range(400)]
    flipped = sum(noisy_gold_labeler(p, r) != gold_labeler(p, r) for p, r in tasks)
    assert 0.18 < flipped / len(tasks) < 0.32
    assert [noisy_gold_labeler(p, r) for p, r in tasks[:20]] == [noisy_gold_labeler(p, r) for p, r in tasks[:20]]


def test_every_taste_of_the_suite_loads_as_the_demo_takes_it():
    from tether.demo.tastes import TASTES
    from tether.labeling.simulated import load_labeler
    from tether.rollout.rewards import load_function

    assert len(TASTES) >= 7
    for labeler, gold in TASTES.values():
        verdict = load_labeler(labeler)("Name a fruit.", ["Apple.", "An apple is a fruit, for example."])
        assert verdict == "tie" or sorted(verdict) == [0, 1]
        assert isinstance(load_function(gold)("Name a fruit.", "Apple."), float)


def test_best_weights_keep_the_lowest_held_out_loss():
    from tether.train.reward_model import BestWeights

    model = torch.nn.Linear(2, 1)
    best = BestWeights()
    with torch.no_grad():
        model.weight.fill_(1.0)
        best.offer(10, 0.50, model)
        model.weight.fill_(2.0)
        best.offer(20, 0.40, model)  # lower: kept
        model.weight.fill_(3.0)
        best.offer(30, 0.45, model)  # higher: ignored
    best.restore(model)
    assert best.step == 20 and best.loss == 0.40
    assert torch.equal(model.weight, torch.full((1, 2), 2.0))


def test_auto_precision_is_bf16_only_where_bf16_matmuls_are_native(monkeypatch):
    """bf16 is emulated, and slower than fp32, on CPUs without native bf16 matmuls (AVX2 only):
    the demo's default `auto` must then compute in fp32."""
    from tether.utils.precision import resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"


def test_a_tastes_labels_move_the_reward_model_score_of_ppo_samples_upward(tmp_path):
    """The whole path on a tiny task: the tiny policy's own samples (4 per prompt, cut-off ones
    marked), labeled by a taste (shorter is better), a reward model trained on those labels, and
    PPO on that reward model: the reward model's score of the policy's samples rises, and the
    policy moves the way the labels asked (shorter answers)."""
    from tether.data.templates import prompt_text
    from tether.labeling.simulated import prefer_shorter
    from tether.rollout.prompts import resolve_prompts
    from tether.rollout.sampling import sample_responses
    from tether.train.ppo import train_ppo
    from tether.train.ppo_config import PPOConfig
    from tether.train.reward_model import RewardModelConfig, train_reward_model

    prompts = [prompt_text(p) for p in resolve_prompts("builtin:tiny")]
    texts, cut = sample_responses("tiny-llama", prompts, k=4, max_new_tokens=10, temperature=1.0, seed=0,
                                  return_truncated=True)
    store = Store(tmp_path / "labels.sqlite", create=True)
    store.add_tasks(pair_tasks(prompts, texts, cut))
    simulate(store, prefer_shorter, "shorter")
    export_jsonl(store, tmp_path / "prefs.jsonl")
    reward_model = train_reward_model(RewardModelConfig(
        model="tiny-llama", data=str(tmp_path / "prefs.jsonl"), eval_fraction=0.25, epochs=4, batch_size=12,
        learning_rate=1e-3, lr_schedule="constant", keep_best=True, evals_per_epoch=2, normalize="responses",
        skip_bad_rows=True, output_dir=str(tmp_path), run_name="rm", quiet=True))
    assert json.loads((tmp_path / "rm" / "rm_verdict.json").read_text())["learned"]
    run = train_ppo(PPOConfig(reward_model=str(reward_model), total_iterations=12, batch_size=16, mini_batch_size=16,
                              micro_batch_size=16, max_new_tokens=10, learning_rate=2e-3, kl_coef=0.01,
                              output_dir=str(tmp_path), run_name="ppo", quiet=True))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    score = [r["objective/score_mean"] for r in rows]
    length = [r["rollout/response_length"] for r in rows]
    first, last = sum(score[:3]) / 3, sum(score[-3:]) / 3
    assert last > first + 0.5, score
    assert sum(length[-3:]) / 3 < sum(length[:3]) / 3 - 1, length
