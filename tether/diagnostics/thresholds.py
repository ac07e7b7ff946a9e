"""Every number the doctor compares a run against, in one table.

Units: KL values (``objective/kl_k1``, ``objective/kl_k3``) are nats per *response* (summed
over tokens, as the PPO loop logs them); ``policy/approx_kl`` is nats per *token* between
π_old and π_θ; entropy is nats per token; scores are in reward-model units, which tether
normalises so that reference responses score mean 0 (Huang et al. 2024), so "one batch
standard deviation of the score" is a meaningful yardstick across reward models.

docs/doctor.md lists the same table with each rule's cause and fix; a test keeps the two
in step. To tune the doctor for one run, pass ``Thresholds(field=value)``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    # --- windows -----------------------------------------------------------------------------
    window: int = 10  # iterations averaged for an "initial" or "recent" level
    min_iterations: int = 8  # trend rules say nothing before this many iterations

    # --- β too high: outputs stay coherent and safe but barely improve --------------------------
    beta_min_iterations: int = 20  # a healthy run has left π_ref well before this
    kl_floor: float = 0.5  # recent KL below this (nats/response): the policy has not moved
    flat_score_gain: float = 0.25  # score gain below this many batch stds counts as flat
    penalty_dominance: float = 5.0  # β·KL above this many batch stds of the score: the penalty outweighs the reward

    # --- instability: one large update degrades a run that was improving -----------------------
    approx_kl_high: float = 0.1  # nats/token per update; Spinning Up targets 0.01, cleanrl ~0.01-0.02
    clipfrac_high: float = 0.3  # fraction of clipped tokens; healthy PPO runs sit near 0.05-0.2
    ratio_mean_tol: float = 0.2  # |mean ρ - 1| above this: updates too drastic (TRL PPO docs)
    ratio_max_high: float = 10.0  # a token's probability moved 10x within one iteration
    spike_z: float = 10.0  # robust z-score (median/MAD of the lookback) that makes a spike
    spike_lookback: int = 20  # iterations the spike baseline is taken over
    collapse_drop: float = 1.0  # score drop, in batch stds, between the 5 iterations before and 3 after
    collapse_before: int = 5
    collapse_after: int = 3

    # --- reward hacking: the proxy score climbs while true quality falls ------------------------
    gold_drop: float = 0.2  # held-out/gold score below its best by this many batch stds ...
    proxy_rise: float = 0.1  # ... while the proxy score rose by at least this many since then
    length_growth: float = 2.0  # recent mean response length / initial
    capped_length_growth: float = 1.1  # ... or this much, when responses now all hit max_new_tokens:
    capped_eos_fraction: float = 0.2  # recent fraction ending in EOS below this = pinned at the cap
    repetition_high: float = 0.5  # fraction of repeated word 3-grams in recent responses ...
    repetition_rise: float = 0.25  # ... and this much above the first iteration's
    kl_high: float = 10.0  # nats/response; TRL's training FAQ advises keeping KL in 0-10
    kl_recovery: float = 0.2  # KL this fraction below the previous window's is coming back down; a smaller dip is noise
    kl_fast_floor: float = 5.0  # KL above this ...
    kl_fast_growth: float = 2.0  # ... and this many times the previous window's: growing fast

    # --- critic: value predictions that explain none of the returns ----------------------------
    critic_warmup: int = 10  # a fresh value head needs a few iterations before EV means anything
    ev_min: float = 0.0  # recent explained variance at or below this: the critic explains nothing
    ev_critical: float = -1.0  # below this the critic is worse than useless: a wiring bug
    value_loss_growth: float = 3.0  # recent value loss / best window after warm-up

    # --- entropy, KL sign, EOS, saturation -----------------------------------------------------
    entropy_collapse: float = 0.25  # recent entropy below this fraction of the initial
    entropy_explosion: float = 1.5  # recent entropy above this multiple of the initial
    kl_negative_tol: float = 0.1  # a window of k1 averaging below -this (nats/response)
    kl_negative_window: int = 5
    eos_min: float = 0.8  # fraction of responses ending in EOS
    saturation_std: float = 0.1  # recent batch score std below this fraction of the initial

    # --- DPO ------------------------------------------------------------------------------------
    dpo_accuracy_min: float = 0.55  # preference accuracy at chance after min_iterations
    dpo_chosen_drop: float = 5.0  # logps/chosen fell this many nats below its start


DEFAULT_THRESHOLDS = Thresholds()
