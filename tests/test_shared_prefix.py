"""A prompt prefix common to every row runs once (tether/data/sequences.py lays it out,
tether/models/forward.py runs it): the layout ``build_inputs`` makes, worked by hand, and the
same log-probs, values, scores and gradients as the plain forward over every row."""

from __future__ import annotations

import pytest
import torch

import tether.data.sequences as sequences
from tether.data.sequences import build_inputs, common_prefix_length
from tether.models.forward import can_share_prefix, policy_forward
from tether.models.loading import load_causal_lm

pytestmark = pytest.mark.usefixtures("one_thread")


def test_layout_by_hand(monkeypatch):
    monkeypatch.setattr(sequences, "MIN_SHARED_PREFIX", 2)
    monkeypatch.setattr(sequences, "MIN_SAVED_POSITIONS", 6)  # (3 rows - 1) x K = 3
    # Three left-padded prompts (pad 0), width 6; real tokens:
    #   row 0: 5 6 7 8        (lead 2)
    #   row 1: 5 6 7 9 9 9    (lead 0)
    #   row 2: 5 6 7 8 9      (lead 1)
    # Common first tokens: 5 6 7 (K = 3; the shortest prompt has 4, so K <= 3 leaves each row a
    # token of its own). Columns 0-2 become 5 6 7 in every row; columns 3-5 keep each row's
    # original columns 3-5 with the prefix tokens there masked:
    #   row 0: original 7 8 at columns 4-5 are its prefix token 7 and its own 8 -> [6 7 8] mask 0 0 1
    #   row 1: 9 9 9, all its own                                               -> mask 1 1 1
    #   row 2: original [7 8 9]: 7 is its prefix (column 3 < lead 1 + 3)          -> mask 0 1 1
    prompt_ids = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 9, 9], [0, 5, 6, 7, 8, 9]])
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    response_ids = torch.tensor([[1, 2], [3, 0], [4, 4]])
    response_mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    inputs = build_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    assert inputs.shared_prefix == 3 and inputs.prompt_width == 6
    assert inputs.input_ids.tolist() == [[5, 6, 7, 6, 7, 8, 1, 2], [5, 6, 7, 9, 9, 9, 3, 0], [5, 6, 7, 7, 8, 9, 4, 4]]
    assert inputs.attention_mask.tolist() == [[1, 1, 1, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0],
                                              [1, 1, 1, 0, 1, 1, 1, 1]]
    # positions count real tokens: row 0 is 0 1 2 | 3 | 4 5, row 2 is 0 1 2 | 3 4 | 5 6
    assert inputs.position_ids.tolist() == [[0, 1, 2, 2, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6, 6],
                                            [0, 1, 2, 2, 3, 4, 5, 6]]
    # each row still reads, in order, exactly its own tokens at the same positions
    plain = build_inputs(prompt_ids, prompt_mask, response_ids, response_mask, share_prefix=False)
    assert plain.shared_prefix == 0
    for row in range(3):
        for field in ("input_ids", "position_ids"):
            a, b = getattr(inputs, field)[row], getattr(plain, field)[row]
            assert a[inputs.attention_mask[row].bool()].tolist() == b[plain.attention_mask[row].bool()].tolist()


@pytest.mark.parametrize("prompts, expected", [
    ([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6]], 4),  # differ at the 5th token
    ([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]], 4),  # identical (a GRPO group): the last token stays per row
    ([[1, 2, 3]] + [[1, 2, 3, 4, 5, 6]] * 2, 2),  # capped by the shortest prompt (3 tokens) minus one
    ([[9, 2, 3, 4, 5], [1, 2, 3, 4, 5]], 0),  # the first tokens differ
    ([[1, 2, 3, 4, 5]], 0),  # one row: nothing to share
    ([[1, 2, 3, 4, 5, 6]] * 2 + [[1, 2, 3, 7, 7, 7]], 3),  # 3 rows: (3 - 1) x 3 = 6 saved positions
    ([[1, 2, 3, 4, 5, 6]] + [[1, 2, 7, 7, 7, 7]], 0),  # 2 rows, K = 2: (2 - 1) x 2 = 2 < 4 positions
])
def test_common_prefix_length(monkeypatch, prompts, expected):
    # thresholds lowered to fit hand-sized prompts: K >= 2 tokens and >= 4 saved positions
    monkeypatch.setattr(sequences, "MIN_SHARED_PREFIX", 2)
    monkeypatch.setattr(sequences, "MIN_SAVED_POSITIONS", 4)
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    lead = (mask.cumsum(1) == 0).sum(1)
    assert common_prefix_length(ids, mask, lead) == expected


def _batch(vocab: int, prefix: int = 12):
    """4 rows: a common prefix of ``prefix`` tokens (3 x 12 = 36 saved positions: shared), then
    2-5 tokens of their own (left-padded), and responses of 6 tokens with some right padding."""
    g = torch.Generator().manual_seed(0)
    head = torch.randint(3, vocab, (prefix,), generator=g).tolist()
    own = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (2, 5, 3, 4)]
    width = prefix + 5
    prompt_ids = torch.tensor([[0] * (5 - len(o)) + head + o for o in own])
    prompt_mask = torch.tensor([[0] * (5 - len(o)) + [1] * (prefix + len(o)) for o in own])
    response_ids = torch.randint(3, vocab, (4, 6), generator=g)
    response_mask = torch.ones(4, 6, dtype=torch.long)
    response_mask[1, 4:] = 0
    response_mask[3, 2:] = 0
    assert prompt_ids.shape[1] == width
    return prompt_ids, prompt_mask, response_ids, response_mask


class _EmbeddingShapes:
    """Records the (rows, columns) of every batch the model embeds."""

    def __init__(self, model):
        self.shapes = []
        model.get_input_embeddings().register_forward_hook(self._record)

    def _record(self, module, args, output):
        self.shapes.append(tuple(args[0].shape))


def test_policy_logprobs_and_gradients_match_the_plain_forward(tiny_model_path):
    model = load_causal_lm(tiny_model_path)
    prompt_ids, prompt_mask, response_ids, response_mask = _batch(model.config.vocab_size)
    shared = build_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    plain = build_inputs(prompt_ids, prompt_mask, response_ids, response_mask, share_prefix=False)
    assert shared.shared_prefix == 12 and can_share_prefix(model.get_decoder())
    embedded = _EmbeddingShapes(model)
    results = {}
    for name, inputs in (("shared", shared), ("plain", plain)):
        model.zero_grad(set_to_none=True)
        out = policy_forward(model, inputs, response_ids, with_entropy=True)
        (out.logprobs * response_mask).sum().backward()
        results[name] = (out.logprobs.detach(), out.entropy, [p.grad.clone() for p in model.parameters()])
    # the shared run embedded the prefix once (1 x 12) and the rest per row (4 x 5 + 6): 4 x 17 + 6 plain
    assert embedded.shapes == [(1, 12), (4, 11), (4, 23)]
    assert_same_forward(results["shared"], results["plain"], response_mask.bool())


def assert_same_forward(got: tuple, want: tuple, mask: torch.Tensor) -> None:
    """(logprobs, entropy, parameter gradients) of two forwards equal to float rounding on the
    real response tokens."""
    torch.testing.assert_close(got[0][mask], want[0][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1][mask], want[1][mask], atol=1e-5, rtol=1e-5)
    for a, b in zip(got[2], want[2]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_scalar_head_values_and_scores_match_the_plain_forward(tiny_model_path):
    from tether.models.scalar_head import ScalarHeadModel

    model = ScalarHeadModel.from_pretrained(tiny_model_path, fresh_head=True)
    prompt_ids, prompt_mask, response_ids, response_mask = _batch(model.config.vocab_size)
    embedded = _EmbeddingShapes(model.hf_model)
    outs = {}
    for name, share in (("shared", True), ("plain", False)):
        inputs = build_inputs(prompt_ids, prompt_mask, response_ids, response_mask, share_prefix=share)
        last = inputs.prompt_width + response_mask.sum(1) - 1
        outs[name] = (model.response_values(inputs, 6).detach(), model.sequence_scores(inputs, last).detach(),
                      model(inputs).detach(), inputs.attention_mask.bool())
    assert embedded.shapes[:2] == [(1, 12), (4, 11)]
    # every position (the prefix's head outputs lent to every row): the same at each real token
    (_, _, shared_all, shared_mask), (_, _, plain_all, plain_mask) = outs["shared"], outs["plain"]
    for row in range(4):
        torch.testing.assert_close(shared_all[row][shared_mask[row]], plain_all[row][plain_mask[row]],
                                   atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["shared"][0][response_mask.bool()], outs["plain"][0][response_mask.bool()],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["shared"][1], outs["plain"][1], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_and_encoders_run_the_plain_way(tiny_model_path):
    """Under gradient checkpointing transformers would drop the prefix's cache inside each
    layer, and an encoder's prefix attends to the tokens after it: both must take every row
    whole, whatever the inputs offer."""
    from transformers import BertConfig, BertModel

    from tether.train.roles import _checkpoint_activations

    model = load_causal_lm(tiny_model_path)
    _checkpoint_activations(model)  # as build_roles does for gradient_checkpointing=true
    model.train()
    prompt_ids, prompt_mask, response_ids, response_mask = _batch(model.config.vocab_size)
    inputs = build_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    assert inputs.shared_prefix == 12 and not can_share_prefix(model.get_decoder())
    embedded = _EmbeddingShapes(model)
    policy_forward(model, inputs, response_ids).logprobs.sum().backward()
    assert embedded.shapes[0] == (4, 23)
    encoder = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    assert not can_share_prefix(encoder)


def test_shared_prefix_forward_passes_the_cache_without_a_deprecation_warning(tiny_model_path):
    """The cache goes by the name the installed transformers uses (``cache`` in recent ones,
    which raise a FutureWarning for ``past_key_values`` on every reward-model and DPO run)."""
    import warnings

    from tether.models.scalar_head import ScalarHeadModel

    model = ScalarHeadModel.from_pretrained(tiny_model_path, fresh_head=True)
    prompts = torch.full((6, 12), 5)
    responses = torch.randint(5, 30, (6, 3))
    inputs = build_inputs(prompts, torch.ones_like(prompts), responses, torch.ones_like(responses))
    assert inputs.shared_prefix == 11
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        shared = model.forward(inputs, 11)
    plain = build_inputs(prompts, torch.ones_like(prompts), responses, torch.ones_like(responses), share_prefix=False)
    assert torch.allclose(shared, model.forward(plain, 11), atol=1e-5)
