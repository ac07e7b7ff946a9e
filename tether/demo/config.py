"""The typed config of ``tether demo``: sizes of each phase of the pipeline, tuned so the real
run (SmolLM2-135M-Instruct) finishes in about 20 minutes on 2 CPU cores, and ``--quick`` in a
few minutes (seconds on ``tiny-llama``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from tether.errors import ConfigError


@dataclass(frozen=True)
class DemoConfig:
    # --- models and the simulated human -----------------------------------------------------
    model: str = "smollm2"  # the SFT policy (an instruct model is the SFT stage); also the RM backbone
    labeler: str = "tether.demo.gold:gold_labeler"  # module:function(prompt, responses) -> ranking
    gold: str = "tether.demo.gold:gold_score"  # module:function(prompt, response) -> float, for evaluation
    # --- data ---------------------------------------------------------------------------------
    prompts: str = "builtin:demo"  # training prompts: pairs to label, then PPO rollouts
    eval_prompts: str = "builtin:demo-eval"  # held-out prompts for the final evaluation
    # --- 1-2. responses to label, labeled -------------------------------------------------------
    tasks: str | None = None  # a tasks file sampled before from `model` (step 1's tasks.jsonl): label it instead
    label_prompts: int = 160  # training prompts whose responses are labeled (cycled past the prompt set)
    # responses sampled per prompt; every pair of them is one comparison task (C(4,2) = 6): more
    # comparisons per sampled token than one pair per prompt, and ties stay possible per pair
    responses_per_prompt: int = 4
    pair_temperature: float = 0.8  # sampling temperature of the labeled responses (> 0: they must differ)
    pair_max_new_tokens: int = 48  # responses cut off here are marked truncated (no EOS) for the reward model
    sample_batch_size: int = 32  # responses per generate() call
    # --- 3. reward model ----------------------------------------------------------------------
    rm_epochs: int = 2  # passes over the comparisons; the weights of the best held-out loss are kept
    rm_max_steps: int | None = None  # overrides rm_epochs
    rm_batch_size: int = 24  # pairs per step, packed as whole prompts (4 prompts of 6 pairs)
    rm_learning_rate: float = 2e-5
    rm_evals_per_epoch: int = 3  # held-out evaluations per epoch (early stopping picks among them)
    # stop before PPO when the reward model's held-out accuracy is not above chance (its 95%
    # interval over held-out prompts reaches 50%): optimising it would steer the policy by noise.
    # false: say so loudly and go on. Off by default because the shipped taste's reward model does
    # not pass it yet at the demo's size (docs/demo.md, "What the labels teach")
    require_learned_reward: bool = False
    rm_trainable_layers: int | None = None  # train only the top N blocks of the RM backbone (None: all)
    rm_eval_fraction: float = 0.15  # prompts held out to measure reward-model accuracy
    # --- 4. PPO -------------------------------------------------------------------------------
    ppo_iterations: int = 25
    batch_size: int = 16  # 8 gave noisy steps (approx_kl 0.19, clipfrac 0.28 on the first update)
    ppo_epochs: int = 2  # 2, not the usual 4: half the update time, a CPU budget trade
    mini_batch_size: int = 16
    micro_batch_size: int = 8
    max_new_tokens: int = 48
    temperature: float = 0.7
    learning_rate: float = 2e-5  # measured with β 0.1 and the EOS penalty: KL 9.3, gold +1.01 (docs/demo.md)
    critic_learning_rate: float = 3e-5
    kl_coef: float = 0.1  # β (0.05 ends near KL 10 once sampling uses the full distribution; docs/demo.md)
    kl_target: float | None = None  # set for the adaptive controller (nats per response)
    # a cut-off response (no EOS within max_new_tokens) scores this instead of the reward model's
    # verdict (Huang et al. 2024, detail 23). Off by default: the reward model is trained on
    # cut-off responses as the policy produces them (no EOS), so it judges them itself, and
    # the labels, not this rule, decide whether finishing an answer pays (docs/demo.md)
    missing_eos_penalty: float | None = None
    # --- 5. evaluation --------------------------------------------------------------------------
    eval_samples: int = 60  # held-out prompts
    eval_samples_per_prompt: int = 2  # responses per held-out prompt from each policy (averaged per prompt)
    bootstrap: int = 2000  # resamples for the 95% intervals
    show_samples: int = 4  # side-by-side samples in the report
    # best-of-N SFT samples per held-out prompt: the gold score reranking could reach, and the share
    # of that headroom PPO closed (0: skip)
    headroom_samples: int = 16
    headroom_file: str | None = None  # best-of-N samples drawn before from `model` (best_of_n.json): reuse them
    # --- system -------------------------------------------------------------------------------
    # auto: bf16 autocast (fp32 master weights) where the hardware has native bf16 matmuls (~3.5x
    # faster on AVX512-BF16 CPUs), else fp32 (bf16 is emulated, and slower, on AVX2-only CPUs)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs"
    run_name: str | None = None  # default: demo-<timestamp>
    overwrite: bool = False  # replace an existing demo run of the same name
    quiet: bool = False  # plain progress lines instead of bars (CI)

    def __post_init__(self) -> None:
        positive = ("label_prompts", "rm_evals_per_epoch", "pair_max_new_tokens", "sample_batch_size", "rm_epochs", "rm_batch_size",
                    "ppo_iterations", "batch_size", "ppo_epochs", "mini_batch_size", "micro_batch_size",
                    "max_new_tokens", "eval_samples", "eval_samples_per_prompt", "bootstrap")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f'field "{name}" must be >= 1, got {getattr(self, name)}')
        if self.label_prompts < 4:
            raise ConfigError(f'field "label_prompts" must be >= 4 (the reward model needs train and held-out '
                              f'prompts), got {self.label_prompts}')
        if self.responses_per_prompt < 2:
            raise ConfigError(f'field "responses_per_prompt" must be >= 2 (a comparison needs two), '
                              f'got {self.responses_per_prompt}')
        if self.pair_temperature <= 0 or self.temperature <= 0:
            raise ConfigError('fields "pair_temperature" and "temperature" must be > 0')
        if not 0 < self.rm_eval_fraction < 1:
            raise ConfigError('field "rm_eval_fraction" must be in (0, 1)')
        for spec in ("labeler", "gold"):
            if ":" not in getattr(self, spec):
                raise ConfigError(f'field "{spec}" must look like module:function, got {getattr(self, spec)!r}')


# `tether demo --quick`: every phase, small. Minutes on SmolLM2, seconds on tiny-llama.
QUICK: dict[str, object] = {
    "label_prompts": 12, "responses_per_prompt": 3, "pair_max_new_tokens": 24, "rm_epochs": 1, "rm_batch_size": 6,
    "ppo_iterations": 3, "batch_size": 4, "mini_batch_size": 4, "micro_batch_size": 4, "ppo_epochs": 2,
    "max_new_tokens": 24, "eval_samples": 12, "bootstrap": 500, "show_samples": 2, "headroom_samples": 4,
}

