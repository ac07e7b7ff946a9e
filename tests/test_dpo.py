"""DPO on the tiny model: it learns a hidden preference (vowel-rich responses win), moves the
implicit rewards apart, caches the reference log-probs, accumulates gradients exactly, and the
cDPO / IPO variants and the CLI run."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tether.cli import main as tether_main
from tether.config import load_config
from tether.errors import ConfigError
from tether.diagnostics.run import read_jsonl
from tether.train.dpo import DPOConfig, train_dpo

VOWELS, CONSONANTS = "aeiou", "bcdfghklmnprstvwz"


def vowel_pairs(n: int, seed: int) -> list[dict]:
    """Hidden rule: of two random strings, the one made mostly of vowels is preferred."""
    from tether.rollout.prompts import builtin_prompts

    rng = random.Random(seed)
    prompts = builtin_prompts("tiny")
    rows = []
    for _ in range(n):
        def word(main, other, k):
            return "".join(rng.choice(main) if rng.random() < 0.8 else rng.choice(other) for _ in range(k))

        length = rng.randint(6, 12)
        rows.append({"prompt": rng.choice(prompts), "chosen": word(VOWELS, CONSONANTS, length),
                     "rejected": word(CONSONANTS, VOWELS, length)})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo-data")
    return write_jsonl(root / "train.jsonl", vowel_pairs(192, seed=0)), write_jsonl(root / "eval.jsonl", vowel_pairs(64, seed=1))


def dpo_config(tmp_path, data, *overrides: str) -> DPOConfig:
    train, evals = data
    return load_config(DPOConfig, "configs/dpo-tiny.yaml",
                       [f"data={train}", f"eval_data={evals}", f"output_dir={tmp_path}", "quiet=true", *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("dpo")
    return train_dpo(dpo_config(root, data, "run_name=vowels"))


def test_dpo_learns_the_preference_and_moves_implicit_rewards_apart(data, trained):
    metrics = read_jsonl(trained / "metrics.jsonl")
    assert len(metrics) == 24  # 192 pairs / 16 per step, 2 epochs
    for m in metrics:
        # the margin is the mean of chosen - rejected implicit rewards, so the difference of the means
        assert m["rewards/margin"] == pytest.approx(m["rewards/chosen"] - m["rewards/rejected"], abs=1e-5)
        assert m["logps/chosen"] < 0.0 and m["logps/rejected"] < 0.0  # summed log-probs of whole responses
        assert 0.0 < m["train/grad_norm"] < float("inf")
        assert m["train/lr"] == 3.0e-3  # configs/dpo-tiny.yaml: constant schedule
    # the policy shifts probability from the rejected responses to the chosen ones
    first_gap, last_gap = (m["logps/chosen"] - m["logps/rejected"] for m in (metrics[0], metrics[-1]))
    assert last_gap > first_gap
    # step 1: π_θ = π_ref, so the implicit rewards are exactly 0 and the loss is log 2
    assert metrics[0]["rewards/margin"] == pytest.approx(0.0, abs=1e-5)
    assert metrics[0]["train/loss"] == pytest.approx(0.6931, abs=1e-3)
    first = sum(m["rewards/accuracy"] for m in metrics[:3]) / 3
    last = sum(m["rewards/accuracy"] for m in metrics[-3:]) / 3
    assert last > 0.9 and last > first + 0.3, (first, last)
    assert metrics[-1]["rewards/chosen"] > metrics[-1]["rewards/rejected"]
    assert metrics[-1]["rewards/margin"] > 0.5
    assert metrics[-1]["train/loss"] < 0.5
    # held-out pairs (new random strings): the rule generalises
    assert metrics[-1]["eval/rewards/accuracy"] > 0.9
    assert metrics[-1]["eval/rewards/margin"] > 0.5
    # the saved policy reloads with plain transformers and is the trained one: on the held-out
    # pairs it gives the implicit-reward accuracy and margin logged after the last step
    from transformers import AutoModelForCausalLM

    from tether.data.batching import tokenize_pairs
    from tether.data.preferences import load_preferences
    from tether.models.loading import load_tokenizer
    from tether.train.dpo import evaluate_dpo

    config = dpo_config(trained.parent, data, "run_name=vowels")
    policy = AutoModelForCausalLM.from_pretrained(trained / "policy").eval()
    tokenizer = load_tokenizer(str(trained / "policy"))
    items, _ = tokenize_pairs(load_preferences(data[1]).pairs, tokenizer, config.max_length, config.max_prompt_length,
                              config.chat_template)
    ref = next(t for t in map(torch.load, (trained / "ref_logps").glob("*.pt")) if t.shape == (len(items), 2))
    held_out = evaluate_dpo(policy, items, ref, tokenizer.pad_token_id, config, torch.device("cpu"))
    assert held_out["rewards/accuracy"] == pytest.approx(metrics[-1]["eval/rewards/accuracy"])
    assert held_out["rewards/margin"] == pytest.approx(metrics[-1]["eval/rewards/margin"], rel=1e-4)


def test_reference_logps_are_cached_and_reused(tmp_path, data, trained):
    cache = sorted((trained / "ref_logps").glob("*.pt"))
    assert len(cache) == 2  # train and eval pairs
    assert read_jsonl(trained / "metrics.jsonl")[0]["ref/cached"] == 0.0
    # same data and reference into the same run directory: loaded, not recomputed
    rerun = train_dpo(dpo_config(trained.parent, data, "run_name=vowels", "overwrite=true", "max_steps=1"))
    assert read_jsonl(rerun / "metrics.jsonl")[0]["ref/cached"] == 1.0
    assert sorted((rerun / "ref_logps").glob("*.pt")) == cache
    # other data: another key
    other = write_jsonl(tmp_path / "other.jsonl", vowel_pairs(16, seed=7))
    from tether.train import dpo

    cfg = dpo_config(tmp_path, data)
    from tether.data.batching import tokenize_pairs
    from tether.data.preferences import load_preferences
    from tether.models.loading import load_tokenizer

    tok = load_tokenizer(cfg.model)
    a, _ = tokenize_pairs(load_preferences(data[0]).pairs, tok, cfg.max_length)
    b, _ = tokenize_pairs(load_preferences(other).pairs, tok, cfg.max_length)
    assert dpo.reference_key("tiny-llama", a, "fp32") != dpo.reference_key("tiny-llama", b, "fp32")
    assert dpo.reference_key("tiny-llama", a, "fp32") != dpo.reference_key("tiny-llama", a, "bf16")


def test_micro_batches_give_the_same_update(tmp_path, data, monkeypatch):
    # plain SGD, so the update is linear in the accumulated gradient: Adam's first step is about
    # lr·sign(g), and float rounding in near-zero entries (micro-batches group their prompts'
    # rows differently) flips signs there without any error in the accumulation under test
    from tether.train.optim import make_scheduler

    def sgd(params, config, total_steps):
        optimizer = torch.optim.SGD(list(params), lr=config.learning_rate)
        return optimizer, make_scheduler(optimizer, config.lr_schedule, config.warmup_steps, total_steps)

    import tether.train.dpo as dpo

    monkeypatch.setattr(dpo, "make_optimizer", sgd)
    full = train_dpo(dpo_config(tmp_path, data, "run_name=full", "max_steps=1"))
    micro = train_dpo(dpo_config(tmp_path, data, "run_name=micro", "max_steps=1", "micro_batch_size=4"))
    from safetensors.torch import load_file

    a, b = load_file(str(full / "policy" / "model.safetensors")), load_file(str(micro / "policy" / "model.safetensors"))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=1e-5), name
    ma, mb = read_jsonl(full / "metrics.jsonl")[0], read_jsonl(micro / "metrics.jsonl")[0]
    assert ma["train/grad_norm"] == pytest.approx(mb["train/grad_norm"], rel=1e-4)


@pytest.mark.parametrize("variant", [["loss_type=ipo", "learning_rate=1e-3"], ["label_smoothing=0.2"]])
def test_variants_also_learn(tmp_path, data, variant):
    run = train_dpo(dpo_config(tmp_path, data, "run_name=v", "max_steps=12", "eval_fraction=0", *variant))
    metrics = read_jsonl(run / "metrics.jsonl")
    assert sum(m["rewards/accuracy"] for m in metrics[-3:]) / 3 > 0.8
    assert metrics[-1]["rewards/margin"] > 0


def test_config_errors():
    with pytest.raises(ConfigError, match="data"):
        DPOConfig()
    with pytest.raises(ConfigError, match="beta"):
        DPOConfig(data="x.jsonl", beta=0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        DPOConfig(data="x.jsonl", label_smoothing=0.5)
    with pytest.raises(ConfigError, match="ipo"):
        DPOConfig(data="x.jsonl", loss_type="ipo", label_smoothing=0.1)


def test_cli_runs_dpo(tmp_path, data, capsys):
    code = tether_main(["dpo", "--config", "configs/dpo-tiny.yaml", f"data={data[0]}", "eval_fraction=0",
                        f"output_dir={tmp_path}", "run_name=cli", "quiet=true", "max_steps=2"])
    assert code == 0
    assert (tmp_path / "cli" / "policy" / "config.json").exists()
    assert len(read_jsonl(tmp_path / "cli" / "metrics.jsonl")) == 2


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path, data):
    import shutil

    from safetensors.torch import load_file

    common = ("max_steps=6", "checkpoint_every=3", "eval_fraction=0", "eval_every=100")
    train, _ = data
    whole = train_dpo(load_config(DPOConfig, "configs/dpo-tiny.yaml",
                                  [f"data={train}", f"output_dir={tmp_path}", "quiet=true", "run_name=whole", *common]))
    # the same run "killed" after step 3: drop its later checkpoint and final model, then resume
    cut = train_dpo(load_config(DPOConfig, "configs/dpo-tiny.yaml",
                                [f"data={train}", f"output_dir={tmp_path}", "quiet=true", "run_name=cut", *common]))
    shutil.rmtree(cut / "checkpoints" / "iter-000006")
    shutil.rmtree(cut / "policy")
    resumed = train_dpo(load_config(DPOConfig, "configs/dpo-tiny.yaml",
                                    [f"data={train}", f"output_dir={tmp_path}", "quiet=true", "run_name=cut",
                                     "resume=auto", *common]))
    metrics = read_jsonl(resumed / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert metrics[3]["ref/cached"] == 1.0  # the resumed process loaded π_ref's log-probs
    a = load_file(str(whole / "policy" / "model.safetensors"))
    b = load_file(str(resumed / "policy" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
