"""Rule-based rewards shipped for examples and tests: ``fn(prompts, responses) -> list[float]``.
Pass one as ``reward_function: tether.rollout.rules:vowel_fraction``."""

from __future__ import annotations

VOWELS = set("aeiouAEIOU")


def vowel_fraction(prompts: list[str], responses: list[str]) -> list[float]:
    """Fraction of a response's characters that are vowels (empty response: 0). A random
    policy over the tiny model's ~80 characters scores ≈ 0.06; a policy that learned scores ≫."""
    return [sum(c in VOWELS for c in r) / len(r) if r else 0.0 for r in responses]


def vowels_in_moderation(prompt: str, response: str) -> float:
    """A gold score ``(prompt, response) -> float`` that agrees with ``vowel_fraction`` only up
    to a point: vowels help up to a third of the characters and hurt beyond it (pronounceable
    text, not "aaaa"). Trained on vowel_fraction with β = 0, the policy climbs the proxy past
    that point while this falls: an over-optimisation run for ``tether doctor`` to catch."""
    return -abs(vowel_fraction([prompt], [response])[0] - 1 / 3)


def length_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Pays for length: the textbook reward-hacking case for `tether doctor` to catch."""
    return [len(r) / 10.0 for r in responses]


def nan_on_first_call(prompts: list[str], responses: list[str]) -> list[float]:
    """vowel_fraction, except the first batch scores NaN: exercises the update guard."""
    nan_on_first_call.calls = getattr(nan_on_first_call, "calls", 0) + 1
    if nan_on_first_call.calls == 1:
        return [float("nan")] * len(responses)
    return vowel_fraction(prompts, responses)


FRIENDLY_WORDS = ("sure", "happy", "glad", "great", "hope", "thanks", "thank", "please", "welcome", "!")


def concise_and_friendly(prompts: list[str], responses: list[str]) -> list[float]:
    """A simple rule for real text: friendly words help, rambling hurts, an empty answer is
    worst. Scores are roughly in [-1, 1]. Used by configs/ppo-smollm2.yaml before a reward
    model is trained; `tether demo` replaces it with a learned reward model."""
    scores = []
    for response in responses:
        words = response.split()
        if not words:
            scores.append(-1.0)
            continue
        lowered = response.lower()
        friendly = min(sum(lowered.count(w) for w in FRIENDLY_WORDS), 3) / 3.0
        length_penalty = min(max(len(words) - 40, 0) / 40.0, 1.0)
        scores.append(friendly - length_penalty)
    return scores
