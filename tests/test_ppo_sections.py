"""PPOConfig stays one flat set of fields for users (YAML, key=value) and hands each phase its
section: every field of a section is the config's field of the same name, with its value (a
field passed to the wrong position of a section would show here)."""

from __future__ import annotations

import dataclasses

from tether.train.ppo_config import PPOConfig
from tether.train.run_dir import RunSettings

# distinct values for fields of one type, so that two swapped fields cannot pass
VALUES = dict(policy="pol", reference="ref", critic="shared", critic_model="cm", reward_model="rm",
              reward_function="pkg.mod:fn", rewards=["http://h:1/x"], reward_weights=[0.5, 2.0, 3.0],
              reward_timeout=7.0, reward_retries=5, forward_batch_size=4, chat_template=False, precision="bf16",
              lora_alpha=3.0, lora_dropout=0.25, lora_target_modules=["q_proj"], gradient_checkpointing=True,
              clip_eps=0.3, clip_eps_high=0.4, value_clip_eps=0.5, vf_coef=0.6, entropy_coef=0.7,
              loss_aggregation="seq-mean-token-sum", max_new_tokens=11, temperature=0.8, top_k=5, top_p=0.9,
              output_dir="out", run_name="name", resume="auto", overwrite=True, algorithm="a2c")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def test_each_section_carries_the_fields_of_the_same_name():
    config = PPOConfig(**VALUES)
    sections = [config.model_settings, config.reward_settings, config.loss_settings, config.sampling_settings,
                config.run_settings]
    flat = {f.name for f in dataclasses.fields(PPOConfig)}
    renamed = {"prefix": "algorithm"}  # the run name's prefix is the algorithm
    for section in sections:
        for field in dataclasses.fields(section):
            name = renamed.get(field.name, field.name)
            if name == "min_new_tokens":  # generation's own knob, not a config field
                continue
            assert name in flat, (type(section).__name__, name)
            assert _plain(getattr(section, field.name)) == getattr(config, name), (type(section).__name__, name)


def test_the_lora_fields_reach_the_model_section():
    models = PPOConfig(lora_r=8, lora_alpha=3.0, lora_dropout=0.25, offload_frozen=True).model_settings
    assert (models.lora_r, models.lora_alpha, models.lora_dropout, models.offload_frozen) == (8, 3.0, 0.25, True)


def test_the_supervised_commands_give_the_run_directory_their_section():
    from tether.train.dpo import DPOConfig
    from tether.train.reward_model import RewardModelConfig
    from tether.train.sft import SFTConfig

    assert SFTConfig(data="d.jsonl", run_name="a").run_settings == RunSettings("runs", "a", "sft", None)
    assert (RewardModelConfig(data="p.jsonl", resume="auto", run_name="b").run_settings
            == RunSettings("runs", "b", "rm", "auto"))
    assert DPOConfig(data="p.jsonl", overwrite=True).run_settings == RunSettings("runs", None, "dpo", None, overwrite=True)
