"""The typed config of ``tether rlhf``: R rounds of sample -> label -> reward model -> PPO.

The sizes of the labeling, reward-model and PPO phases carry the names of ``tether demo``'s
fields (``DemoConfig``), which hands its values over unchanged when it runs in rounds.
``label_prompts`` and ``ppo_iterations`` are totals over all rounds: a fixed labeling and
training budget, split evenly, so runs of 1 and R rounds compare at equal cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from tether.config import Count, Finite, NonNegative, Positive, PositiveInt, Range, Seed, check_ranges
from tether.errors import ConfigError


@dataclass(frozen=True)
class RoundsConfig:
    # --- models, labels, gold -------------------------------------------------------------------
    model: str = "smollm2"  # the SFT policy: round 1 samples from it; every round's reference; the RM backbone
    # the simulated human, module:function(prompt, responses) -> ranking (as `tether demo --labeler`);
    # null: people answer on the labeling page, which this command serves (or label_server)
    labeler: str | None = None
    gold: str | None = None  # module:function(prompt, response) -> float: each round's policy scored by it
    # --- data -----------------------------------------------------------------------------------
    prompts: str = "builtin:demo"  # prompts whose responses are labeled, and PPO's rollout prompts
    eval_prompts: str | None = "builtin:demo-eval"  # held-out prompts: each round's policy evaluated on them
    eval_samples: PositiveInt = 60  # the first N held-out prompts are used
    # --- rounds ---------------------------------------------------------------------------------
    # Bai et al. 2022 ("iterated online RLHF") and Touvron et al. 2023 (Llama 2: five rounds)
    rounds: PositiveInt = 3
    label_prompts: Annotated[int, Range(ge=2)] = 96  # prompts labeled over all rounds, split evenly (the first rounds take the remainder)
    responses_per_prompt: Annotated[int, Range(ge=2, why="a comparison needs two")] = 4  # K samples per prompt from the round's policy; each pair is one task
    pair_temperature: Positive = 0.8  # sampling temperature of the labeled responses (> 0: they must differ)
    pair_max_new_tokens: PositiveInt = 48  # responses cut off here are marked truncated (no EOS) for the reward model
    sample_batch_size: PositiveInt = 64  # responses per generate() call (64 ran 1.3x faster than 32 on CPU: docs/performance.md)
    # --- people on the labeling page (labeler: null) --------------------------------------------
    label_db: str | None = None  # the label store; default <run>/labels.sqlite
    labelers: list[str] = field(default_factory=list)  # created when new, each new token printed once
    # URL of a labeling server already running on label_db (`tether label serve --db ...`); null:
    # this command serves the page itself on host:port while it runs
    label_server: str | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, Range(ge=1, le=65535)] = 8765
    answers_per_task: PositiveInt = 1  # a task counts as answered with this many labelers' answers (2+: agreement)
    label_deadline_s: Positive | None = None  # stop waiting for a round's labels after this; null: wait until done
    min_round_preferences: PositiveInt = 4  # at the deadline, fewer preferences than this in the round stops the run
    poll_interval_s: Positive = 2.0  # how often the label store is read while waiting
    # --- reward model (retrained every round on every label so far) -----------------------------
    rm_epochs: PositiveInt = 2
    rm_max_steps: PositiveInt | None = None  # overrides rm_epochs
    rm_batch_size: PositiveInt = 24
    rm_learning_rate: NonNegative = 2e-5
    rm_evals_per_epoch: PositiveInt = 3  # held-out evaluations per epoch (early stopping picks among them)
    rm_trainable_layers: Count | None = None  # train only the top N blocks of the RM backbone (None: all)
    rm_eval_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.15  # labeled prompts held out to measure reward-model accuracy
    # ties exported as tie records and learned as "score these alike" (docs/reward-model.md); off:
    # on the taste suite they left held-out accuracy unchanged at 3.4x the steps (docs/demo.md)
    rm_ties: bool = False
    # stop before a round's PPO when its reward model is not above chance (its 95% interval over
    # held-out prompts reaches 50%), as `tether demo` does: PPO on such a model follows noise
    require_learned_reward: bool = True
    # --- PPO (continued from the last round's policy and critic) --------------------------------
    ppo_iterations: PositiveInt = 24  # over all rounds, split evenly (the first rounds take the remainder)
    batch_size: PositiveInt = 16
    ppo_epochs: PositiveInt = 2
    mini_batch_size: PositiveInt = 16
    micro_batch_size: PositiveInt = 8
    max_new_tokens: PositiveInt = 48
    temperature: Positive = 0.7
    learning_rate: NonNegative = 2e-5
    critic_learning_rate: NonNegative = 3e-5
    kl_coef: NonNegative = 0.1  # β; the KL is to the SFT model in every round
    kl_target: Positive | None = None  # set for the adaptive controller (nats per response)
    missing_eos_penalty: Finite | None = None  # score of a cut-off response (Huang et al. 2024, detail 23); null: off
    checkpoint_every: Count = 0  # full-state PPO checkpoint every N iterations; 0: only on SIGINT/SIGTERM
    # --- system ---------------------------------------------------------------------------------
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the hardware has native bf16 matmuls
    seed: Seed = 0  # round r samples and trains with seed + r - 1
    device: str = "auto"
    output_dir: str = "runs"
    run_name: str | None = None  # default: rlhf-<timestamp>
    resume: Literal["auto"] | None = None  # auto: continue the run at its first unfinished stage
    overwrite: bool = False  # replace an existing run of the same name
    quiet: bool = False  # plain progress lines instead of bars (CI)

    def __post_init__(self) -> None:
        check_ranges(self)  # each numeric field's declared bounds; the checks below relate fields
        if self.label_prompts < 2 * self.rounds:
            raise ConfigError(f'field "label_prompts" ({self.label_prompts}) must give every one of the {self.rounds} '
                              "rounds at least 2 prompts (the reward model holds prompts out)")
        if self.ppo_iterations < self.rounds:
            raise ConfigError(f'field "ppo_iterations" ({self.ppo_iterations}) must give every one of the '
                              f"{self.rounds} rounds at least one iteration")
        for spec in ("labeler", "gold"):
            value = getattr(self, spec)
            if value is not None and ":" not in value:
                raise ConfigError(f'field "{spec}" must look like module:function, got {value!r}')
        if self.gold is not None and self.eval_prompts is None:
            raise ConfigError('field "gold" scores the held-out evaluation: set eval_prompts too')
        if self.labeler is not None and self.answers_per_task != 1:
            raise ConfigError('field "answers_per_task" counts people\'s answers; a simulated labeler answers '
                              "each task once: leave it at 1")
        if self.label_server is not None and self.label_db is None:
            raise ConfigError('field "label_server" needs "label_db": the store that server serves, where the '
                              "rounds' tasks are added")
        if self.resume == "auto" and not self.run_name:
            raise ConfigError('resume: auto needs a run_name (the run directory to continue)')

    def share(self, total: int, round_: int) -> int:
        """Round ``round_``'s (1-based) part of ``total``: equal parts, one more for each of the
        first ``total % rounds`` rounds."""
        return total // self.rounds + (1 if round_ <= total % self.rounds else 0)

    def label_prompt_range(self, round_: int) -> range:
        """Indices (into the cycled training prompts) of the prompts labeled in round ``round_``:
        consecutive across rounds, so R rounds label the prompts one round would."""
        start = sum(self.share(self.label_prompts, r) for r in range(1, round_))
        return range(start, start + self.share(self.label_prompts, round_))
