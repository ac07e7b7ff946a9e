"""The PPO loop's β and logged objective against numbers worked by hand: ``objective/rlhf_reward``
is the score minus β times the KL of the configured estimator (the one the reward was shaped
with), and the adaptive β controller's default horizon lets β move within a run of tether's length."""

import math

import pytest
import torch

from tether.config import load_config
from tether.train.algorithms import ALGORITHMS
from tether.train.iteration import IterationResult, IterationTimings, build_optimization
from tether.train.ppo import _iteration_metrics
from tether.train.ppo_config import PPOConfig
from tether.train.rl_phases import UpdateStats, shape_rewards
from tether.types import Rollout, ScoredRollout


def one_response_scored() -> ScoredRollout:
    # one response of 2 tokens, each sampled at π_old = 0.5 where π_ref = 0.25; score 1
    mask = torch.ones(1, 2, dtype=torch.bool)
    rollout = Rollout(torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool),
                      torch.zeros(1, 2, dtype=torch.long), mask, torch.ones(1, dtype=torch.bool), ["p"], ["r"])
    return ScoredRollout(rollout, old_logprobs=torch.full((1, 2), math.log(0.5)),
                         ref_logprobs=torch.full((1, 2), math.log(0.25)), old_values=None,
                         entropy=torch.zeros(1, 2), scores=torch.tensor([1.0]))


# per token lr = log π_ref - log π_old = ln 0.5 = -0.69315, β = 0.1, two tokens:
#   k1 = -lr            = 0.69315 -> KL 1.38629 -> 1 - 0.138629 = 0.861371
#   k2 = ½ lr²          = 0.24023 -> KL 0.48045 -> 1 - 0.048045 = 0.951955
#   k3 = (e^lr - 1) - lr = 0.19315 -> KL 0.38629 -> 1 - 0.038629 = 0.961371
@pytest.mark.parametrize("estimator, rlhf_reward", [("k1", 0.861371), ("k2", 0.951955), ("k3", 0.961371)])
def test_rlhf_reward_subtracts_beta_times_the_configured_estimator(estimator, rlhf_reward):
    config = load_config(PPOConfig, "configs/ppo-tiny.yaml", [f"kl_estimator={estimator}", "kl_coef=0.1"])
    scored = one_response_scored()
    _, kl = shape_rewards(scored, config.kl_coef, True, config.kl_estimator)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    result = IterationResult(1, scored, config.kl_coef, IterationTimings(1.0, 1.0, 1.0, None, 3.0), kl,
                             updates=UpdateStats())
    metrics = _iteration_metrics(result, optimizer, config, skipped=0)
    assert metrics["objective/rlhf_reward"] == pytest.approx(rlhf_reward, abs=1e-5)
    # the two KLs logged whatever the estimator: k1 = 1.38629, k3 = 0.38629
    assert metrics["objective/kl_k1"] == pytest.approx(1.38629, abs=1e-5)
    assert metrics["objective/kl_k3"] == pytest.approx(0.38629, abs=1e-5)


class OneParameterRoles:
    """The one method of Roles that build_optimization reads."""

    def trainable_groups(self):
        return [torch.nn.Parameter(torch.zeros(1))], []


def adaptive_controller(*overrides: str):
    config = load_config(PPOConfig, "configs/ppo-tiny.yaml", ["kl_target=6", *overrides])
    _, _, kl_ctl = build_optimization(config, OneParameterRoles(), ALGORITHMS[config.algorithm], torch.device("cpu"))
    return config, kl_ctl


def test_default_horizon_moves_beta_within_the_demos_run_length():
    # the demo's PPO phase: 25 iterations of 16 samples = 400; default horizon 400/4 = 100.
    # KL kept at twice the target: error clip(12/6 - 1) = +0.2, each update β·(1 + 0.2·16/100)
    # = β·1.032, after 25: 1.032^25 = 2.1978. Kept at half: 0.968^25 = 0.4435.
    # (a fixed horizon of 10,000 gives 1.00032^25 = 1.008: β would barely move)
    _, kl_ctl = adaptive_controller("total_iterations=25")
    for _ in range(25):
        kl_ctl.update(12.0, 16)
    assert kl_ctl.value == pytest.approx(0.03 * 2.19782, rel=1e-5)
    _, kl_ctl = adaptive_controller("total_iterations=25")
    for _ in range(25):
        kl_ctl.update(3.0, 16)
    assert kl_ctl.value == pytest.approx(0.03 * 0.44349, rel=1e-5)


@pytest.mark.parametrize("iterations, batch_size", [(1, 4), (2, 16), (30, 16), (200, 64)])
def test_default_horizon_gives_beta_the_same_reach_over_any_run_length(iterations, batch_size):
    # horizon = a quarter of the run's samples, so T updates at the clipped error ±0.2 give
    # (1 ± 0.8/T)^T: from 1.8 / 0.2 at T = 1 up to e^±0.8 = 2.2255 / 0.4493 as T grows; β stays > 0
    overrides = [f"total_iterations={iterations}", f"batch_size={batch_size}", f"mini_batch_size={batch_size}",
                 f"micro_batch_size={batch_size}"]
    for kl, low, high in ((12.0, 1.8, 2.2256), (3.0, 0.2, 0.4494)):
        config, kl_ctl = adaptive_controller(*overrides)
        for _ in range(iterations):
            kl_ctl.update(kl, batch_size)
        assert low - 1e-6 <= kl_ctl.value / 0.03 <= high, (kl, kl_ctl.value / 0.03)


def test_an_explicit_horizon_is_used_as_given():
    # 0.03 · (1 + 0.2·16/1000) = 0.030096
    _, kl_ctl = adaptive_controller("kl_horizon=1000")
    kl_ctl.update(12.0, 16)
    assert kl_ctl.value == pytest.approx(0.030096)
