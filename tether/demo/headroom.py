"""How far the SFT policy could go without RL: best-of-N on the held-out prompts.

For each held-out prompt, N responses sampled from the SFT policy with the training sampling
settings; the *headroom* is the mean over prompts of the best gold score among them, what
reranking SFT samples by the gold taste itself could reach (Gao et al. 2022 compare RL against
best-of-N the same way). ``headroom_closed`` = (PPO gold − SFT gold) / (best-of-N − SFT gold):
the share of that gap the PPO policy closed, per taste, on one scale.

The samples depend on the SFT policy and the prompts only, not on the taste: they are written
to a JSON file that later runs (``benchmarks/tastes.py``, one per taste) reuse.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def sample_best_of(model: str, prompts: list[str], n: int, max_new_tokens: int, temperature: float, seed: int,
                   batch_size: int, device: str, precision: str, path: Path) -> Path:
    """N SFT samples per prompt -> ``path`` ({"prompts": [...], "responses": [[...] x N]})."""
    from tether.rollout.sampling import sample_responses

    responses = sample_responses(model, prompts, k=n, max_new_tokens=max_new_tokens, temperature=temperature,
                                 seed=seed, batch_size=batch_size, device=device, precision=precision)
    path.write_text(json.dumps({"prompts": prompts, "responses": responses}) + "\n", encoding="utf-8")
    return path


def headroom(path: Path, gold: Callable[[str, str], float]) -> dict[str, float]:
    """Mean over prompts of the best gold score among the samples (``best_of_n``) and of their
    mean (``sft_mean``: a many-sample estimate of the SFT policy's gold score)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    best, mean = [], []
    for prompt, responses in zip(data["prompts"], data["responses"]):
        scores = [float(gold(prompt, r)) for r in responses]
        best.append(max(scores))
        mean.append(sum(scores) / len(scores))
    return {"n": len(data["responses"][0]), "best_of_n": sum(best) / len(best), "sft_mean": sum(mean) / len(mean)}


def headroom_closed(sft_gold: float, ppo_gold: float, best_of_n: float) -> float:
    """(PPO − SFT) / (best-of-N − SFT); NaN when best-of-N is no better than SFT."""
    gap = best_of_n - sft_gold
    return (ppo_gold - sft_gold) / gap if gap > 1e-9 else float("nan")
