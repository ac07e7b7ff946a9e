"""Rows that repeat a prompt (GRPO/RLOO groups, ``samples_per_prompt > 1``) run it once per
forward (tether/data/sequences.py groups the rows, tether/models/forward.py runs them): the
grouping worked by hand, and the same log-probs, entropies, values, scores, gradients, samples
and GRPO run metrics as running every row whole."""

from __future__ import annotations

import functools
import json

import pytest
import torch

import tether.data.sequences as sequences
import tether.models.forward as forward
from tether.config import load_config
from tether.data.sequences import build_inputs, prompt_groups
from tether.models.forward import policy_forward
from tether.models.loading import load_causal_lm
from tests.test_shared_prefix import _EmbeddingShapes, assert_same_forward

pytestmark = pytest.mark.usefixtures("one_thread")


def _left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def test_groups_by_hand(monkeypatch):
    monkeypatch.setattr(sequences, "MIN_SHARED_PREFIX", 2)
    monkeypatch.setattr(sequences, "MIN_SAVED_POSITIONS", 4)
    a, b, c = [5, 6, 7], [5, 6, 8, 9], [0, 6, 7]  # c: pad id 0 as a real token, its mask tells it from a's
    ids, mask = _left_padded([a, a, b, a, b, c])
    groups = prompt_groups(ids, mask)
    assert groups.first_rows.tolist() == [0, 2, 5]  # numbered by first appearance, not sort order
    assert groups.of_row.tolist() == [0, 0, 1, 0, 1, 2]  # rows of one prompt need not be adjacent
    assert prompt_groups(*_left_padded([a, b, c])) is None  # every prompt distinct
    assert prompt_groups(*_left_padded([a, a, a])) is None  # one prompt: the batch-wide prefix's case
    # saved positions (rows - distinct) x width = 1 x 4 < 6
    monkeypatch.setattr(sequences, "MIN_SAVED_POSITIONS", 6)
    assert prompt_groups(*_left_padded([a, a, b])) is None


def test_build_inputs_takes_whichever_sharing_saves_more(monkeypatch):
    monkeypatch.setattr(sequences, "MIN_SHARED_PREFIX", 2)
    monkeypatch.setattr(sequences, "MIN_SAVED_POSITIONS", 4)
    head = [3, 4, 5, 6, 7, 8]
    responses, response_mask = torch.ones(4, 2, dtype=torch.long), torch.ones(4, 2, dtype=torch.long)
    # two prompts x 2 rows, a 6-token common head: grouping saves 2 x 8 positions, the head 3 x 6
    ids, mask = _left_padded([head + [1, 2]] * 2 + [head + [9, 9]] * 2)
    inputs = build_inputs(ids, mask, responses, response_mask)
    assert inputs.prompt_groups is None and inputs.shared_prefix == 6
    # four rows of two prompts that differ from the second token: only grouping saves anything
    ids, mask = _left_padded([[3, 1, 2, 5]] * 2 + [[3, 9, 9]] * 2)
    inputs = build_inputs(ids, mask, responses, response_mask)
    assert inputs.shared_prefix == 0 and inputs.prompt_groups.of_row.tolist() == [0, 0, 1, 1]
    assert inputs.input_ids.tolist() == [[3, 1, 2, 5, 1, 1]] * 2 + [[0, 3, 9, 9, 1, 1]] * 2  # the plain layout
    assert build_inputs(ids, mask, responses, response_mask, share_prefix=False).prompt_groups is None


def _groups(vocab: int, adjacent: bool = True):
    """9 rows: 3 prompts of 9, 12 and 14 tokens (left padding differs per group) x 3 responses
    of 6 tokens with some right padding; ``adjacent=False`` interleaves the groups."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (9, 12, 14)]
    order = [0, 0, 0, 1, 1, 1, 2, 2, 2] if adjacent else [0, 1, 2, 2, 0, 1, 1, 2, 0]
    prompt_ids, prompt_mask = _left_padded([prompts[i] for i in order])
    response_ids = torch.randint(3, vocab, (9, 6), generator=g)
    response_mask = torch.ones(9, 6, dtype=torch.long)
    response_mask[1, 4:] = 0
    response_mask[5, 1:] = 0
    response_mask[7, 3:] = 0
    return prompt_ids, prompt_mask, response_ids, response_mask


@pytest.mark.parametrize("adjacent", [True, False], ids=["adjacent", "interleaved"])
def test_policy_logprobs_entropy_and_gradients_match_every_row_whole(tiny_model_path, adjacent):
    model = load_causal_lm(tiny_model_path)
    prompt_ids, prompt_mask, response_ids, response_mask = _groups(model.config.vocab_size, adjacent)
    grouped = build_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    plain = build_inputs(prompt_ids, prompt_mask, response_ids, response_mask, share_prefix=False)
    assert grouped.prompt_groups is not None and grouped.shared_prefix == 0 and plain.prompt_groups is None
    embedded = _EmbeddingShapes(model)
    results = {}
    for name, inputs in (("grouped", grouped), ("plain", plain)):
        model.zero_grad(set_to_none=True)
        out = policy_forward(model, inputs, response_ids, with_entropy=True)
        # a weight per row, so that a gradient summed into the wrong prompt would show
        weights = torch.arange(1, 10, dtype=torch.float32)[:, None]
        (out.logprobs * response_mask * weights).sum().backward()
        results[name] = (out.logprobs.detach(), out.entropy, [p.grad.clone() for p in model.parameters()])
    # the grouped run embedded each prompt once (3 x 14), then the responses of every row (9 x 6)
    assert embedded.shapes == [(3, 14), (9, 6), (9, 20)]
    assert_same_forward(results["grouped"], results["plain"], response_mask.bool())


def test_scalar_head_values_and_scores_match_every_row_whole(tiny_model_path):
    from tether.models.scalar_head import ScalarHeadModel

    model = ScalarHeadModel.from_pretrained(tiny_model_path, fresh_head=True)
    prompt_ids, prompt_mask, response_ids, response_mask = _groups(model.config.vocab_size, adjacent=False)
    outs = {}
    for name, share in (("grouped", True), ("plain", False)):
        inputs = build_inputs(prompt_ids, prompt_mask, response_ids, response_mask, share_prefix=share)
        last = inputs.prompt_width + response_mask.sum(1) - 1
        outs[name] = (model.response_values(inputs, 6).detach(), model.sequence_scores(inputs, last).detach(),
                      model(inputs).detach())
    mask = response_mask.bool()
    torch.testing.assert_close(outs["grouped"][0][mask], outs["plain"][0][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["grouped"][1], outs["plain"][1], atol=1e-5, rtol=1e-5)
    # every real position, the prompt's head outputs lent to each row of its group included
    real = torch.cat([prompt_mask, response_mask], 1).bool()
    torch.testing.assert_close(outs["grouped"][2][real], outs["plain"][2][real], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_runs_every_row_whole(tiny_model_path):
    from tether.train.roles import _checkpoint_activations

    model = load_causal_lm(tiny_model_path)
    _checkpoint_activations(model)
    model.train()
    prompt_ids, prompt_mask, response_ids, response_mask = _groups(model.config.vocab_size)
    inputs = build_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    embedded = _EmbeddingShapes(model)
    policy_forward(model, inputs, response_ids).logprobs.sum().backward()
    assert inputs.prompt_groups is not None and embedded.shapes[0] == (9, 20)


def test_generation_prefills_each_prompt_once_and_samples_the_same(tiny_model_path):
    from tether.models.loading import load_tokenizer
    from tether.rollout.generation import SamplingSettings, generate_rollout

    model, tokenizer = load_causal_lm(tiny_model_path), load_tokenizer(tiny_model_path)
    prompt_ids, prompt_mask, _, _ = _groups(model.config.vocab_size, adjacent=False)
    token_lists = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)]
    embedded = _EmbeddingShapes(model)
    rollouts = []
    for share in (True, False):
        torch.manual_seed(0)
        embedded.shapes.clear()
        rollouts.append(generate_rollout(model, tokenizer, ["p"] * 9, token_lists, SamplingSettings(10), 3,
                                         share_prompts=share))
        # shared: 3 prompts x 13 columns once, then every row's last prompt token; else 9 x 14
        assert embedded.shapes[:2] == ([(3, 13), (9, 1)] if share else [(9, 14), (9, 1)])
    assert torch.equal(rollouts[0].response_ids, rollouts[1].response_ids)
    assert torch.equal(rollouts[0].response_mask, rollouts[1].response_mask)


def test_grpo_run_metrics_match_with_sharing_off(tmp_path, monkeypatch):
    """Two GRPO iterations on the tiny model (4 prompts x 4 samples of ~32 tokens, one micro-batch):
    every logged number the same whether groups share their prompt or every row runs whole."""
    import tether.rollout.engine as engine
    from tether.train.ppo import train_ppo
    from tether.train.ppo_config import PPOConfig

    calls = {"prefix": 0}
    grouped_forward = forward._prefix_then_rest

    def counting(*args, **kwargs):
        calls["prefix"] += 1
        return grouped_forward(*args, **kwargs)

    monkeypatch.setattr(forward, "_prefix_then_rest", counting)
    metrics = {}
    for name in ("shared", "plain"):
        if name == "plain":
            monkeypatch.setattr(sequences, "MIN_SAVED_POSITIONS", 10**9)  # neither sharing pays
            monkeypatch.setattr(engine, "generate_rollout",
                                functools.partial(engine.generate_rollout, share_prompts=False))
        config = load_config(PPOConfig, "configs/grpo-tiny.yaml", [
            f"output_dir={tmp_path}", f"run_name={name}", "quiet=true", "total_iterations=2", "max_new_tokens=8"])
        calls["prefix"] = 0
        run_dir = train_ppo(config)
        metrics[name] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        # scoring: policy + reference per iteration; update: 4 epochs x 1 micro-batch
        assert calls["prefix"] == (2 * (2 + 4) if name == "shared" else 0)
    assert len(metrics["shared"]) == len(metrics["plain"]) == 2
    for shared, plain in zip(metrics["shared"], metrics["plain"]):
        numbers = {k for k, v in plain.items()
                   if isinstance(v, (int, float)) and not k.startswith("time/") and not k.endswith("_per_s")}
        assert numbers and numbers <= shared.keys()
        for key in sorted(numbers):
            assert shared[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-5), key
