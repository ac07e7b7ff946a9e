"""ops/mismatch.py (rollout engine vs trainer log-probs, truncated importance sampling)
against numbers worked by hand."""

import math

import pytest
import torch

from tether.ops import logprob_mismatch, ppo_clip_loss, truncated_importance_weights


def test_logprob_mismatch_mean_and_max_over_real_tokens():
    engine = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, 9.0, 9.0]])
    trainer = torch.tensor([[-1.1, -1.5, -0.5], [-2.8, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    # |diff| on real tokens: 0.1, 0.5, 0, 0.2 -> mean 0.8 / 4 = 0.2, max 0.5 (the 9s are padding)
    stats = logprob_mismatch(engine, trainer, mask)
    assert stats["mean"].item() == pytest.approx(0.2, abs=1e-6)
    assert stats["max"].item() == pytest.approx(0.5, abs=1e-6)


def test_logprob_mismatch_is_zero_when_engine_and_trainer_agree():
    logp = torch.tensor([[-0.3, -1.2]])
    stats = logprob_mismatch(logp, logp.clone(), torch.ones(1, 2, dtype=torch.bool))
    assert stats["mean"].item() == 0.0 and stats["max"].item() == 0.0


def test_truncated_importance_weights_hand_worked():
    # trainer old log-probs vs engine log-probs, per token:
    #   ln 0.5 - ln 0.25 = ln 2  -> ratio 2,   capped at 1.5 -> 1.5
    #   ln 0.2 - ln 0.4  = -ln 2 -> ratio 0.5, below the cap -> 0.5 (only the upper side is truncated)
    #   equal                    -> ratio 1
    #   padding                  -> 0
    old = torch.tensor([[math.log(0.5), math.log(0.2), -0.7, 3.0]])
    engine = torch.tensor([[math.log(0.25), math.log(0.4), -0.7, -3.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    weights = truncated_importance_weights(old, engine, cap=1.5, response_mask=mask)
    assert weights.tolist()[0] == pytest.approx([1.5, 0.5, 1.0, 0.0], abs=1e-6)
    assert not weights.requires_grad


def test_truncated_importance_weights_carry_no_gradient():
    old = torch.tensor([[-0.5, -1.0]], requires_grad=True)
    engine = torch.tensor([[-0.6, -0.9]], requires_grad=True)
    weights = truncated_importance_weights(old, engine, cap=2.0, response_mask=torch.ones(1, 2, dtype=torch.bool))
    # exp(0.1) = 1.10517, exp(-0.1) = 0.90484, both under the cap
    assert weights.tolist()[0] == pytest.approx([math.exp(0.1), math.exp(-0.1)], abs=1e-6)
    assert weights.grad_fn is None


def test_tis_weight_on_the_advantage_equals_the_weight_on_the_ppo_loss():
    # The loop applies TIS as advantages * w; for w > 0 that is each token's clipped loss times w:
    # -min(ρ·wA, clip(ρ)·wA) = -w·min(ρA, clip(ρ)A). Tokens: ρ = 1.5 (clipped for A > 0), ρ = 0.9.
    old = torch.tensor([[0.0, 0.0]])
    logp = torch.tensor([[math.log(1.5), math.log(0.9)]], requires_grad=True)
    adv = torch.tensor([[1.0, -2.0]])
    w = torch.tensor([[2.0, 0.5]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    scaled, _ = ppo_clip_loss(logp, old, adv * w, mask, aggregation="seq-mean-token-sum")
    # per token: -min(1.5·2, 1.2·2) = -2.4 ; -min(0.9·(-1), 0.9·(-1)) = 0.9 ; sum -1.5
    assert scaled.item() == pytest.approx(-1.5, abs=1e-6)
    (grad_scaled,) = torch.autograd.grad(scaled, logp)
    per_token, _ = ppo_clip_loss(logp, old, adv, mask, aggregation="seq-mean-token-sum")
    # unweighted per token: -min(1.5, 1.2) = -1.2 ; -min(-1.8, -1.8) = 1.8 ; weighted 2·(-1.2) + 0.5·1.8 = -1.5
    assert per_token.item() == pytest.approx(-1.2 + 1.8, abs=1e-6)
    # gradient: token 1 clipped (0); token 2: d/dlogp of -ρ·(wA) = -0.9·(-1) = 0.9
    assert grad_scaled.tolist()[0] == pytest.approx([0.0, 0.9], abs=1e-6)
