"""The typed config of ``tether demo``: sizes of each phase of the pipeline, tuned so the real
run (SmolLM2-135M-Instruct) finishes in about 20 minutes on 2 CPU cores, and ``--quick`` in a
few minutes (seconds on ``tiny-llama``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from tether.config import Count, Finite, NonNegative, Positive, PositiveInt, Range, Seed, check_ranges
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
    # appended to every prompt (labeled, trained on and evaluated alike; the labeling page shows
    # it): SmolLM2's answers run to ~225 tokens, so at 48 tokens 94% were cut off and most
    # comparisons were between two unfinished texts; asked for brevity, 92% finish (docs/demo.md).
    # null: the prompts as they are
    instruction: str | None = "Keep the answer under 30 words."
    # --- 1-2. responses to label, labeled -------------------------------------------------------
    tasks: str | None = None  # a tasks file sampled before from `model` (step 1's tasks.jsonl): label it instead
    label_prompts: Annotated[int, Range(ge=4, why="the reward model needs train and held-out prompts")] = 160  # training prompts whose responses are labeled (cycled past the prompt set)
    # responses sampled per prompt; every pair of them is one comparison task (C(4,2) = 6): more
    # comparisons per sampled token than one pair per prompt, and ties stay possible per pair
    responses_per_prompt: Annotated[int, Range(ge=2, why="a comparison needs two")] = 4
    pair_temperature: Positive = 0.8  # sampling temperature of the labeled responses (> 0: they must differ)
    pair_max_new_tokens: PositiveInt = 48  # responses cut off here are marked truncated (no EOS) for the reward model
    # responses per generate() call: a decoding step's small GEMMs are bound by reading the weights,
    # so more rows per step cost little more (docs/performance.md, "Rollout speed"). The draws
    # follow the batch: another size samples other responses from the same distribution
    sample_batch_size: PositiveInt = 64
    # --- 3. reward model ----------------------------------------------------------------------
    rm_epochs: PositiveInt = 2  # passes over the comparisons; the weights of the best held-out loss are kept
    rm_max_steps: PositiveInt | None = None  # overrides rm_epochs
    rm_batch_size: PositiveInt = 24  # pairs per step, packed as whole prompts (4 prompts of 6 pairs)
    rm_learning_rate: NonNegative = 2e-5
    rm_evals_per_epoch: PositiveInt = 3  # held-out evaluations per epoch (early stopping picks among them)
    # stop before PPO when the reward model's held-out accuracy is not above chance (its 95%
    # interval over held-out prompts reaches 50%): optimising it would steer the policy by noise.
    # false: say so loudly and go on
    require_learned_reward: bool = True
    rm_trainable_layers: Count | None = None  # train only the top N blocks of the RM backbone (None: all)
    rm_eval_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.15  # prompts held out to measure reward-model accuracy
    # ties exported as tie records and learned as "score these alike" (docs/reward-model.md); off:
    # on the taste suite they left held-out accuracy unchanged at 3.4x the steps (docs/demo.md)
    rm_ties: bool = False
    # --- 4. PPO -------------------------------------------------------------------------------
    ppo_iterations: PositiveInt = 25
    batch_size: PositiveInt = 16  # 8 gave noisy steps (approx_kl 0.19, clipfrac 0.28 on the first update)
    ppo_epochs: PositiveInt = 2  # 2, not the usual 4: half the update time, a CPU budget trade
    mini_batch_size: PositiveInt = 16
    micro_batch_size: PositiveInt = 8
    max_new_tokens: PositiveInt = 48
    temperature: Positive = 0.7
    learning_rate: NonNegative = 2e-5  # measured with β 0.1 and the EOS penalty: KL 9.3, gold +1.01 (docs/demo.md)
    critic_learning_rate: NonNegative = 3e-5
    kl_coef: NonNegative = 0.1  # β (0.05 ends near KL 10 once sampling uses the full distribution; docs/demo.md)
    kl_target: Positive | None = None  # set for the adaptive controller (nats per response)
    # a cut-off response (no EOS within max_new_tokens) scores this instead of the reward model's
    # verdict (Huang et al. 2024, detail 23). Off by default: the reward model is trained on
    # cut-off responses as the policy produces them (no EOS), so it judges them itself, and
    # the labels, not this rule, decide whether finishing an answer pays (docs/demo.md)
    missing_eos_penalty: Finite | None = None
    # --- 5. evaluation --------------------------------------------------------------------------
    eval_samples: PositiveInt = 60  # held-out prompts
    eval_samples_per_prompt: PositiveInt = 2  # responses per held-out prompt from each policy (averaged per prompt)
    bootstrap: PositiveInt = 2000  # resamples for the 95% intervals
    show_samples: Count = 4  # side-by-side samples in the report
    # best-of-N SFT samples per held-out prompt: the gold score reranking could reach, and the share
    # of that headroom PPO closed (0: skip)
    headroom_samples: Count = 16
    headroom_file: str | None = None  # best-of-N samples drawn before from `model` (best_of_n.json): reuse them
    # --- rounds ---------------------------------------------------------------------------------
    # iterated online RLHF (tether rlhf): with R > 1, steps 1-4 run R times (sample from the current
    # policy, label, retrain the reward model on every label so far, continue PPO), label_prompts
    # and ppo_iterations split over the rounds; 1: a single pass (tether/rounds/pipeline.py)
    rounds: PositiveInt = 1
    # --- system -------------------------------------------------------------------------------
    # auto: bf16 autocast (fp32 master weights) where the hardware has native bf16 matmuls (~3.5x
    # faster on AVX512-BF16 CPUs), else fp32 (bf16 is emulated, and slower, on AVX2-only CPUs)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: Seed = 0
    device: str = "auto"
    output_dir: str = "runs"
    run_name: str | None = None  # default: demo-<timestamp>
    overwrite: bool = False  # replace an existing demo run of the same name
    quiet: bool = False  # plain progress lines instead of bars (CI)

    def __post_init__(self) -> None:
        check_ranges(self)  # each numeric field's declared bounds; the checks below relate fields
        for spec in ("labeler", "gold"):
            if ":" not in getattr(self, spec):
                raise ConfigError(f'field "{spec}" must look like module:function, got {getattr(self, spec)!r}')
        if self.rounds > 1 and self.tasks:
            raise ConfigError('field "tasks" (responses sampled before from the SFT model) works with rounds=1 only: '
                              "later rounds sample from the round's policy")


# `tether demo --quick`: every phase, small. Minutes on SmolLM2, seconds on tiny-llama.
QUICK: dict[str, object] = {
    "label_prompts": 12, "responses_per_prompt": 3, "pair_max_new_tokens": 24, "rm_epochs": 1, "rm_batch_size": 6,
    "ppo_iterations": 3, "batch_size": 4, "mini_batch_size": 4, "micro_batch_size": 4, "ppo_epochs": 2,
    "max_new_tokens": 24, "eval_samples": 12, "bootstrap": 500, "show_samples": 2, "headroom_samples": 4,
    # a smoke run of every phase: 2 held-out prompts cannot show a reward model above chance
    "require_learned_reward": False,
}

