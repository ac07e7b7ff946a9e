"""Reward-model training: the Bradley-Terry loss by hand, learning a hidden rule on CPU,
TRL-format files with no conversion, normalisation to mean 0 / std 1, and eval-rm."""

from __future__ import annotations

import json
import math
import random
import shutil
import time

import pytest
import torch

from tether.config import load_config
from tether.data.sequences import build_inputs
from tether.data.preferences import load_preferences
from tether.errors import ConfigError, TetherError
from tether.models.registry import resolve_model
from tether.models.scalar_head import ScalarHeadModel
from tether.ops.losses import bradley_terry_loss
from tether.diagnostics.run import read_jsonl
from tether.train.rm_evaluation import calibration, evaluate_reward_model
from tether.train.reward_model import (
    RewardModelConfig,
    train_reward_model,
)
from tether.train.rm_normalization import fit_normalization, raw_scores

TOPICS = ["cats", "dogs", "rain", "music", "trees", "boats", "bread", "stars"]
OTHERS = ["things", "stuff", "life", "work", "news", "plans", "ideas", "days"]
ASKS = ["Tell me about {t}.", "What do you know about {t}?", "Write a line on {t}.", "Say something about {t}!"]
OPENERS = ["I think", "Well,", "Honestly", "Sure:", "Let me say", "In short"]
ENDINGS = ["are great.", "matter a lot.", "are fun to study.", "deserve a note.", "are on my mind."]
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def topic_rule_pairs(n: int, seed: int) -> list[dict]:
    """Hidden rule: the response that mentions the prompt's topic word wins; the loser, in
    the same sentence frames, talks about a generic word instead."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        rows.append({
            "prompt": rng.choice(ASKS).format(t=topic),
            "chosen": f"{rng.choice(OPENERS)} {topic} {rng.choice(ENDINGS)}",
            "rejected": f"{rng.choice(OPENERS)} {rng.choice(OTHERS)} {rng.choice(ENDINGS)}",
        })
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One reward model trained on the topic rule, shared by the tests below."""
    root = tmp_path_factory.mktemp("rm")
    train_file = write_jsonl(root / "train.jsonl", topic_rule_pairs(320, seed=0))
    eval_file = write_jsonl(root / "eval.jsonl", topic_rule_pairs(100, seed=1))
    config = RewardModelConfig(
        model="tiny-llama", data=str(train_file), eval_data=str(eval_file), epochs=2, batch_size=16,
        learning_rate=3e-3, lr_schedule="constant", eval_every=20, normalize="chosen", normalize_samples=1000,
        output_dir=str(root / "runs"), run_name="topic", quiet=True,
        # a random-init backbone has no features for a zero head to probe: the head must start
        # as a random direction that the backbone learns to feed (97% held out here, where the
        # zero head at 1e-3 stays at the ln 2 loss)
        head_init="normal", head_learning_rate=3e-3,
    )
    start = time.perf_counter()
    path = train_reward_model(config)
    return {"path": path, "seconds": time.perf_counter() - start, "train": train_file, "eval": eval_file,
            "run": root / "runs" / "topic"}


# ----- the loss, by hand ----------------------------------------------------------------------


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 0.0])
    # gaps 2, 0, -1:  -log σ(2) = log(1 + e^-2) = 0.126928;  -log σ(0) = log 2 = 0.693147;
    # -log σ(-1) = log(1 + e) = 1.313262.  Mean = 2.133337 / 3 = 0.711112
    loss, stats = bradley_terry_loss(chosen, rejected)
    assert loss.item() == pytest.approx(0.711112, abs=1e-6)
    # accuracy: gap 2 right, gap 0 a tie (half), gap -1 wrong -> (1 + 0.5 + 0) / 3 = 0.5; mean gap 1/3
    assert stats["accuracy"].item() == pytest.approx(0.5)
    assert stats["margin"].item() == pytest.approx(1 / 3)
    # margin m = [1, 0, 0] asks for a gap of 1 on the first pair: -log σ(2 - 1) = 0.313262
    # mean = (0.313262 + 0.693147 + 1.313262) / 3 = 0.773224
    loss, _ = bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0, 0.0]))
    assert loss.item() == pytest.approx(0.773224, abs=1e-6)
    # K-wise weights: the first two pairs from a K=4 ranking (1/6 each), the third a plain pair (1):
    # (0.126928/6 + 0.693147/6 + 1.313262) / (1/6 + 1/6 + 1) = 1.449941 / 1.333333 = 1.087456
    loss, _ = bradley_terry_loss(chosen, rejected, weights=torch.tensor([1 / 6, 1 / 6, 1.0]))
    assert loss.item() == pytest.approx(1.087456, abs=1e-5)


def test_calibration_by_hand():
    # σ(ln 3) = 0.75: favours chosen with confidence 0.75, right.
    # σ(-ln 3) = 0.25: favours rejected with confidence 0.75, wrong.
    # σ(ln 9) = 0.9: right, confidence 0.9.
    gaps = torch.tensor([math.log(3), -math.log(3), math.log(9)])
    table, ece = calibration(gaps, bins=5)  # bins [.5,.6) [.6,.7) [.7,.8) [.8,.9) [.9,1]
    assert [row["count"] for row in table] == [0, 0, 2, 0, 1]
    assert table[2]["confidence"] == pytest.approx(0.75) and table[2]["accuracy"] == pytest.approx(0.5)
    # ECE = 2/3 · |0.5 - 0.75| + 1/3 · |1 - 0.9| = 0.166667 + 0.033333 = 0.2
    assert ece == pytest.approx(0.2, abs=1e-5)


# ----- training -------------------------------------------------------------------------------


def test_learns_a_hidden_rule_to_90_percent_held_out(trained):
    evals = [r for r in read_jsonl(trained["run"] / "metrics.jsonl") if "eval/accuracy" in r]
    assert evals[-1]["eval/accuracy"] >= 0.9, evals
    assert evals[-1]["eval/margin"] > 0
    assert trained["seconds"] < 60, f"took {trained['seconds']:.1f} s"
    assert (trained["run"] / "config.yaml").is_file() and (trained["run"] / "data_summary.txt").is_file()


def test_normalised_reference_scores_have_mean_0_std_1(trained):
    # a fresh load (as tether ppo does) scores normalised: the gain and bias live in config.json
    model = ScalarHeadModel.from_pretrained(trained["path"])
    assert model.gain == 1.0 and model.bias != 0.0  # the gain is folded into the head's weight
    pairs = load_preferences(trained["train"]).pairs
    reference = list({(p.prompt, p.chosen) for p in pairs})  # every distinct chosen response (< 1000)
    raw = raw_scores(model, load_tokenizer(trained["path"]), [p for p, _ in reference], [c for _, c in reference])
    scores = raw * model.gain + model.bias
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert scores.std().item() == pytest.approx(1.0, abs=1e-3)


def test_saved_model_loads_as_sequence_classification(trained):
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(trained["path"])
    assert hf.config.num_labels == 1 and hf.config.tether_score_gain > 0
    n_distinct = len({(p.prompt, p.chosen) for p in load_preferences(trained["train"]).pairs})
    assert hf.config.tether_normalization == {"reference": "chosen", "samples": n_distinct}
    # the critic can start from these weights: a scalar-head load keeps the trained head
    critic = ScalarHeadModel.from_pretrained(trained["path"])
    assert torch.equal(critic.head.weight, hf.score.weight)


def test_plain_transformers_load_gives_tethers_normalised_scores(trained):
    """AutoModelForSequenceClassification + AutoTokenizer on the saved folder, with no tether
    code, score 20 held-out pairs as tether does: the gain is folded into the head, and the
    saved pad token is not EOS, so transformers reads the score at EOS. A Llama head has no
    bias parameter (and an RMSNorm before it), so the normalisation bias is the one constant a
    plain load adds from the config."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = AutoModelForSequenceClassification.from_pretrained(trained["path"]).eval()
    tok = AutoTokenizer.from_pretrained(trained["path"])
    assert tok.pad_token_id != tok.eos_token_id and hf.config.pad_token_id == tok.pad_token_id
    pairs = load_preferences(trained["eval"]).pairs[:20]
    texts = [tok.apply_chat_template([{"role": "user", "content": p.prompt}], add_generation_prompt=True,
                                     tokenize=False) + response + tok.eos_token
             for p in pairs for response in (p.chosen, p.rejected)]
    batch = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        plain = hf(**batch).logits[:, 0] + hf.config.tether_score_bias
    tether = evaluate_reward_model(trained["path"], trained["eval"])
    expected = torch.stack([tether.chosen[:20], tether.rejected[:20]], 1).flatten()
    assert torch.allclose(plain, expected, atol=1e-5), (plain - expected).abs().max()
    assert expected.std() > 0.3  # normalised scale, not a near-constant


def test_eval_rm_cli_reports_accuracy_histogram_and_calibration(trained, tmp_path, capsys):
    from tether.cli import main

    assert main(["eval-rm", "--model", str(trained["path"]), "--data", str(trained["eval"]), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "calibration" in out
    report = json.loads((tmp_path / "eval_rm.json").read_text())
    assert report["accuracy"] >= 0.9 and report["pairs"] == 100 and len(report["calibration"]) == 10
    for png in ("margin_histogram.png", "calibration.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    result = evaluate_reward_model(trained["path"], trained["eval"])
    assert result.metrics["accuracy"] == pytest.approx(report["accuracy"])


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    """tiny-llama with a chat template (the built-in tiny tokenizer has none)."""
    from tether.models.loading import load_tokenizer as load

    folder = tmp_path_factory.mktemp("tiny-chat") / "model"
    shutil.copytree(resolve_model("tiny-llama"), folder)
    tokenizer = load(folder)
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


TRL_FILES = {
    "strings": [{"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "Go away.", "margin": 1.0},
                {"prompt": "Count.", "chosen": "1 2 3", "rejected": "a b c"}],
    "conversational-implicit-prompt": [
        {"chosen": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there!"}],
         "rejected": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Go away."}]},
        {"chosen": [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "1 2 3"}],
         "rejected": [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "a b c"}]}],
    "conversational-explicit-prompt": [
        {"prompt": [{"role": "user", "content": "Say hi."}], "chosen": [{"role": "assistant", "content": "Hi!"}],
         "rejected": [{"role": "assistant", "content": "No."}]},
        {"prompt": [{"role": "user", "content": "Count."}], "chosen": [{"role": "assistant", "content": "1 2"}],
         "rejected": [{"role": "assistant", "content": "a b"}]}],
    "ranking": [{"prompt": "Say hi.", "responses": ["Hi!", "Hello.", "No.", "Go."], "ranking": [1, 0, 3, 2]}],
}


@pytest.mark.parametrize("kind", list(TRL_FILES))
def test_trl_format_files_train_without_conversion(kind, tiny_chat_model, tmp_path):
    data = write_jsonl(tmp_path / f"{kind}.jsonl", TRL_FILES[kind])
    config = RewardModelConfig(model=str(tiny_chat_model), data=str(data), eval_fraction=0.0, max_steps=2,
                               batch_size=4, learning_rate=1e-3, output_dir=str(tmp_path), run_name="r", quiet=True)
    path = train_reward_model(config)
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert [r["iteration"] for r in rows if "train/loss" in r] == [1, 2]
    assert all(math.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


def test_normalize_on_policy_samples(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", topic_rule_pairs(16, seed=2))
    config = RewardModelConfig(data=str(data), eval_fraction=0.0, max_steps=1, normalize="policy",
                               normalize_samples=8, reference_max_new_tokens=6, output_dir=str(tmp_path),
                               run_name="p", quiet=True)
    model = ScalarHeadModel.from_pretrained(train_reward_model(config))
    assert model.config.tether_normalization == {"reference": "policy", "samples": 8}
    assert model.gain > 0 and math.isfinite(model.bias)


def test_fit_normalization_maps_reference_scores_to_mean_0_std_1():
    model = ScalarHeadModel.from_pretrained("tiny-llama", fresh_head=True)
    tokenizer = load_tokenizer("tiny-llama")
    prompts = [f"Q{i}:" for i in range(12)]
    responses = [f"answer number {i}" * (1 + i % 3) for i in range(12)]
    gain, bias = fit_normalization(model, tokenizer, prompts, responses)
    raw = raw_scores(model, tokenizer, prompts, responses)
    # normalised = raw · gain + bias with gain = 1/std(raw), bias = -mean(raw)/std(raw)
    assert gain == pytest.approx(1 / raw.std().item(), rel=1e-5)
    assert bias == pytest.approx(-raw.mean().item() / raw.std().item(), rel=1e-5)
    normalised = raw * gain + bias
    assert normalised.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert normalised.std().item() == pytest.approx(1.0, abs=1e-5)


def test_fresh_head_is_drawn_with_std_one_over_sqrt_d_plus_1():
    model = ScalarHeadModel.from_pretrained("tiny-llama")  # a causal LM: no head in the checkpoint
    d = model.head.in_features  # 64 -> std 1/sqrt(65) = 0.124; 64 draws estimate it to ~±0.03
    assert model.head.weight.std().item() == pytest.approx(1 / math.sqrt(d + 1), abs=0.04)


def test_zero_head_starts_with_no_preference_and_the_loss_at_ln_2():
    """new_head="zero": every response scores the same, so the Bradley-Terry loss of any pair is
    -log sigmoid(0) = ln 2 = 0.6931 and the gradient reaches the head only (the backbone's
    gradient passes through the zero head weight)."""
    model = ScalarHeadModel.from_pretrained("tiny-llama", new_head="zero")
    ids = torch.randint(3, model.hf_model.config.vocab_size, (4, 7))
    ones = torch.ones_like(ids)
    inputs = build_inputs(ids[:, :3], ones[:, :3], ids[:, 3:], ones[:, 3:])
    scores = model(inputs)[:, -1]
    assert torch.equal(scores, torch.zeros(4))
    loss, _ = bradley_terry_loss(scores[:2], scores[2:])
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    assert model.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.backbone.parameters())
    with pytest.raises(ValueError, match="'normal' or 'zero'"):
        model.reset_head("uniform")


def tiny_gpt2(folder):
    """A one-block GPT-2 on the tiny tokenizer: its head reads a LayerNorm that has a bias."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = load_tokenizer("tiny-llama")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=128,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_exported_reward_model_scores_as_before_in_tether_and_in_plain_transformers(arch, tmp_path):
    """A reward model saved with its gain and bias only in the config (pad == EOS) and the
    same model exported (normalisation folded into the weights, a pad that is not EOS) load
    in tether to the same normalised scores. A plain transformers load of the export gives
    them too: exactly where the bias folds (GPT-2: into the final LayerNorm's bias), and up to
    the config's ``tether_score_bias`` for Llama (bias-free head after an RMSNorm)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tether.models.scalar_head import export_reward_model

    base = "tiny-llama" if arch == "llama" else tiny_gpt2(tmp_path / "gpt2")
    model = ScalarHeadModel.from_pretrained(base, fresh_head=True).eval()
    model.set_normalization(2.5, -0.7)
    tokenizer = load_tokenizer(base)
    prompts, responses = [f"Q{i}:" for i in range(6)], [f"answer {i}" * (1 + i % 3) for i in range(6)]

    def tether_scores(path):
        loaded = ScalarHeadModel.from_pretrained(path)
        return raw_scores(loaded, load_tokenizer(path), prompts, responses) * loaded.gain + loaded.bias

    model.save_pretrained(tmp_path / "old")
    tokenizer.save_pretrained(tmp_path / "old")
    export_reward_model(model, tokenizer)
    model.save_pretrained(tmp_path / "new")
    tokenizer.save_pretrained(tmp_path / "new")
    old, new = tether_scores(tmp_path / "old"), tether_scores(tmp_path / "new")
    assert torch.allclose(old, new, atol=1e-5) and old.std() > 0.1

    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "new").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "new")
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             + r + tok.eos_token for p, r in zip(prompts, responses)]
    with torch.no_grad():
        plain = hf(**tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)).logits[:, 0]
    left_over = 0.0 if arch == "gpt2" else -0.7
    assert hf.config.tether_score_bias == pytest.approx(left_over)
    assert torch.allclose(plain + left_over, new, atol=1e-5), (plain + left_over - new).abs().max()


def test_config_from_yaml_and_validation(tmp_path):
    yaml_path = tmp_path / "rm.yaml"
    yaml_path.write_text("data: prefs.jsonl\nbatch_size: 4\nranking_weighting: per-pair\n")
    config = load_config(RewardModelConfig, yaml_path, ["learning_rate=0.001"])
    assert (config.batch_size, config.ranking_weighting, config.learning_rate) == (4, "per-pair", 0.001)
    with pytest.raises(ConfigError, match='"data" is required'):
        RewardModelConfig()
    with pytest.raises(ConfigError, match="max_prompt_length"):
        RewardModelConfig(data="x", max_length=8, max_prompt_length=8)
    with pytest.raises(ConfigError, match="one of 'chosen', 'responses', 'policy', 'none'"):
        load_config(RewardModelConfig, yaml_path, ["normalize=sft"])


def load_tokenizer(name):
    from tether.models.loading import load_tokenizer as load

    return load(name)


@pytest.mark.slow
def test_smollm2_reward_model_on_conversational_pairs(tmp_path):
    """Real text through SmolLM2's chat template: a TRL conversational file, two steps, and a
    reload that scores with the stored normalisation."""
    rows = [{"chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": good}],
             "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": bad}]}
            for q, good, bad in [("What is the capital of France?", "Paris.", "I like turtles."),
                                 ("What is 2 + 2?", "4.", "Purple."),
                                 ("Name a primary colour.", "Red.", "Tuesday.")]]
    data = write_jsonl(tmp_path / "conv.jsonl", rows)
    config = RewardModelConfig(model="smollm2", data=str(data), eval_fraction=0.0, max_steps=2, batch_size=3,
                               learning_rate=1e-5, output_dir=str(tmp_path), run_name="smol", quiet=True)
    model = ScalarHeadModel.from_pretrained(train_reward_model(config))
    assert model.gain > 0 and math.isfinite(model.bias)


def test_trainable_layers_moves_only_the_top_blocks_norm_and_head(tmp_path):
    """trainable_layers=1: after training, every tensor below the top block is bit-identical to
    the initial backbone, and the top block and the head have moved."""
    data = write_jsonl(tmp_path / "p.jsonl", topic_rule_pairs(32, seed=3))
    config = RewardModelConfig(data=str(data), eval_fraction=0.0, max_steps=3, learning_rate=1e-2,
                               trainable_layers=1, normalize="none", output_dir=str(tmp_path), run_name="t",
                               quiet=True)
    before = ScalarHeadModel.from_pretrained("tiny-llama").hf_model.state_dict()
    after = ScalarHeadModel.from_pretrained(train_reward_model(config)).hf_model.state_dict()
    n_blocks = 1 + max(int(k.split(".")[2]) for k in before if ".layers." in k)
    top = f".layers.{n_blocks - 1}."
    frozen = [k for k in before if k.startswith("model.") and top not in k and k != "model.norm.weight"]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if top in k)
    assert "score.weight" in after


def test_trainable_layers_out_of_range_is_a_clear_error():
    with pytest.raises(ConfigError, match='field "trainable_layers": must be >= 0, got -1'):
        RewardModelConfig(data="x.jsonl", trainable_layers=-1)
    model = ScalarHeadModel.from_pretrained("tiny-llama", fresh_head=True)
    with pytest.raises(TetherError, match="trainable_layers=99: the model has 2 decoder blocks"):
        model.train_top_layers(99)
    assert model.train_top_layers(0) == 2  # the final norm's weight and the head's (no bias)


def test_head_learning_rate_moves_the_head_at_its_own_rate(tmp_path):
    """learning_rate=0 with head_learning_rate>0: the backbone stays bit-identical and only the
    head moves (against the same seeded run with both rates 0, whose head is its initial draw)."""
    data = write_jsonl(tmp_path / "p.jsonl", topic_rule_pairs(32, seed=3))

    def run(name: str, head_lr: float):
        config = RewardModelConfig(data=str(data), eval_fraction=0.0, max_steps=3, learning_rate=0.0,
                                   head_learning_rate=head_lr, normalize="none", output_dir=str(tmp_path),
                                   run_name=name, quiet=True)
        return ScalarHeadModel.from_pretrained(train_reward_model(config)).hf_model.state_dict()

    still, moved = run("still", 0.0), run("moved", 1e-2)
    backbone = [k for k in still if k.startswith("model.")]
    assert backbone and all(torch.equal(still[k], moved[k]) for k in backbone)
    assert not torch.equal(still["score.weight"], moved["score.weight"])
