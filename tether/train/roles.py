"""The four RLHF roles, built once from a config: policy π_θ (trained), reference π_ref
(frozen), critic V_ω (trained; a separate scalar-head model or a head on the policy's
backbone) and the reward source r_φ (frozen model or a Python function)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tether.models.loading import freeze, load_causal_lm, load_tokenizer
from tether.models.scalar_head import ScalarHeadModel, ValueHead
from tether.rollout.rewards import FunctionReward, ModelReward, RewardSource


@dataclass
class Roles:
    policy: torch.nn.Module  # causal LM, trained
    reference: torch.nn.Module  # causal LM, frozen
    critic: ScalarHeadModel | None  # separate critic, trained
    value_head: ValueHead | None  # shared-backbone critic head, trained
    reward: RewardSource
    tokenizer: object  # the policy's tokenizer

    @property
    def has_critic(self) -> bool:
        return self.critic is not None or self.value_head is not None

    def trainable_groups(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """(policy parameters, critic parameters), for separate learning rates and clipping."""
        policy_params = [p for p in self.policy.parameters() if p.requires_grad]
        critic_module = self.critic if self.critic is not None else self.value_head
        critic_params = [p for p in critic_module.parameters() if p.requires_grad] if critic_module else []
        return policy_params, critic_params


def build_roles(config, device: torch.device, uses_critic: bool) -> Roles:
    tokenizer = load_tokenizer(config.policy)
    policy = load_causal_lm(config.policy, device)
    policy.train()
    reference = freeze(load_causal_lm(config.reference or config.policy, device))

    critic = value_head = None
    if uses_critic and config.critic == "shared":
        value_head = ValueHead(policy.config.hidden_size).to(device)
    elif uses_critic:
        init = config.critic_model or config.reward_model or config.policy
        # From a reward model the trained head is kept (its scores are a good first value
        # estimate; Ouyang et al. 2022); from a plain LM the head is new.
        critic = ScalarHeadModel.from_pretrained(init, device, fresh_head=init == config.policy)
        critic.train()

    if config.reward_model is not None:
        rm = freeze(ScalarHeadModel.from_pretrained(config.reward_model, device))
        reward: RewardSource = ModelReward(
            rm, load_tokenizer(config.reward_model), tokenizer, config.forward_batch_size, config.chat_template
        )
    else:
        reward = FunctionReward(config.reward_function)
    return Roles(policy, reference, critic, value_head, reward, tokenizer)
