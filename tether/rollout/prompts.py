"""A stream of tokenised prompts for the online loop: tokenised once, reshuffled each pass."""

from __future__ import annotations

import random

from tether.data.templates import encode_prompt
from tether.errors import TetherError

TINY_WORDS = ["cat", "sun", "tree", "blue", "fish", "moon", "rain", "bird", "song", "road", "star", "sand"]


def builtin_prompts(name: str) -> list:
    """``builtin:tiny``: short word prompts for the tiny model; ``builtin:demo`` (= demo-train)
    and ``builtin:demo-eval``: the prompt set shipped with tether (written for this project)."""
    if name == "tiny":
        rng = random.Random(1234)
        return [" ".join(rng.sample(TINY_WORDS, 3)) + ":" for _ in range(256)]
    if name in ("demo", "demo-train", "demo-eval"):
        from tether.data.prompts import load_builtin_prompts

        return load_builtin_prompts("demo-train" if name == "demo" else name)
    raise TetherError(f"unknown builtin prompt set 'builtin:{name}' (known: builtin:tiny, builtin:demo)")


def resolve_prompts(spec: str) -> list:
    if spec.startswith("builtin:"):
        return builtin_prompts(spec.split(":", 1)[1])
    from tether.data.prompts import load_prompts

    prompts = load_prompts(spec)
    if not prompts:
        raise TetherError(f"{spec}: no prompts")
    return prompts


class PromptStream:
    """Yields batches of (prompt, token ids), each prompt repeated ``group_size`` times in
    consecutive rows. Order is reshuffled every pass with its own seeded RNG, so the data
    position is part of a run's state (resume continues the same order)."""

    def __init__(self, prompts: list, tokenizer, use_chat_template="auto", max_prompt_tokens: int = 256, seed: int = 0):
        self.prompts = prompts
        self.token_ids = [encode_prompt(tokenizer, p, use_chat_template)[-max_prompt_tokens:] for p in prompts]
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.position = 0
        self.passes = 0

    def next_batch(self, batch_size: int, group_size: int = 1) -> tuple[list, list[list[int]]]:
        prompts, ids = [], []
        for _ in range(batch_size):
            if self.position >= len(self.order):
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
                self.position = 0
                self.passes += 1
            index = self.order[self.position]
            self.position += 1
            prompts.extend([self.prompts[index]] * group_size)
            ids.extend([self.token_ids[index]] * group_size)
        return prompts, ids

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "order": self.order, "position": self.position, "passes": self.passes}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.order, self.position, self.passes = list(state["order"]), state["position"], state["passes"]
