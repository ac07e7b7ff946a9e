"""ops/advantages.py and ops/losses.py against numbers worked by hand, including the three
cases of the textbook's clipped-surrogate questions (Foundations of LLMs, ch. 4)."""

import math

import pytest
import torch

from tether.ops import (
    aggregate_loss,
    bradley_terry_loss,
    discounted_returns,
    dpo_loss,
    entropy_bonus_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    group_normalized_advantages,
    leave_one_out_advantages,
    policy_gradient_loss,
    ppo_clip_loss,
    value_loss,
)


def _one_token_clip(ratio: float, advantage: float, eps: float = 0.2):
    old = torch.tensor([[0.0]])
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, stats = ppo_clip_loss(logp, old, torch.tensor([[advantage]]), torch.ones(1, 1, dtype=torch.bool), eps)
    loss.backward()
    return loss.item(), logp.grad.item(), stats


def test_clipped_surrogate_positive_advantage_ratio_3_has_zero_gradient():
    # A = 1, ρ = 3, ε = 0.2: min(3·1, 1.2·1) = 1.2 is the clipped term -> loss -1.2, gradient 0
    loss, grad, stats = _one_token_clip(3.0, 1.0)
    assert loss == pytest.approx(-1.2)
    assert grad == 0.0
    assert stats["clipfrac"].item() == 1.0


def test_clipped_surrogate_negative_advantage_ratio_half_objective_minus_two_zero_gradient():
    # A = -2.5, ρ = 0.5, range [0.8, 1.2]: min(0.5·-2.5, 0.8·-2.5) = min(-1.25, -2.0) = -2.0
    # objective -2.0 (loss +2.0), the clipped term: gradient 0
    loss, grad, stats = _one_token_clip(0.5, -2.5)
    assert -loss == pytest.approx(-2.0)
    assert grad == 0.0
    assert stats["clipfrac"].item() == 1.0


def test_clipped_surrogate_inside_the_range_gives_the_plain_policy_gradient():
    # ρ = 1.1 inside [0.8, 1.2], A = 2: loss = -ρA = -2.2; d(loss)/d(logp) = -ρA = -2.2
    loss, grad, stats = _one_token_clip(1.1, 2.0)
    assert loss == pytest.approx(-2.2)
    assert grad == pytest.approx(-2.2)
    assert stats["clipfrac"].item() == 0.0


def test_ratio_one_gives_zero_clipfrac_and_zero_approx_kl():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    _, stats = ppo_clip_loss(logp.clone(), logp, torch.tensor([[1.0, -1.0, 5.0]]), mask)
    assert stats["clipfrac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0


POLICY_LOSSES = [ppo_clip_loss, policy_gradient_loss]


@pytest.mark.parametrize("loss_fn", POLICY_LOSSES)
def test_approx_kl_is_k3_of_kl_old_to_new_with_r_above_one(loss_fn):
    # one token, r = π_θ/π_old = 2: k3 = (r - 1) - log r = 1 - ln 2 = 0.30685
    # (the reversed (1/r - 1) + log r = -0.5 + ln 2 = 0.19315 is not an estimate of KL(π_old || π_θ))
    mask = torch.ones(1, 1, dtype=torch.bool)
    _, stats = loss_fn(torch.tensor([[math.log(2.0)]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), mask)
    assert stats["approx_kl"].item() == pytest.approx(1.0 - math.log(2.0))  # 0.30685


@pytest.mark.parametrize("loss_fn", POLICY_LOSSES)
def test_approx_kl_averages_to_the_exact_kl_old_to_new(loss_fn):
    # π_old uniform over 4 tokens, π_θ = [0.4, 0.3, 0.2, 0.1]; one sample of each token is an exact
    # expectation under π_old, so the mean of k3 must equal KL(π_old || π_θ) (Schulman 2020):
    #   r = q / 0.25 = [1.6, 1.2, 0.8, 0.4]
    #   k3 = (r - 1) - ln r = [0.13000, 0.01768, 0.02314, 0.31629], mean 0.12178
    #   KL = Σ 0.25·ln(0.25/q) = 0.25·(-0.47000 - 0.18232 + 0.22314 + 0.91629) = 0.12178
    # (the reversed form's mean is 0.18031)
    new = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    old = torch.full((1, 4), 0.25).log()
    _, stats = loss_fn(new, old, torch.ones(1, 4), torch.ones(1, 4, dtype=torch.bool))
    assert stats["approx_kl"].item() == pytest.approx(0.12178, abs=1e-5)


@pytest.mark.parametrize("loss_fn", POLICY_LOSSES)
def test_extreme_log_ratio_on_padding_gives_a_finite_loss(loss_fn):
    # padding token with log ρ = 100 (old log-prob -100) and advantage 0: exp(100) overflows
    # float32 to inf, and inf·0 = NaN would poison the whole sum. Clamped to ±20 before exp
    # (verl's compute_policy_loss) it is e^20·0 = 0; the real token gives -ρA = -1·1.
    logp = torch.tensor([[-1.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -100.0]])
    mask = torch.tensor([[1, 0]], dtype=torch.bool)
    loss, stats = loss_fn(logp, old, torch.tensor([[1.0, 0.0]]), mask)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0)
    assert torch.isfinite(logp.grad).all()
    assert all(torch.isfinite(v).all() for v in stats.values())


@pytest.mark.parametrize("loss_fn", POLICY_LOSSES)
def test_extreme_log_ratio_on_a_real_token_is_clamped_to_e20(loss_fn):
    # real token, log ρ = 100, A = -1: unclipped -ρA is the larger loss in both losses, so the
    # loss is ρ itself: e^20 = 4.8517e8 with the clamp, inf without it
    logp = torch.tensor([[0.0]], requires_grad=True)
    loss, stats = loss_fn(logp, torch.tensor([[-100.0]]), torch.tensor([[-1.0]]), torch.ones(1, 1, dtype=torch.bool))
    loss.backward()
    assert loss.item() == pytest.approx(math.exp(20.0), rel=1e-6)
    assert stats["ratio_max"].item() == pytest.approx(math.exp(20.0), rel=1e-6)
    assert logp.grad.item() == 0.0  # past the clamp the token gives no gradient, as a clipped one


def test_ppo_clip_loss_masks_padding():
    # padding position has a huge advantage; it must not move the loss
    logp = torch.zeros(1, 2)
    mask = torch.tensor([[1, 0]], dtype=torch.bool)
    loss, _ = ppo_clip_loss(logp, logp, torch.tensor([[1.0, 1000.0]]), mask)
    assert loss.item() == pytest.approx(-1.0)


def test_gae_by_hand():
    # γ = 1, λ = 0.5; rewards [0, 0, 1]; values [0.5, 0.6, 0.7]
    # δ2 = 1 + 0 - 0.7 = 0.3 ; δ1 = 0 + 0.7 - 0.6 = 0.1 ; δ0 = 0 + 0.6 - 0.5 = 0.1
    # A2 = 0.3 ; A1 = 0.1 + 0.5·0.3 = 0.25 ; A0 = 0.1 + 0.5·0.25 = 0.225
    # returns = A + V = [0.725, 0.85, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3, dtype=torch.bool), gamma=1.0, lam=0.5)
    assert adv.tolist()[0] == pytest.approx([0.225, 0.25, 0.3])
    assert ret.tolist()[0] == pytest.approx([0.725, 0.85, 1.0])


def test_gae_does_not_depend_on_values_or_rewards_at_masked_positions():
    rewards = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    values_a = torch.tensor([[0.2, 0.4, 0.0, 0.0]])
    values_b = torch.tensor([[0.2, 0.4, 99.0, -50.0]])
    rewards_b = torch.tensor([[0.0, 1.0, 7.0, 7.0]])
    adv_a, ret_a = gae(rewards, values_a, mask, 0.9, 0.95)
    adv_b, ret_b = gae(rewards_b, values_b, mask, 0.9, 0.95)
    assert torch.equal(adv_a, adv_b) and torch.equal(ret_a, ret_b)
    # the last real token bootstraps from V = 0: A1 = 1 - 0.4 = 0.6
    assert adv_a[0, 1].item() == pytest.approx(0.6)
    assert adv_a[0, 2:].tolist() == [0.0, 0.0]


def test_value_loss_clipped_mse_with_half_factor():
    # V_old = 0, V = 1, R = 1, ε = 0.2: unclipped (1-1)² = 0 ; clipped V = 0.2: (0.2-1)² = 0.64
    # max = 0.64, ½ -> 0.32 ; the clipped error dominates -> clipfrac 1
    loss, stats = value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]),
                             torch.ones(1, 1, dtype=torch.bool), clip_eps=0.2)
    assert loss.item() == pytest.approx(0.32)
    assert stats["clipfrac"].item() == 1.0
    # without a clip: ½ (1-1)² = 0
    loss, _ = value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]),
                         torch.ones(1, 1, dtype=torch.bool), clip_eps=0.0)
    assert loss.item() == 0.0


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    # constant prediction 2: Var(R - V) = Var(R) -> 0
    assert explained_variance(torch.full((1, 3), 2.0), returns, mask).item() == pytest.approx(0.0)


def test_grpo_equal_scores_give_zero_advantage_without_nan():
    adv = group_normalized_advantages(torch.tensor([0.5, 0.5, 0.5, 1.0, 3.0, 2.0]), group_size=3)
    assert torch.isfinite(adv).all()
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    # group [1, 3, 2]: mean 2, unbiased std 1 -> [-1, 1, 0]
    assert adv[3:].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-5)
    # Dr. GRPO: centred only
    assert group_normalized_advantages(torch.tensor([1.0, 3.0, 2.0]), 3, scale_by_std=False).tolist() == [-1.0, 1.0, 0.0]


def test_rloo_on_one_two_three():
    # baselines: (2+3)/2 = 2.5, (1+3)/2 = 2, (1+2)/2 = 1.5 -> [-1.5, 0, 1.5]
    assert leave_one_out_advantages(torch.tensor([1.0, 2.0, 3.0]), 3).tolist() == [-1.5, 0.0, 1.5]


def test_discounted_returns():
    # γ = 0.5, rewards [1, 0, 2] -> G2 = 2, G1 = 0 + 0.5·2 = 1, G0 = 1 + 0.5·1 = 1.5
    rewards = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    assert discounted_returns(rewards, mask, 0.5).tolist()[0] == [1.5, 1.0, 2.0, 0.0]


def test_loss_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 3.0, 0.0], [6.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    # token-mean: (1+3+6)/3 = 3.333 ; seq-mean-token-mean: (2 + 6)/2 = 4 ; seq-mean-token-sum: (4 + 6)/2 = 5
    assert aggregate_loss(per_token, mask, "token-mean").item() == pytest.approx(10 / 3)
    assert aggregate_loss(per_token, mask, "seq-mean-token-mean").item() == pytest.approx(4.0)
    assert aggregate_loss(per_token, mask, "seq-mean-token-sum").item() == pytest.approx(5.0)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_gradient_accumulation_is_exact(mode):
    torch.manual_seed(0)
    logp = torch.randn(4, 5, requires_grad=True)
    old = logp.detach() + 0.05 * torch.randn(4, 5)
    adv = torch.randn(4, 5)
    mask = torch.tensor([[1] * 5, [1] * 2 + [0] * 3, [1] * 4 + [0], [1] + [0] * 4], dtype=torch.bool)
    full, _ = ppo_clip_loss(logp, old, adv, mask, aggregation=mode)
    n_tok, n_seq = mask.sum(), 4
    micro = sum(
        ppo_clip_loss(logp[i : i + 2], old[i : i + 2], adv[i : i + 2], mask[i : i + 2], aggregation=mode,
                      num_tokens=n_tok, num_sequences=n_seq)[0]
        for i in (0, 2)
    )
    assert micro.item() == pytest.approx(full.item(), abs=1e-6)


def test_entropy_bonus_by_hand():
    # logits [ln 3, 0] -> p = (3/4, 1/4): H = -(3/4 ln 3/4 + 1/4 ln 1/4) = ln 4 - (3/4) ln 3 = 0.5623
    # logits [0, 0]    -> p = (1/2, 1/2): H = ln 2 = 0.6931
    # logits [20, -20] -> p ≈ (1, 0):     H ≈ 0
    logits = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0]], [[20.0, -20.0], [0.0, 0.0]]], requires_grad=True)
    entropy = entropy_from_logits(logits)
    h1, h2 = math.log(4) - 0.75 * math.log(3), math.log(2)
    assert entropy.tolist()[0] == pytest.approx([h1, h2], abs=1e-6) and entropy[1, 0].item() == pytest.approx(0, abs=1e-6)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)  # row 1's second position is padding
    # token-mean: -(h1 + h2 + 0) / 3 = -0.4185; seq-mean-token-mean: -((h1 + h2) / 2 + 0) / 2 = -0.3139
    loss, stats = entropy_bonus_loss(entropy, mask)
    assert loss.item() == pytest.approx(-(h1 + h2) / 3, abs=1e-6) and stats["entropy"].item() == pytest.approx((h1 + h2) / 3, abs=1e-6)
    assert entropy_bonus_loss(entropy, mask, "seq-mean-token-mean")[0].item() == pytest.approx(-(h1 + h2) / 4, abs=1e-6)
    # the bonus pushes towards uniform: ∂(-H)/∂z_i = p_i·(log p_i + H); for p = (3/4, 1/4) that is
    # (0.75·(-0.2877 + 0.5623), 0.25·(-1.3863 + 0.5623)) = (+0.2059, -0.2059), times the token-mean's 1/3:
    # (+0.0686, -0.0686), so a descent step lowers the first logit towards the second; uniform rows: 0
    loss.backward()
    p = torch.tensor([0.75, 0.25])
    expected = p * (p.log() + h1) / 3
    assert logits.grad[0, 0].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert logits.grad[0, 1].abs().max().item() < 1e-7 and logits.grad[1, 1].abs().max().item() == 0.0


def test_policy_gradient_loss_is_minus_advantage_times_logprob_gradient():
    # at ρ = 1 the gradient of -ρA w.r.t. logp is -A
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = policy_gradient_loss(logp, logp.detach(), torch.tensor([[3.0, -1.0]]), torch.ones(1, 2, dtype=torch.bool))
    loss.backward()
    assert logp.grad.tolist()[0] == pytest.approx([-1.5, 0.5])  # -A / 2 tokens


def test_bradley_terry_by_hand():
    # gaps [2, 0, -1]: losses -log σ(2) = 0.1269, log 2 = 0.6931, -log σ(-1) = 1.3133 ; mean 0.7111
    # accuracy: 1 + 0.5 (tie) + 0 = 1.5 / 3 = 0.5
    chosen, rejected = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 1.0])
    loss, stats = bradley_terry_loss(chosen, rejected)
    assert loss.item() == pytest.approx((0.126928 + 0.693147 + 1.313262) / 3, abs=1e-5)
    assert stats["accuracy"].item() == pytest.approx(0.5)
    assert stats["margin"].item() == pytest.approx(1 / 3)
    # margin m = 1 on the first pair: -log σ(2 - 1) = 0.3133
    loss, _ = bradley_terry_loss(chosen[:1], rejected[:1], margin=torch.tensor([1.0]))
    assert loss.item() == pytest.approx(0.313262, abs=1e-5)


def test_bradley_terry_learns_a_tie_as_an_even_target():
    # a tie is -½·log σ(g) - ½·log σ(-g): gap 0 -> ln 2 = 0.6931; gap 2 -> ½(0.126928 + 2.126928) = 1.126928
    # (σ(-2) = 0.119203, -log 0.119203 = 2.126928); the preference pair (gap -1) -> -log σ(-1) = 1.313262
    chosen = torch.tensor([1.0, 2.0, 0.0], requires_grad=True)
    rejected = torch.tensor([1.0, 0.0, 1.0])
    ties = torch.tensor([True, True, False])
    loss, stats = bradley_terry_loss(chosen, rejected, ties=ties)
    assert loss.item() == pytest.approx((0.693147 + 1.126928 + 1.313262) / 3, abs=1e-5)
    # stats read the preference pair only: wrong (gap -1), so accuracy 0 and margin -1
    assert stats["accuracy"].item() == 0.0 and stats["margin"].item() == -1.0
    # gradient wrt the first score of a tie: (σ(g) - ½) / 3 -> 0 at g = 0, (0.880797 - 0.5) / 3 = 0.126932 at g = 2
    loss.backward()
    assert chosen.grad[:2].tolist() == pytest.approx([0.0, 0.126932], abs=1e-5)
    # a margin never applies to a tie; a batch of ties only reads as chance with no gap
    with_margin, _ = bradley_terry_loss(chosen[:2], rejected[:2], margin=torch.tensor([5.0, 5.0]), ties=ties[:2])
    assert with_margin.item() == pytest.approx((0.693147 + 1.126928) / 2, abs=1e-5)
    _, only_ties = bradley_terry_loss(chosen[:2], rejected[:2], ties=ties[:2])
    assert only_ties["accuracy"].item() == 0.5 and only_ties["margin"].item() == 0.0


def test_dpo_by_hand():
    # chosen log-ratio 1 - 0 = 1, rejected -1 - 0 = -1 -> h = 2, β = 0.5: -log σ(1) = 0.3133
    args = (torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor([0.0]), torch.tensor([0.0]))
    loss, stats = dpo_loss(*args, beta=0.5)
    assert loss.item() == pytest.approx(0.313262, abs=1e-5)
    assert stats["rewards/chosen"].item() == pytest.approx(0.5)
    assert stats["rewards/rejected"].item() == pytest.approx(-0.5)
    assert stats["rewards/accuracy"].item() == 1.0
    # label smoothing 0.1: 0.9·0.3133 + 0.1·(-log σ(-1) = 1.3133) = 0.4133
    assert dpo_loss(*args, beta=0.5, label_smoothing=0.1)[0].item() == pytest.approx(0.9 * 0.313262 + 0.1 * 1.313262, abs=1e-5)
    # IPO: (h - 1/(2β))² = (2 - 1)² = 1
    assert dpo_loss(*args, beta=0.5, loss_type="ipo")[0].item() == pytest.approx(1.0)
