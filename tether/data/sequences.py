"""The layout of every (prompt, response) batch, from token lists to a model-ready input.

``input_ids = [prompt (left-padded, width P) | response (right-padded, width R)]``: masks are
built from token counts, never from ``ids != pad_id`` (the pad may be the EOS). The hidden
state at column P-1+t predicts response token t (``tether.models.forward``).

Shared prompt prefix: prompts wrapped in a chat template all begin with the same tokens (SmolLM2's
system prompt and user header are 24 of a ~35-token prompt), and a batch that is one GRPO/RLOO
group repeats one whole prompt. When every row of a batch begins with the same K tokens, ``build_inputs`` puts them in
columns [0, K) of every row (the rest of each prompt stays left-padded after them), and the
decoder runs those K columns once, as a batch of one, and lends their keys and values to every
row. Exact: the same attention over the same keys, and autograd sums the B rows' gradients into
the one prefix computation. It saves (B - 1) * K token positions in every forward and backward:
about a quarter of the body's FLOPs for SmolLM2's template at batch 8.

Prompts shared by groups of rows: GRPO, RLOO and any ``samples_per_prompt > 1`` run put G
responses to one prompt in a batch, and a batch of several groups shares less than one prompt
(only the template). When rows repeat whole prompts, ``build_inputs`` records which rows hold
the same prompt (``PromptGroups``) and the decoder runs the prompt columns [0, P) once per
distinct prompt (a batch of D), gathers their keys and values to the B rows and runs the
responses against them. The layout stays the plain one (prompts left-padded): a distinct
prompt's padding is its own rows' padding. Exact in the same way, the gather's backward
summing each group's gradients into its prompt's computation; it saves (B - D) * P token
positions per forward and backward, and ``build_inputs`` takes whichever of the two saves more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def left_pad(sequences: list[list[int]], pad_id: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids (B, P), mask (B, P) bool), padded on the left."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = True
    return ids.to(device), mask.to(device)


def right_pad(sequences: list[list[int]], pad_id: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids (B, R), mask (B, R) bool), padded on the right."""
    width = max(max(len(s) for s in sequences), 1)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = True
    return ids.to(device), mask.to(device)


# The prefix pass is one more call through every layer: it pays when it saves enough token
# positions. Measured on SmolLM2, CPU, bf16, batch 8 x (36 + 48) tokens, forward + backward
# against no sharing, two runs (benchmarks/shared_prefix.py sweep; benchmarks/NOTES.md):
# K = 1 1.15x / 0.93x the time, K = 2-4 0.87-1.03x, K = 8 0.87x / 0.83x, K = 24 0.69x / 0.70x.
# Below 8 the sign depends on the run: share K >= 8 tokens, where (rows - 1) x K >= 32 positions.
MIN_SHARED_PREFIX = 8
MIN_SAVED_POSITIONS = 32


@dataclass
class PromptGroups:
    """Rows that hold the same prompt: distinct prompt d is row ``first_rows[d]``'s, and row i
    holds prompt ``of_row[i]``."""

    first_rows: torch.Tensor  # (D,) long, increasing: the first row holding each distinct prompt
    of_row: torch.Tensor  # (B,) long in [0, D)


@dataclass
class SequenceInputs:
    """A model-ready batch. All (B, P + R)."""

    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long, 1 on real tokens
    position_ids: torch.Tensor  # (B, L) long, counted from each row's first real token
    prompt_width: int  # P: response token t sits at column P + t
    shared_prefix: int = 0  # K < P: columns [0, K) hold the same real tokens in every row
    prompt_groups: PromptGroups | None = None  # rows repeating prompts: columns [0, P) run once per prompt


def build_inputs(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor,
    share_prefix: bool = True,
) -> SequenceInputs:
    """Concatenate, trimming columns that are padding in every row (left of the prompts,
    right of the responses), and compute position ids from the mask (left padding must not
    shift positions; Huang et al. 2024). With ``share_prefix``, a prompt prefix common to every
    row is moved to the first columns, or rows repeating a prompt are grouped, whichever saves
    more positions (see the module docstring)."""
    lead = (prompt_mask.long().cumsum(1) == 0).sum(1)  # (B,) padding columns left of each prompt
    lead_pad = int(lead.min().item()) if prompt_mask.numel() else 0
    prompt_ids, prompt_mask, lead = prompt_ids[:, lead_pad:], prompt_mask[:, lead_pad:].long(), lead - lead_pad
    shared = common_prefix_length(prompt_ids, prompt_mask, lead) if share_prefix else 0
    groups = prompt_groups(prompt_ids, prompt_mask) if share_prefix else None
    if groups is not None:
        rows, distinct = len(prompt_ids), len(groups.first_rows)
        if (rows - distinct) * prompt_ids.shape[1] > (rows - 1) * shared:
            input_ids = torch.cat([prompt_ids, response_ids], dim=1)
            attention_mask = torch.cat([prompt_mask, response_mask.long()], dim=1)
            position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
            return SequenceInputs(input_ids, attention_mask, position_ids, prompt_ids.shape[1], 0, groups)
    if shared:
        # Row i's prompt sits at columns [lead_i, P). Its first K tokens go to columns [0, K) of
        # every row; the columns after them keep the rest of the prompt, right-aligned as before,
        # and the K columns each row's prompt vacated become padding.
        columns = torch.arange(prompt_ids.shape[1], device=prompt_ids.device)
        rest_mask = prompt_mask * (columns[None, :] >= (lead + shared)[:, None])
        first = int(lead.argmin().item())  # a row whose prompt starts at column 0
        prefix = prompt_ids[first : first + 1, :shared].expand(len(prompt_ids), -1)
        # (No column becomes padding in every row: the row starting at column 0 fills them all.)
        prompt_ids = torch.cat([prefix, prompt_ids[:, shared:]], 1)
        prompt_mask = torch.cat([torch.ones_like(prompt_mask[:, :shared]), rest_mask[:, shared:]], 1)
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return SequenceInputs(input_ids, attention_mask, position_ids, prompt_ids.shape[1], shared)


def common_prefix_length(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, lead: torch.Tensor) -> int:
    """K: how many first prompt tokens every row shares (prompts left-padded, row i starting at
    column ``lead[i]``), capped so that every row keeps at least its last prompt token outside
    the prefix (its hidden state predicts the first response token). 0 when sharing would not
    pay (``MIN_SHARED_PREFIX``, ``MIN_SAVED_POSITIONS``)."""
    rows, width = prompt_ids.shape
    if rows < 2 or width == 0:
        return 0
    # Left-align each row: aligned[i, j] is row i's j-th prompt token.
    columns = torch.arange(width, device=prompt_ids.device)
    source = (lead[:, None] + columns[None, :]).clamp(max=width - 1)
    aligned, aligned_mask = prompt_ids.gather(1, source), prompt_mask.gather(1, source).bool()
    aligned_mask &= (lead[:, None] + columns[None, :]) < width
    same = ((aligned == aligned[:1]) & aligned_mask).all(0)  # (width,)
    shared = int(same.long().cumprod(0).sum().item())
    shortest = int(prompt_mask.sum(1).min().item())
    shared = min(shared, shortest - 1)
    return shared if shared >= MIN_SHARED_PREFIX and (rows - 1) * shared >= MIN_SAVED_POSITIONS else 0


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> PromptGroups | None:
    """Which rows hold the same prompt (the same real tokens at the same columns; rows need
    not be adjacent), in order of first appearance. None when grouping would not pay: every
    prompt distinct, or one prompt for the whole batch (then ``common_prefix_length`` shares it
    with a batch of one), or fewer positions saved than ``MIN_SAVED_POSITIONS``."""
    rows, width = prompt_ids.shape
    if rows < 2 or width < MIN_SHARED_PREFIX:
        return None
    key = prompt_ids.masked_fill(~prompt_mask.bool(), -1)  # pad ids may be real tokens: compare masked
    _, of_unique = torch.unique(key, dim=0, return_inverse=True)
    distinct = int(of_unique.max().item()) + 1
    if distinct in (1, rows) or (rows - distinct) * width < MIN_SAVED_POSITIONS:
        return None
    # number the distinct prompts by their first row (torch.unique numbers them by sort order)
    row_numbers = torch.arange(rows, device=prompt_ids.device)
    first = torch.full((distinct,), rows, device=prompt_ids.device).scatter_reduce(0, of_unique, row_numbers, "amin")
    order = first.argsort()
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(distinct, device=order.device))
    return PromptGroups(first[order], rank[of_unique])
