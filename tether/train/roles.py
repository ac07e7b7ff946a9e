"""The four RLHF roles, built once from a config: policy π_θ (trained), reference π_ref
(frozen), critic V_ω (trained; a separate scalar-head model or a head on the policy's
backbone) and the reward r_φ (frozen reward models, Python functions, reward servers, weighted).

The loop never calls a model directly: ``policy_outputs``, ``reference_logprobs`` and
``critic_values`` hide what scaling adds (docs/scaling.md): the trained roles' forwards run
through DDP/FSDP2 wrappers under torchrun, a LoRA policy serves as its own reference with the
adapters switched off, and offloaded frozen roles visit the device only for their forward."""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from tether.models.forward import PolicyOutputs, SequenceInputs, policy_forward
from tether.models.loading import freeze, load_causal_lm, load_tokenizer, same_vocabulary
from tether.models.lora import adapters_disabled, apply_lora, on_device
from tether.models.scalar_head import ScalarHeadModel, ValueHead
from tether.rollout.rewards import RewardSettings, RewardSource, RewardSpec, build_reward, reward_specs


@dataclass
class Roles:
    policy: torch.nn.Module  # causal LM, trained
    reference: torch.nn.Module  # causal LM, frozen
    critic: ScalarHeadModel | None  # separate critic, trained
    value_head: ValueHead | None  # shared-backbone critic head, trained
    reward: RewardSource
    tokenizer: object  # the policy's tokenizer
    actor: torch.nn.Module | None = None  # PolicyValue(policy, value_head), DDP/FSDP2-wrapped under torchrun
    critic_forward: torch.nn.Module | None = None  # CriticValues(critic), likewise
    device: torch.device = torch.device("cpu")
    offload_frozen: bool = False  # reference and reward model on the CPU between forwards

    def __post_init__(self) -> None:
        if self.actor is None:
            self.actor = PolicyValue(self.policy, self.value_head)
        if self.critic_forward is None and self.critic is not None:
            self.critic_forward = CriticValues(self.critic)

    def policy_outputs(self, inputs: SequenceInputs, response_ids: torch.Tensor, temperature: float,
                       with_entropy: bool = False) -> PolicyOutputs:
        """log π_θ of the response tokens (B, R), entropy, and shared-head values."""
        return self.actor(inputs, response_ids, temperature, with_entropy)

    def reference_logprobs(self, inputs: SequenceInputs, response_ids: torch.Tensor, temperature: float) -> torch.Tensor:
        """log π_ref (B, R): the frozen reference, or the LoRA policy with its adapters off."""
        with adapters_disabled(self.reference):
            return policy_forward(self.reference, inputs, response_ids, temperature).logprobs

    @contextmanager
    def frozen_on_device(self):
        """The scoring phase's block: with ``offload_frozen`` the reference (when it is a model of
        its own) and the reward model are moved to the device for it, and back to the CPU after."""
        frozen = [self.reference if self.reference is not self.policy else None, *getattr(self.reward, "models", [])]
        with ExitStack() as stack:
            for model in frozen:
                if model is not None:
                    stack.enter_context(on_device(model, self.device, self.offload_frozen))
            yield

    def critic_values(self, inputs: SequenceInputs, response_width: int) -> torch.Tensor | None:
        """V_ω(s_t) (B, R) from the separate critic; None without one."""
        return self.critic_forward(inputs, response_width) if self.critic_forward is not None else None

    @property
    def has_critic(self) -> bool:
        return self.critic is not None or self.value_head is not None

    def trainable_groups(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """(policy parameters, critic parameters), for separate learning rates and clipping."""
        policy_params = [p for p in self.policy.parameters() if p.requires_grad]
        critic_module = self.critic if self.critic is not None else self.value_head
        critic_params = [p for p in critic_module.parameters() if p.requires_grad] if critic_module else []
        return policy_params, critic_params


class PolicyValue(torch.nn.Module):
    """The policy's training forward as one module (what DDP/FSDP2 wrap): log-probs, entropy
    and, with ``critic: shared``, the value head on the same hidden states."""

    def __init__(self, policy: torch.nn.Module, value_head: ValueHead | None):
        super().__init__()
        self.policy, self.value_head = policy, value_head

    def forward(self, inputs, response_ids, temperature, with_entropy=False) -> PolicyOutputs:
        return policy_forward(self.policy, inputs, response_ids, temperature, with_entropy, self.value_head)


class CriticValues(torch.nn.Module):
    """The separate critic's forward as one module: V(s_t) at the response positions."""

    def __init__(self, critic: ScalarHeadModel):
        super().__init__()
        self.critic = critic

    def forward(self, inputs, response_width: int) -> torch.Tensor:
        return self.critic.response_values(inputs, response_width)


@dataclass(frozen=True)
class ModelSettings:
    """The model section of an online run's config (``PPOConfig.model_settings``): which models
    play the roles, and how they are held in memory."""

    policy: str  # causal LM: folder, .gguf file, alias or Hub id
    reference: str | None  # None: the policy's starting weights
    critic: str  # "separate" (a model of its own) or "shared" (a head on the policy)
    critic_model: str | None  # a separate critic's init; None: the first reward model (critic_init), else the policy
    precision: str  # dtype the frozen models are held in
    lora_r: int  # LoRA rank of the policy's adapters; 0: full fine-tune
    lora_alpha: float
    lora_dropout: float
    lora_target_modules: tuple[str, ...] | None  # None: every linear layer but the LM head
    gradient_checkpointing: bool  # recompute activations in backward (policy and critic)
    offload_frozen: bool  # reference and reward model on the CPU between forwards (GPU only)


def build_roles(models: ModelSettings, reward: RewardSettings, device: torch.device, uses_critic: bool,
                rewards: list[RewardSpec] | None = None) -> Roles:
    """The four roles; ``rewards``: the run's reward sources (tether.rollout.rewards.reward_specs),
    by default the reward section's."""
    tokenizer = load_tokenizer(models.policy)
    policy = load_causal_lm(models.policy, device)
    offload = models.offload_frozen and device.type != "cpu"
    frozen_device = torch.device("cpu") if offload else device
    if models.lora_r:
        # π_ref is this same model with its adapters disabled: no second copy in memory.
        policy = apply_lora(policy, models.lora_r, models.lora_alpha, models.lora_dropout, models.lora_target_modules)
        reference = policy
    else:
        reference = freeze(load_causal_lm(models.reference or models.policy, frozen_device), models.precision)
    if models.gradient_checkpointing:
        _checkpoint_activations(policy)
    policy.train()

    specs = rewards if rewards is not None else reward_specs(reward)
    critic = value_head = None
    if uses_critic and models.critic == "shared":
        value_head = ValueHead(policy.config.hidden_size).to(device)
    elif uses_critic:
        init = critic_init(models, specs, tokenizer)
        # From a reward model the trained head is kept (its scores are a good first value
        # estimate; Ouyang et al. 2022); from a plain LM the head is new.
        critic = ScalarHeadModel.from_pretrained(init, device, fresh_head=init == models.policy)
        if models.gradient_checkpointing:
            _checkpoint_activations(critic.hf_model)
        critic.train()

    built_reward = build_reward(specs, reward, tokenizer, frozen_device)
    return Roles(policy, reference, critic, value_head, built_reward, tokenizer, device=device, offload_frozen=offload)


def critic_init(models: ModelSettings, rewards: list[RewardSpec], policy_tokenizer) -> str:
    """Where a separate critic starts: ``critic_model`` when set; else the first of the run's
    reward models, in the order its sources are listed (``reward_model``, then ``rewards``; or
    as given to ``tether.PPO(reward=...)``), among those that read the policy's vocabulary (the
    critic is fed the policy's token ids); else the policy. Prints which, when there was a choice."""
    if models.critic_model is not None:
        return models.critic_model
    candidates = [spec for spec in rewards if spec.kind == "model"]
    readable = (spec for spec in candidates if same_vocabulary(load_tokenizer(str(spec.source)), policy_tokenizer))
    chosen = next(readable, None)
    for spec in candidates[:candidates.index(chosen)] if chosen else candidates:
        _note(f"the critic cannot start from reward model {spec.name!r}: its vocabulary is not the policy's")
    if chosen is not None and len(candidates) > 1:
        _note(f"the critic starts from reward model {chosen.name!r}, of the run's {len(candidates)}; "
              "set critic_model to start it from another")
    return str(chosen.source) if chosen else models.policy


def _note(message: str) -> None:
    from tether.utils.distributed import is_rank_zero

    if is_rank_zero():  # every rank builds the roles; one line for the run
        print(f"note: {message}", file=sys.stderr)


def _checkpoint_activations(model: torch.nn.Module) -> None:
    """Recompute each decoder block's activations in backward instead of storing them.
    Non-reentrant checkpointing: works with frozen inputs (LoRA) and with DDP/FSDP2."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "config"):
        model.config.use_cache = False
