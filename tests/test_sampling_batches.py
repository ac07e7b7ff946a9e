"""Rows per generate call are a speed setting of sample_responses (benchmarks/rollout_speed.py):
a row's next-token distribution must not depend on which rows share its batch (the left
padding that a longer neighbour adds is masked out). At a real temperature the batch size only
changes the order the uniforms are drawn in: other samples of the same distribution."""

from __future__ import annotations

import pytest
import torch

import tether.rollout.generation as generation
from tether.rollout.prompts import builtin_prompts
from tether.rollout.sampling import sample_responses

pytestmark = pytest.mark.usefixtures("one_thread")


class RecordLogProbs:
    """A first logits processor that keeps each step's (B, vocab) log-softmax of the logits."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.steps.append(torch.log_softmax(scores.float(), dim=-1))
        return scores


def test_a_rows_distribution_does_not_depend_on_the_rows_per_generate_call(monkeypatch):
    calls: list[RecordLogProbs] = []
    plain = generation.sampling_processors

    def recording(*args):
        chain = plain(*args)
        calls.append(RecordLogProbs())
        chain.insert(0, calls[-1])
        return chain

    monkeypatch.setattr(generation, "sampling_processors", recording)
    # prompts of different lengths: the calls of 8 rows (4 prompts x k = 2) are left-padded,
    # those of 2 rows (one prompt twice) are not. top_p near 0 keeps only the top token, so both
    # layouts extend every row with the same tokens and their steps can be compared one by one.
    prompts = [p * (1 + i % 3) for i, p in enumerate(builtin_prompts("tiny")[:4])]
    runs = {}
    for batch in (2, 8):
        calls.clear()
        texts = sample_responses("tiny-llama", prompts, k=2, max_new_tokens=6, top_p=1e-6, batch_size=batch)
        steps = min(len(call.steps) for call in calls)
        runs[batch] = texts, torch.cat([torch.stack(call.steps[:steps]) for call in calls], dim=1)  # (T, rows, V)
    assert runs[2][0] == runs[8][0]
    steps = min(runs[2][1].shape[0], runs[8][1].shape[0])
    assert steps >= 1
    torch.testing.assert_close(runs[8][1][:steps], runs[2][1][:steps], atol=1e-5, rtol=0)
