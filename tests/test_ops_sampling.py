import torch

from tether.ops.sampling import inverse_cdf_sample


def test_inverse_cdf_by_hand():
    # probs (0.25, 0, 0.5, 0.25): cdf (0.25, 0.25, 0.75, 1.0), exact in binary.
    #   u = 0      -> 0 < 0.25                  -> token 0
    #   u = 0.2499 -> still below 0.25          -> token 0
    #   u = 0.25   -> token 1's interval is empty (0.25 <= x < 0.25): token 2
    #   u = 0.7499 -> token 2;   u = 0.75 -> token 3;   u = 0.99999 -> token 3
    probs = torch.tensor([[0.25, 0.0, 0.5, 0.25]]).expand(6, 4)
    u = torch.tensor([0.0, 0.2499, 0.25, 0.7499, 0.75, 0.99999])
    assert inverse_cdf_sample(probs, u).tolist() == [0, 0, 2, 2, 3, 3]


def test_rows_need_not_be_normalised_and_trailing_zeros_are_never_drawn():
    # Row 0: weights (2, 2, 0, 0), total 4: u = 0.5 -> x = 2.0 = cdf[0] -> token 1.
    # Row 1: weights (1, 2, 0, 0), total 3, u = 1 - 2^-53 (the largest double below 1):
    #   u·3 = 3 - 0.75·2^-51 rounds to 3 - 2^-51 (doubles in [2, 4) are 2^-51 apart), still
    #   below cdf[1] = 3: token 1, the last of positive probability, never tokens 2 and 3.
    # Row 2: only the last token is possible: whatever u, token 3.
    probs = torch.tensor([[2.0, 2.0, 0.0, 0.0], [1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    u = torch.tensor([0.5, 1.0 - 2.0**-53, 0.0], dtype=torch.float64)
    assert u[1] < 1.0 and u[1] * 3.0 == 3.0 - 2.0**-51
    assert inverse_cdf_sample(probs, u).tolist() == [1, 1, 3]


def test_draws_follow_the_distribution():
    # 200,000 draws from (0.1, 0.2, 0.3, 0.4): each frequency within 5 standard errors
    # (sqrt(p(1-p)/n) <= 0.0011) of its probability.
    generator = torch.Generator().manual_seed(0)
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 200_000
    draws = inverse_cdf_sample(p.expand(n, 4), torch.rand(n, generator=generator))
    freq = torch.bincount(draws, minlength=4).double() / n
    assert torch.allclose(freq, p.double(), atol=5 * 0.0011)
