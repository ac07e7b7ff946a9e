"""Where a separate critic starts: ``critic_model``; else the first reward model among the run's
reward sources (``reward_model``, ``rewards``, or ``tether.PPO(reward=...)``) that reads the
policy's vocabulary, its trained head kept; else the policy with a new head."""

from __future__ import annotations

import pytest
import torch

from tether.models.loading import load_tokenizer
from tether.models.scalar_head import ScalarHeadModel
from tether.models.tiny import build_tiny_llama
from tether.rollout.rewards import reward_specs
from tether.train.ppo_config import PPOConfig
from tether.train.roles import build_roles

pytestmark = pytest.mark.usefixtures("one_thread")

FUNCTION = "tether.rollout.rules:vowel_fraction"


def reward_model(folder, seed: int) -> str:
    """The tiny model with a head drawn from ``seed``, saved as a reward model."""
    model = ScalarHeadModel.from_pretrained("tiny-llama", fresh_head=True)
    torch.manual_seed(seed)
    model.reset_head("normal")
    model.save_pretrained(folder)
    load_tokenizer("tiny-llama").save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward-models")
    other_vocab = load_tokenizer("tiny-llama")
    other_vocab.add_tokens(["<extra>"])  # one token more: the policy's ids would not mean the same
    build_tiny_llama(other_vocab, seed=3).save_pretrained(root / "other")
    other_vocab.save_pretrained(root / "other")
    return {"a": reward_model(root / "a", 1), "b": reward_model(root / "b", 2), "other": str(root / "other")}


def head(folder: str) -> torch.Tensor:
    return ScalarHeadModel.from_pretrained(folder).head.weight.detach()


def critic_of(config: PPOConfig, python_reward=None):
    specs = reward_specs(config.reward_settings, python_reward)
    return build_roles(config.model_settings, config.reward_settings, torch.device("cpu"), True, specs).critic


@pytest.mark.parametrize("given", ["rewards", "python"])
def test_the_critic_starts_from_a_reward_model_among_the_reward_sources(models, given, capsys):
    """As it does from ``reward_model``: with a function beside it, listed in ``rewards`` or given
    from Python, the reward model's trained head is the critic's first value estimate."""
    if given == "rewards":
        critic = critic_of(PPOConfig(rewards=[FUNCTION, models["a"]]))
    else:
        from tether.rollout.rules import vowel_fraction

        critic = critic_of(PPOConfig(), {"vowels": vowel_fraction, "judge": models["a"]})
    assert not critic.head_is_new
    assert torch.equal(critic.head.weight, head(models["a"]))
    assert capsys.readouterr().err == ""  # one reward model: no choice to report


def test_of_several_reward_models_the_first_unless_critic_model_names_one(models, capsys):
    critic = critic_of(PPOConfig(reward_model=models["b"], rewards=[models["a"]]))
    assert torch.equal(critic.head.weight, head(models["b"]))  # reward_model comes first
    assert "note: the critic starts from reward model 'b', of the run's 2; set critic_model" in capsys.readouterr().err
    critic = critic_of(PPOConfig(rewards=[models["a"], models["b"]], critic_model=models["b"]))
    assert torch.equal(critic.head.weight, head(models["b"]))
    assert capsys.readouterr().err == ""


def test_a_reward_model_of_another_vocabulary_is_passed_over(models, capsys):
    """The critic reads the policy's token ids: a reward model that tokenizes differently scores
    through its own tokenizer, but cannot be the critic."""
    critic = critic_of(PPOConfig(rewards=[models["other"], models["a"]]))
    assert torch.equal(critic.head.weight, head(models["a"]))
    assert "cannot start from reward model 'other': its vocabulary is not the policy's" in capsys.readouterr().err
    critic = critic_of(PPOConfig(rewards=[models["other"]]))
    assert critic.head_is_new and critic.hf_model.config.vocab_size == len(load_tokenizer("tiny-llama"))
