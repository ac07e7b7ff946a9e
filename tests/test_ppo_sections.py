"""PPOConfig and the supervised configs stay one flat set of fields for users (YAML, key=value)
and hand each phase its section: every field of a section is the config's field of the same
name, with its value (a field passed to the wrong position of a section would show here)."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from tether.config import load_config
from tether.errors import ConfigError
from tether.train.dpo import DPOConfig
from tether.train.ppo_config import PPOConfig
from tether.train.reward_model import RewardModelConfig
from tether.train.run_dir import RunSettings
from tether.train.sft import SFTConfig
from tether.train.supervised_config import SupervisedFields
from tether.train.training_fields import TrainingFields

# distinct values for fields of one type, so that two swapped fields cannot pass
VALUES = dict(policy="pol", reference="ref", critic="shared", critic_model="cm", reward_model="rm",
              reward_function="pkg.mod:fn", rewards=["http://h:1/x"], reward_weights=[0.5, 2.0, 3.0],
              reward_timeout=7.0, reward_retries=5, forward_batch_size=4, chat_template=False, precision="bf16",
              lora_alpha=3.0, lora_dropout=0.25, lora_target_modules=["q_proj"], gradient_checkpointing=True,
              clip_eps=0.3, clip_eps_high=0.4, value_clip_eps=0.5, vf_coef=0.6, entropy_coef=0.7,
              loss_aggregation="seq-mean-token-sum", max_new_tokens=11, temperature=0.8, top_k=5, top_p=0.9,
              output_dir="out", run_name="name", resume="auto", overwrite=True, algorithm="a2c",
              learning_rate=2e-5, critic_learning_rate=3e-5, lr_schedule="cosine", warmup_steps=3, weight_decay=0.01,
              adam_eps=1e-6, max_grad_norm=0.5)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def test_each_section_carries_the_fields_of_the_same_name():
    config = PPOConfig(**VALUES)
    sections = [config.model_settings, config.reward_settings, config.loss_settings, config.sampling_settings,
                config.run_settings, config.optim_settings]
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
    assert SFTConfig(data="d.jsonl", run_name="a").run_settings == RunSettings("runs", "a", "sft", None)
    assert (RewardModelConfig(data="p.jsonl", resume="auto", run_name="b").run_settings
            == RunSettings("runs", "b", "rm", "auto"))
    assert DPOConfig(data="p.jsonl", overwrite=True).run_settings == RunSettings("runs", None, "dpo", None, overwrite=True)


# ----- the optimisation section reaches AdamW and the schedule ----------------------------------

class PolicyAndCriticRoles:
    """The one method of Roles that build_optimization reads: a policy and a critic parameter."""

    def trainable_groups(self):
        return [torch.nn.Parameter(torch.zeros(2))], [torch.nn.Parameter(torch.zeros(3))]


def test_build_optimization_gives_adamw_each_optimisation_field():
    from tether.train.algorithms import ALGORITHMS
    from tether.train.iteration import build_optimization

    config = PPOConfig(learning_rate=2e-5, critic_learning_rate=3e-5, weight_decay=0.01, adam_eps=1e-6,
                       lr_schedule="linear", warmup_steps=2, total_iterations=3, batch_size=4, mini_batch_size=4,
                       micro_batch_size=4, ppo_epochs=1)
    optimizer, scheduler, _ = build_optimization(config, PolicyAndCriticRoles(), ALGORITHMS["ppo"], torch.device("cpu"))
    assert [g["initial_lr"] for g in optimizer.param_groups] == [2e-5, 3e-5]  # policy, critic
    assert [(g["weight_decay"], g["eps"]) for g in optimizer.param_groups] == [(0.01, 1e-6)] * 2
    lrs = []
    for _ in range(3):  # 3 iterations x 1 step: warm-up 1/2, 2/2, then linear decay to 0
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1e-5, 2e-5, 2e-5])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
    without_critic_lr = PPOConfig(learning_rate=2e-5).optim_settings
    assert without_critic_lr.critic_lr == 2e-5  # the critic follows the policy's rate by default


# ----- the supervised commands: shared fields declared once, each command's defaults kept ---------

SUPERVISED = [SFTConfig, RewardModelConfig, DPOConfig]
SUPERVISED_VALUES = dict(data="d.jsonl", learning_rate=3e-4, lr_schedule="constant", warmup_steps=7, weight_decay=0.02,
                         max_grad_norm=0.25, output_dir="out", run_name="n", resume="auto")


@pytest.mark.parametrize("cls", SUPERVISED, ids=lambda c: c.__name__)
def test_the_supervised_sections_carry_the_fields_of_the_same_name(cls):
    config = cls(**SUPERVISED_VALUES)
    renamed = {"prefix": "algorithm"}
    for section in (config.run_settings, config.optim_settings):
        for field in dataclasses.fields(section):
            name = renamed.get(field.name, field.name)
            if hasattr(config, name):
                assert getattr(section, field.name) == getattr(config, name), (type(section).__name__, name)
            else:  # a knob only PPO exposes (adam_eps, critic_learning_rate): the section's default
                assert getattr(section, field.name) == field.default, (type(section).__name__, name)


def test_each_supervised_command_keeps_its_own_defaults():
    defaults = {cls.__name__: (c.learning_rate, c.lr_schedule, c.eval_fraction, c.epochs, c.batch_size, c.max_length)
                for cls in SUPERVISED for c in [cls(data="d.jsonl")]}
    assert defaults == {"SFTConfig": (2e-5, "cosine", 0.05, 1, 8, 512),
                        "RewardModelConfig": (1e-5, "linear", 0.1, 1, 8, 512),
                        "DPOConfig": (5e-7, "linear", 0.1, 1, 8, 512)}


@pytest.mark.parametrize("cls, data_kind", [
    (SFTConfig, "a demonstrations file (prompt/completion or messages)"),
    (RewardModelConfig, "a preference file (prompt/chosen/rejected or rankings)"),
    (DPOConfig, "a preference file (prompt/chosen/rejected or rankings)"),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_the_shared_checks_speak_for_each_command(cls, data_kind):
    with pytest.raises(ConfigError) as caught:
        cls()
    assert str(caught.value) == f'field "data" is required: {data_kind}'
    with pytest.raises(ConfigError) as caught:
        cls(data="d.jsonl", max_length=8, max_prompt_length=8)
    assert str(caught.value) == 'field "max_prompt_length" must be below max_length = 8, got 8: the response needs room'
    with pytest.raises(ConfigError) as caught:
        cls(data="d.jsonl", resume="auto")
    assert str(caught.value) == "resume: auto needs a run_name (the run directory to continue)"
    with pytest.raises(ConfigError) as caught:  # a shared field's bounds, declared once
        load_config(cls, None, ["data=d.jsonl", "max_grad_norm=0"])
    assert str(caught.value) == "override 'max_grad_norm=0': field \"max_grad_norm\": must be > 0, got 0.0"


def test_a_field_of_another_command_is_an_unknown_key():
    with pytest.raises(ConfigError, match=r'^override \'head_init=zero\': unknown config key "head_init"$'):
        load_config(SFTConfig, None, ["data=d.jsonl", "head_init=zero"])  # the reward model's
    with pytest.raises(ConfigError, match=r"unknown config key \"learning_rat\" \(did you mean 'learning_rate'\?\)"):
        load_config(DPOConfig, None, ["data=d.jsonl", "learning_rat=1e-6"])  # a shared field is suggested


# ----- the fields every training command shares: declared once ------------------------------------

TRAINING_CONFIGS = [PPOConfig, *SUPERVISED]


def _all_fields(cls) -> dict[str, tuple[str, object]]:
    """name -> (type with its bounds, default) of every field of ``cls``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: (repr(hints[f.name]), f.default) for f in dataclasses.fields(cls)}


def _declared(cls) -> dict[str, tuple[str, object]]:
    """The same for the fields ``cls`` declares (or redeclares) itself."""
    own = cls.__dict__.get("__annotations__", {})
    return {name: spec for name, spec in _all_fields(cls).items() if name in own}


@pytest.mark.parametrize("configs, base", [(TRAINING_CONFIGS, TrainingFields), (SUPERVISED, SupervisedFields)],
                         ids=["every command", "supervised"])
def test_a_field_the_commands_share_alike_is_declared_once(configs, base):
    """A field with one type and one default in every config of the group comes from the group's
    base, and no config declares it again with the base's default."""
    shared = set.intersection(*(set(_all_fields(cls).items()) for cls in configs))
    base_fields = _all_fields(base)
    assert {name for name, _ in shared} <= set(base_fields)
    for cls in configs:
        for klass in cls.__mro__[: cls.__mro__.index(base)]:
            again = {name for name, spec in _declared(klass).items() if base_fields.get(name) == spec}
            assert again == set(), (klass.__name__, again)


def test_every_command_gets_the_shared_fields_and_their_checks():
    assert {"seed", "device", "precision", "quiet", "output_dir", "run_name", "checkpoint_every", "keep_checkpoints",
            "resume", "warmup_steps", "weight_decay", "max_grad_norm", "chat_template", "metric_sinks"} \
        <= {f.name for f in dataclasses.fields(TrainingFields)}
    for cls, required in ((PPOConfig, {}), *((c, {"data": "d.jsonl"}) for c in SUPERVISED)):
        with pytest.raises(ConfigError) as caught:
            cls(**required, resume="auto")
        assert str(caught.value) == "resume: auto needs a run_name (the run directory to continue)"
        with pytest.raises(ConfigError) as caught:
            load_config(cls, None, [f"{k}={v}" for k, v in required.items()] + ["keep_checkpoints=0"])
        assert str(caught.value) == "override 'keep_checkpoints=0': field \"keep_checkpoints\": must be >= 1, got 0"
        with pytest.raises(ConfigError, match=r"unknown config key \"chekpoint_every\" \(did you mean 'checkpoint_every'"):
            load_config(cls, None, [f"{k}={v}" for k, v in required.items()] + ["chekpoint_every=2"])
