"""The typed config of ``tether ppo`` and of the online alternatives (a2c, grpo, dr-grpo, rloo,
reinforce-pp), which run the same loop with another row of the algorithm table."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from tether.config import Count, Finite, Fraction, NonNegative, Positive, PositiveInt, Range
from tether.errors import ConfigError
from tether.ops.losses import Aggregation
from tether.rollout.generation import SamplingSettings
from tether.rollout.rewards import RewardSettings
from tether.train.algorithms import ALGORITHMS, LossSettings, algorithm_for
from tether.train.optim import OptimSettings, Schedule
from tether.train.roles import ModelSettings
from tether.train.run_dir import RunSettings
from tether.train.training_fields import TrainingFields

Algorithm = Literal[tuple(ALGORITHMS)]  # the rows of the table

TisCap = Annotated[float, Range(ge=1, why="below 1 it would shrink the weight of every token on which engine and trainer agree")]


@dataclass(frozen=True)
class PPOConfig(TrainingFields):
    # inherited from TrainingFields (tether/train/training_fields.py): metric_sinks and the sinks'
    # options, seed, device, precision, quiet, output_dir, run_name, checkpoint_every,
    # keep_checkpoints, resume, warmup_steps, weight_decay, max_grad_norm and chat_template
    # --- models -------------------------------------------------------------------------------
    policy: str = "tiny-llama"  # causal LM: folder, .gguf file, or alias (smollm2, tiny-llama); also π_ref
    reference: str | None = None  # frozen reference; default: the policy's starting weights
    reward_model: str | None = None  # scalar-head reward model folder (from `tether train-rm`)
    reward_function: str | None = None  # or a rule: module:function(prompts, responses) -> list[float]
    # more reward sources: module:function, a reward-model folder (or alias, Hub id), an http(s):// reward server
    # (docs/rewards.md). All sources (reward_model, reward_function, then these) are summed with reward_weights
    # (TRL's reward_funcs + reward_weights) and each is logged as reward/<name>
    rewards: list[str] | None = None
    reward_weights: list[Finite] | None = None  # one weight per reward source, in order; default 1 each
    reward_timeout: Positive = 60.0  # seconds a reward server may take to answer one request
    reward_retries: Count = 2  # further tries after a reward server fails (no connection, timeout, HTTP 5xx/429)
    critic: Literal["separate", "shared"] = "separate"  # own model, or a value head on the policy backbone
    critic_model: str | None = None  # init of a separate critic; default: the first reward model among the reward sources, else the policy
    # --- data ---------------------------------------------------------------------------------
    prompts: str = "builtin:tiny"  # prompts file (.jsonl with "prompt", .json, .txt) or builtin:tiny|builtin:demo
    # held-out prompts, evaluated every eval_every iterations and after the last: eval/* rows of
    # metrics.jsonl (score, gold, win rate over the reference, KL, length, EOS; tether/train/evaluation.py).
    # Training prompts that are also eval prompts are left out of training. null: no evaluation
    eval_prompts: str | None = None
    eval_every: PositiveInt = 5  # iterations between evaluations (the last iteration is always evaluated)
    gold: str | None = None  # optional true-quality score module:function(prompt, response) -> float, logged as eval/gold_score_mean
    max_prompt_tokens: PositiveInt = 256  # longer prompts are cut from the left (keeping the end)
    # --- algorithm ----------------------------------------------------------------------------
    algorithm: Algorithm = "ppo"  # row of tether.train.algorithms.ALGORITHMS
    total_iterations: PositiveInt = 30  # rollout -> update cycles
    batch_size: PositiveInt = 16  # prompts per iteration
    samples_per_prompt: PositiveInt = 1  # responses per prompt (G for GRPO, K for RLOO; >= 2 there)
    ppo_epochs: PositiveInt = 4  # passes over each batch (A2C always 1)
    mini_batch_size: PositiveInt = 16  # responses per optimizer step
    micro_batch_size: PositiveInt = 16  # responses per forward/backward (gradient accumulation)
    forward_batch_size: PositiveInt = 32  # responses per reward-model forward (policy/ref/critic scoring uses micro_batch_size, so the first update reproduces it exactly)
    gamma: Fraction = 1.0  # discount (GAE)
    lam: Fraction = 0.95  # GAE λ
    clip_eps: NonNegative = 0.2  # PPO ratio clip ε
    clip_eps_high: NonNegative | None = None  # upper clip (DAPO's clip-higher); default ε
    value_clip_eps: NonNegative = 0.2  # value clip ε_v; 0 disables
    vf_coef: NonNegative = 0.1  # weight of the value loss in the total loss
    # weight c of the entropy bonus: the loss gets -c x the policy's mean entropy over response tokens
    # (Schulman et al. 2017, eq. 9; cleanrl's ent_coef), against early collapse onto one answer; 0 = off
    entropy_coef: NonNegative = 0.0
    # iterations at the start that train only the critic while the policy waits (verl's
    # critic_warmup, OpenRLHF's freezing_actor_steps): a critic initialised from the reward model
    # scores whole responses, not the states before each token, and its first advantages are noise
    critic_warmup_iterations: Count = 0
    # mean 0 / std 1 over the global batch's real tokens. null: the algorithm's rule, on for ppo and a2c,
    # always for reinforce_pp (its baseline), never for grpo, dr_grpo, rloo (normalised within each group);
    # a value the algorithm cannot honour is an error (docs/algorithms.md)
    whiten_advantages: bool | None = None
    whiten_rewards: bool = False  # scale per-token rewards to unit variance before GAE
    loss_aggregation: Aggregation = "token-mean"  # how per-token losses become one number
    # --- KL to the reference --------------------------------------------------------------------
    kl_coef: NonNegative = 0.05  # β (initial value when adaptive)
    kl_target: Positive | None = None  # set for the adaptive controller (Ziegler et al. 2019), per-response nats
    # Adaptive controller horizon H, in samples (Ziegler et al. 2019, eq. 2). An iteration of n
    # samples moves β by at most a factor 1 ± 0.2·n/H, so a run of N samples by up to e^(±0.2·N/H).
    # null: H = N/4 (N = total_iterations x batch_size x samples_per_prompt), so a KL kept off target
    # can move β up to e^0.8 ≈ 2.2x either way over a run of any length, and one update never takes
    # β to 0 or below. The demo's 25 x 16 = 400 samples get H = 100; the usual fixed H = 10,000 would
    # move β at most 0.8% over them. Set a number for a fixed horizon (docs/algorithms.md).
    kl_horizon: PositiveInt | None = None
    kl_penalty: Literal["reward", "loss", "auto"] = "auto"  # where β·KL goes; auto: per algorithm
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"  # estimator in the reward (the loss always uses k3)
    # --- rewards ------------------------------------------------------------------------------
    missing_eos_penalty: Finite | None = None  # score given to responses that never emit EOS
    reward_clip: Positive | None = None  # clip sequence scores to ±this
    # --- sampling -----------------------------------------------------------------------------
    max_new_tokens: PositiveInt = 24
    temperature: Positive = 1.0
    top_k: Count = 0  # 0 = full distribution (recommended for RL)
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0
    # --- optimisation -------------------------------------------------------------------------
    learning_rate: NonNegative = 1e-5
    critic_learning_rate: NonNegative | None = None  # default: learning_rate
    lr_schedule: Schedule = "constant"
    adam_eps: Positive = 1e-8
    max_consecutive_skips: PositiveInt = 5  # abort after this many non-finite updates in a row
    # --- system -------------------------------------------------------------------------------
    overwrite: bool = False  # replace an existing run of the same name (else: an error)
    log_samples: Count = 4  # sample generations written per iteration
    sample_table_every: Count = 10  # print a table of samples (prompt, response, score, KL) every N iterations; 0 = off
    save_critic: bool = True
    stop_on_critical: bool = False  # checkpoint and stop when the live doctor finds a critical failure
    # --- scaling and memory (docs/scaling.md) -----------------------------------------------------
    strategy: Literal["auto", "none", "ddp", "fsdp2"] = "auto"  # under torchrun; auto: none for 1 process, else ddp
    lora_r: Count = 0  # LoRA rank of the policy's adapters (PEFT); 0 = full fine-tune. Reference = adapters off
    lora_alpha: Positive = 16.0  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0  # keep 0 for RL: dropout makes ρ differ from 1 on the first step
    lora_target_modules: list[str] | None = None  # module names to adapt; default: every linear layer but the LM head
    gradient_checkpointing: bool = False  # recompute activations in backward (policy and critic): less memory, ~30% slower (and no shared prompt prefix)
    offload_frozen: bool = False  # keep reference and reward model on the CPU between their forwards (GPU only; no-op on CPU)
    rollout_engine: Literal["hf", "vllm"] = "hf"  # who samples: hf = generate() on the trained policy; vllm = vLLM, weights pushed after each update (extra tether[vllm]; one process, no LoRA; docs/scaling.md)
    tis_cap: TisCap | None = None  # vllm only: truncated importance sampling, each token's policy loss times min(π_trainer/π_vllm, tis_cap) (Yao et al. 2025; e.g. 2); null = off

    def __post_init__(self) -> None:
        super().__post_init__()  # the metric-sink fields, each field's bounds, resume's run_name
        self._check_rewards()
        self._check_batch_sizes()
        algorithm_for(self)  # the algorithm's own checks: groups, whitening
        self._check_scaling()

    def _check_rewards(self) -> None:
        # the reward sources: reward_model, reward_function, then each of rewards (none: given from Python, tether.PPO)
        sources = (self.reward_model is not None) + (self.reward_function is not None) + len(self.rewards or [])
        if self.reward_weights is not None and sources and len(self.reward_weights) != sources:
            raise ConfigError(f'field "reward_weights" has {len(self.reward_weights)} weight(s) for {sources} reward '
                              "source(s) (reward_model, reward_function, then rewards); give one per source, in that order")
        if self.gold is not None and self.eval_prompts is None:
            raise ConfigError('field "gold" scores the evaluation: set eval_prompts (held-out prompts) too')

    def _check_batch_sizes(self) -> None:
        rollout = self.batch_size * self.samples_per_prompt
        if rollout % self.mini_batch_size:
            raise ConfigError(
                f"batch_size x samples_per_prompt = {rollout} responses must split into minibatches of "
                f"mini_batch_size = {self.mini_batch_size}"
            )
        if self.mini_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"mini_batch_size = {self.mini_batch_size} must be a multiple of micro_batch_size = {self.micro_batch_size}"
            )

    def _check_scaling(self) -> None:
        if self.lora_r and self.strategy == "fsdp2":
            raise ConfigError("LoRA with strategy=fsdp2 is not supported yet; LoRA's trained state is small: use strategy=ddp")
        if self.lora_r and self.reference is not None:
            raise ConfigError("with lora_r > 0 the reference is the policy with its adapters off; leave reference unset")
        if self.tis_cap is not None and self.rollout_engine == "hf":
            raise ConfigError('field "tis_cap" corrects a separate rollout engine\'s log-probs; with rollout_engine=hf '
                              "the policy samples itself and there is nothing to correct: leave it unset")
        if self.rollout_engine == "vllm" and self.lora_r:
            raise ConfigError("rollout_engine=vllm with lora_r > 0 is not supported yet (vLLM would need the merged "
                              "weights after every update); use rollout_engine=hf")

    # --- sections: each phase gets the part of the config it reads ------------------------------
    @property
    def model_settings(self) -> ModelSettings:
        """For building the roles (tether.train.roles)."""
        targets = tuple(self.lora_target_modules) if self.lora_target_modules is not None else None
        return ModelSettings(self.policy, self.reference, self.critic, self.critic_model, self.precision, self.lora_r,
                             self.lora_alpha, self.lora_dropout, targets, self.gradient_checkpointing, self.offload_frozen)

    @property
    def reward_settings(self) -> RewardSettings:
        """For naming, checking and building the reward sources (tether.rollout.rewards)."""
        weights = tuple(self.reward_weights) if self.reward_weights is not None else None
        return RewardSettings(self.reward_model, self.reward_function, tuple(self.rewards or ()), weights,
                              self.reward_timeout, self.reward_retries, self.forward_batch_size, self.chat_template,
                              self.precision)

    @property
    def loss_settings(self) -> LossSettings:
        """For the algorithm's loss terms (tether.train.algorithms)."""
        return LossSettings(self.clip_eps, self.clip_eps_high, self.value_clip_eps, self.vf_coef, self.entropy_coef,
                            self.loss_aggregation)

    @property
    def optim_settings(self) -> OptimSettings:
        """For the optimizer over policy and critic and its schedule (tether.train.optim)."""
        return OptimSettings(self.learning_rate, self.lr_schedule, self.warmup_steps, self.weight_decay,
                             self.max_grad_norm, self.adam_eps, self.critic_learning_rate)

    @property
    def sampling_settings(self) -> SamplingSettings:
        """For generation, in training and in the held-out evaluation (tether.rollout.generation)."""
        return SamplingSettings(self.max_new_tokens, self.temperature, self.top_k, self.top_p)

    @property
    def run_settings(self) -> RunSettings:
        """For the run directory (tether.train.run_dir)."""
        return RunSettings(self.output_dir, self.run_name, self.algorithm, self.resume, self.overwrite)

    @property
    def adaptive_kl_horizon(self) -> int:
        """``kl_horizon``, or by default a quarter of the run's samples, rounded up (so an update of
        n = N/T samples has 0.2·n/H <= 0.8/T < 1 and leaves β positive)."""
        if self.kl_horizon is not None:
            return self.kl_horizon
        return math.ceil(self.total_iterations * self.batch_size * self.samples_per_prompt / 4)


def check_world_size(config: PPOConfig, world_size: int) -> None:
    """batch_size and mini_batch_size are global (summed over ranks): each must split evenly."""
    if world_size == 1:
        return
    if config.rollout_engine == "vllm":
        raise ConfigError(f"rollout_engine=vllm runs in a single process for now, not under torchrun ({world_size} "
                          "ranks); use rollout_engine=hf with several ranks")
    if config.batch_size % world_size or config.mini_batch_size % (world_size * config.micro_batch_size):
        raise ConfigError(
            f"with {world_size} ranks, batch_size ({config.batch_size}) must be a multiple of {world_size} and "
            f"mini_batch_size ({config.mini_batch_size}) a multiple of {world_size} x micro_batch_size "
            f"({config.micro_batch_size}): batch and minibatch sizes are global, micro_batch_size is per rank"
        )


def preflight(config: PPOConfig) -> None:
    """Checks that need the file system or the hardware, run before any model is loaded
    (docs/reliability.md lists each with its test): one message, with the fix, per failure."""
    import torch

    from tether.models.loading import resolve_device
    from tether.models.registry import check_model_fields
    from tether.rollout.rewards import check_reward_specs, config_sources, load_function, reward_specs

    device = resolve_device(config.device)  # cuda requested but absent: one line
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{config.device}' requested but MPS is not available; use device=cpu or device=auto")
    if config.precision == "bf16" and not _bf16_works(device):
        raise ConfigError(f"precision=bf16 is not supported on {device}; use precision=fp32")
    models = check_model_fields(config, ("policy", "reference", "reward_model", "critic_model"))
    folders = {name: folder for name, (folder, _) in models.items()}
    if config_sources(config.reward_settings):  # rewards given from Python: checked by train_ppo
        check_reward_specs(reward_specs(config.reward_settings))
    if config.gold is not None:
        load_function(config.gold, "gold function")
    if config.rollout_engine == "vllm":
        import importlib.util

        from tether.rollout.vllm_engine import INSTALL_HINT

        if importlib.util.find_spec("vllm") is None:
            raise ConfigError(INSTALL_HINT)
    policy_config = models["policy"][1]
    context = _positive_int(policy_config.get("max_position_embeddings"))
    needed = config.max_prompt_tokens + config.max_new_tokens
    if context and needed > context:
        raise ConfigError(
            f"max_prompt_tokens + max_new_tokens = {needed} exceeds the policy's context of {context} tokens "
            f"(max_position_embeddings); lower max_prompt_tokens or max_new_tokens"
        )
    _check_tokenizer(config.policy, policy_config)
    _check_disk(config, folders)


def _bf16_works(device) -> bool:
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
        return True
    except (RuntimeError, AssertionError):
        return False


def _positive_int(value) -> int | None:
    """A size from a model's config.json, or None where it is absent or not a positive int."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _check_tokenizer(spec: str, model_config: dict) -> None:
    from tether.models.loading import load_tokenizer

    tokenizer = load_tokenizer(spec)  # no EOS: one line
    vocab = _positive_int(model_config.get("vocab_size"))
    if vocab and len(tokenizer) > vocab:
        raise ConfigError(
            f"the policy's tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab}; "
            "use the tokenizer saved with this model (or resize the embeddings)"
        )
    for what, token_id in (("EOS", tokenizer.eos_token_id), ("pad", tokenizer.pad_token_id)):
        if vocab and token_id >= vocab:
            raise ConfigError(f"the tokenizer's {what} id {token_id} is outside the model's vocabulary ({vocab})")


def _check_disk(config: PPOConfig, folders: dict) -> None:
    """Refuse a run whose checkpoints cannot fit, before any model loads. A full-state
    checkpoint holds the trained weights and two Adam moments, all fp32 (3x their fp32 size;
    a LoRA policy contributes only its adapters, a few MB); the final export adds the policy
    and the critic once more."""
    import shutil
    from pathlib import Path

    policy = _fp32_bytes(folders["policy"])
    critic = 0
    if config.critic == "separate":
        critic = _fp32_bytes(folders.get("critic_model") or _first_reward_model(config) or folders["policy"])
    in_checkpoint = critic + (0 if config.lora_r else policy)
    needed = 3 * in_checkpoint * _checkpoints_held(config) + policy + critic
    where = Path(config.resume if config.resume not in (None, "auto") else config.output_dir).absolute()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if needed > free:
        raise ConfigError(
            f"checkpoints need about {needed / 2**30:.1f} GiB but {where} has {free / 2**30:.1f} GiB free; "
            "free some space, lower keep_checkpoints or checkpoint_every=0 (only on interrupt), "
            "or set output_dir to a larger disk"
        )


def _first_reward_model(config: PPOConfig):
    """The folder of the config's first reward model, where a separate critic starts by default
    (tether.train.roles.critic_init; for the size estimate, its vocabulary is not compared)."""
    from tether.models.registry import resolve_model
    from tether.rollout.rewards import config_sources

    models = [source for source, kind in config_sources(config.reward_settings) if kind == "model"]
    return resolve_model(models[0]) if models else None


def _checkpoints_held(config: PPOConfig) -> int:
    """The most full-state checkpoints on disk at once. A new one is written before the oldest
    beyond ``keep_checkpoints`` is deleted, so keep + 1 at the peak; with checkpoint_every = 0
    only an interrupt writes one. A run saves every N iterations and at its last, at most
    ceil(total / N) times (an interrupt ends the run, so it never adds one)."""
    if config.checkpoint_every == 0:
        return 1
    saves = -(-config.total_iterations // config.checkpoint_every)
    return min(config.keep_checkpoints + 1, saves)


def _fp32_bytes(folder) -> int:
    """4 bytes per parameter of the model's safetensors files, whatever dtype they are stored
    in (tether trains fp32 master weights). Reads only the headers."""
    from safetensors import safe_open

    count = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                count += math.prod(f.get_slice(name).get_shape())
    return 4 * count
