"""Tokenised preference and SFT batches: left-padded prompts, right-padded responses, masks from
lengths (pad == EOS for tiny-llama, as for SmolLM2), truncation that never empties a response."""

from __future__ import annotations

import pytest
import torch

from tether.data.batching import (
    PromptEncoder,
    collate_pairs,
    tokenize_demonstrations,
    tokenize_pairs,
    truncate,
)
from tether.data.preferences import PreferencePair
from tether.data.sft import Demonstration
from tether.data.templates import encode_prompt
from tether.errors import DataError
from tether.models.loading import load_tokenizer

# a chat template written with characters the tiny char-level vocabulary has
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    # without its chat template, so prompts tokenise as raw text and widths are countable by hand
    tok = load_tokenizer("tiny-llama")
    tok.chat_template = None
    return tok


def test_tiny_tokenizer_pads_with_eos(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the case the masks must survive


def test_preference_batch_layout_and_masks(tokenizer):
    eos = tokenizer.eos_token_id
    pairs = [PreferencePair("Hi", "yes", "no", margin=1.5), PreferencePair("Long prompt", "ok", "fine", weight=0.25)]
    items, dropped = tokenize_pairs(pairs, tokenizer, max_length=64)
    assert dropped == 0
    batch = collate_pairs(items, tokenizer.pad_token_id)
    # prompts: "Hi" (2 chars) and "Long prompt" (11) -> width 11, the short one left-padded by 9
    assert batch.chosen.prompt_ids.shape == (2, 11)
    assert batch.chosen.prompt_mask[0].tolist() == [False] * 9 + [True] * 2
    # responses: "yes"+EOS (4) and "ok"+EOS (3), right-padded; the EOS is real, the pad after it is not,
    # although both have the same id
    assert batch.chosen.response_ids[1].tolist()[2:] == [eos, eos]
    assert batch.chosen.response_mask.tolist() == [[True] * 4, [True] * 3 + [False]]
    assert batch.margin.tolist() == [1.5, 0.0] and batch.weight.tolist() == [1.0, 0.25]

    joint = batch.joint()  # 2N rows: chosen then rejected, response width = max of both (5: "fine"+EOS)
    assert joint.response_ids.shape == (4, 5)
    inputs = joint.inputs()
    last = joint.last_index(inputs)
    # the score is read at each response's EOS
    assert (inputs.input_ids.gather(1, last[:, None]).squeeze(1) == eos).all()
    assert last.tolist() == [11 + 3, 11 + 2, 11 + 2, 11 + 4]


def test_truncation_keeps_prompt_end_and_response_start():
    assert truncate([1, 2, 3, 4], [5, 6, 7], max_length=6, max_prompt_length=3) == ([2, 3, 4], [5, 6, 7])
    assert truncate([1, 2, 3, 4], [5, 6, 7], max_length=5, max_prompt_length=None) == ([1, 2, 3, 4], [5])
    assert truncate([1, 2, 3, 4, 5], [6], max_length=5, max_prompt_length=None) is None  # nothing left


def test_rows_truncated_to_nothing_are_dropped_and_counted(tokenizer):
    pairs = [
        PreferencePair("a" * 30, "yes", "no"),  # prompt alone fills max_length
        PreferencePair("b", "same start, then X", "same start, then Y"),  # identical once cut to 6 tokens
        PreferencePair("c", "yes", "no"),
    ]
    items, dropped = tokenize_pairs(pairs, tokenizer, max_length=7)
    assert dropped == 2 and len(items) == 1
    demos, dropped = tokenize_demonstrations([Demonstration("a" * 30, "x"), Demonstration("q", "abc")], tokenizer, 7)
    assert dropped == 1 and demos[0].response == tokenizer("abc", add_special_tokens=False)["input_ids"] + [1]


def test_conversational_prompt_needs_a_chat_template(tokenizer):
    chat = [{"role": "user", "content": "hi"}]
    with pytest.raises(DataError, match="chat template"):
        tokenize_pairs([PreferencePair(chat, "a", "b")], tokenizer, 32)


def test_chat_template_applied_through_the_tokenizer(tokenizer):
    chat_tok = load_tokenizer("tiny-llama")
    chat_tok.chat_template = TINY_CHAT_TEMPLATE
    chat = [{"role": "user", "content": "hi"}]
    ids = PromptEncoder(chat_tok)(chat)
    assert chat_tok.decode(ids) == "user: hi\nassistant: "
    assert ids == encode_prompt(chat_tok, chat)  # the same ids every other stage uses
    # a string prompt becomes one user turn; use_chat_template=False keeps the raw text
    assert chat_tok.decode(PromptEncoder(chat_tok)("hi")) == "user: hi\nassistant: "
    assert chat_tok.decode(PromptEncoder(chat_tok, use_chat_template=False)("hi")) == "hi"


def test_batch_to_device_keeps_dtypes(tokenizer):
    items, _ = tokenize_pairs([PreferencePair("p", "a", "b")], tokenizer, 16)
    batch = collate_pairs(items, tokenizer.pad_token_id).to("cpu")
    assert batch.chosen.prompt_mask.dtype == torch.bool and batch.chosen.response_ids.dtype == torch.long


def test_an_instruction_is_appended_to_the_text_or_the_last_user_message():
    from tether.data.templates import with_instruction

    assert with_instruction("Name a fruit. ", "Be brief.") == "Name a fruit. Be brief."
    assert with_instruction("Name a fruit.", None) == "Name a fruit."
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a fruit."}]
    asked = with_instruction(chat, "Be brief.")
    assert [m["content"] for m in asked] == ["S", "Hi.", "Hello.", "Name a fruit. Be brief."]
    assert chat[-1]["content"] == "Name a fruit."  # the caller's messages are not changed
