"""Turning prompts and responses into token ids, the same way for every stage (SFT, reward
model, rollouts, DPO), so a response scored by the reward model is tokenised exactly as the
policy produced it.

A prompt is a string or a list of chat messages ``{"role", "content"}``. With a chat template
(``use_chat_template`` True, or "auto" and the tokenizer has one) it is rendered with the
generation prompt; otherwise its text is tokenised as is. A response is its text followed by
EOS: the policy learns to stop, and the reward model reads the score at that EOS.
"""

from __future__ import annotations

from typing import Any, Literal, Union

Prompt = Union[str, list[dict[str, Any]]]
ChatTemplateMode = Union[bool, Literal["auto"]]


def wants_chat_template(tokenizer, mode: ChatTemplateMode) -> bool:
    if mode == "auto":
        return getattr(tokenizer, "chat_template", None) is not None
    return bool(mode)


def encode_prompt(tokenizer, prompt: Prompt, use_chat_template: ChatTemplateMode = "auto") -> list[int]:
    """Token ids of a prompt, ending where the response begins."""
    if wants_chat_template(tokenizer, use_chat_template):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, str):
        raise ValueError("a conversational prompt needs a tokenizer with a chat template")
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_response(tokenizer, response: str, add_eos: bool = True) -> list[int]:
    """Token ids of a response's text, with EOS appended (the token that ends the turn)."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if add_eos:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def with_instruction(prompt: Prompt, instruction: str | None) -> Prompt:
    """The prompt with ``instruction`` appended to its text, or to its last user message: an
    instruction every prompt of a set shares (e.g. the demo's request for brief answers)."""
    if not instruction:
        return prompt
    if isinstance(prompt, str):
        return f"{prompt.rstrip()} {instruction}"
    messages = [dict(m) for m in prompt]
    for message in reversed(messages):
        if message.get("role") == "user":
            message["content"] = f"{str(message.get('content', '')).rstrip()} {instruction}"
            return messages
    return messages + [{"role": "user", "content": instruction}]


def prompt_text(prompt: Prompt) -> str:
    """A display/search string for a prompt: its text, or its last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else (prompt[-1].get("content", "") if prompt else "")
