"""ops/masking.py, ops/logprobs.py and ops/kl.py against numbers worked by hand."""

import math

import pytest
import torch

from tether.ops import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    kl_estimate,
    mask_after_first_eos,
    masked_mean,
    masked_var,
    masked_whiten,
    token_logprobs,
)


def test_masked_mean_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    # real tokens 1, 2, 3 -> mean 2
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    # per row: (1+2)/2 = 1.5 ; 3/1 = 3
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 3.0])


def test_masked_mean_of_empty_row_is_zero_not_nan():
    x = torch.tensor([[5.0, 5.0]])
    assert masked_mean(x, torch.zeros(1, 2, dtype=torch.bool), dim=1).tolist() == [0.0]


def test_masked_var_unbiased_and_biased():
    x = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    # values 1, 2, 3: mean 2, squared deviations 1, 0, 1 -> biased 2/3, unbiased 2/2 = 1
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(2 / 3)
    assert masked_var(x, mask).item() == pytest.approx(1.0)


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    # mean 2, unbiased std 1 -> -1, 0, 1; padding 0
    assert masked_whiten(x, mask).tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    # shift_mean=False keeps the mean: -1+2, 0+2, 1+2
    assert masked_whiten(x, mask, shift_mean=False).tolist()[0] == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)


def test_mask_after_first_eos_keeps_the_eos_and_drops_the_rest():
    eos = 2
    tokens = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 2, 2, 2, 2]])
    assert mask_after_first_eos(tokens, [eos]).int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_token_logprobs_matches_hand_computation_and_temperature():
    # logits [0, ln 3] -> probabilities 1/4, 3/4
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    tokens = torch.tensor([[1]])
    assert token_logprobs(logits, tokens).item() == pytest.approx(math.log(0.75))
    # temperature 2 halves the logits: [0, ln 3 / 2] -> p1 = √3 / (1 + √3)
    assert token_logprobs(logits, tokens, temperature=2.0).item() == pytest.approx(math.log(math.sqrt(3) / (1 + math.sqrt(3))))


def test_token_logprobs_chunking_equals_full_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(3, 11, 17)
    tokens = torch.randint(0, 17, (3, 11))
    full = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, tokens, chunk_size=4), full, atol=1e-6)


def test_entropy_from_logits():
    # uniform over 4 -> ln 4 ; one-hot-ish (logit 1000) -> 0
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0]]])
    assert entropy_from_logits(logits)[0].tolist() == pytest.approx([math.log(4), 0.0], abs=1e-5)


def test_kl_estimators_by_hand():
    # log π = ln 0.5, log π_ref = ln 0.25 -> lr = ln 0.5 = -0.6931
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    lr = math.log(0.5)
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(-lr)  # 0.6931
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * lr**2)  # 0.2402
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx((0.5 - 1) - lr)  # 0.1931
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")


def test_k3_is_never_negative_while_k1_can_be():
    torch.manual_seed(0)
    logp, ref = torch.randn(1000), torch.randn(1000)
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert (kl_estimate(logp, ref, "k1") < 0).any()


def test_adaptive_kl_controller_moves_beta_the_right_way():
    # KL 2x the target: error clipped to +0.2; β = 0.1 * (1 + 0.2 * 100/1000) = 0.102
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    ctl.update(12.0, n_steps=100)
    assert ctl.value == pytest.approx(0.102)
    # KL at half the target: error -0.5 clipped to -0.2: β = 0.102 * (1 - 0.02) = 0.09996
    ctl.update(3.0, n_steps=100)
    assert ctl.value == pytest.approx(0.09996)
    # KL 10% above target: error 0.1 -> β * 1.01
    before = ctl.value
    ctl.update(6.6, n_steps=100)
    assert ctl.value == pytest.approx(before * 1.01)


def test_fixed_kl_controller_never_moves():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 64)
    assert ctl.value == 0.05
