"""Synthetic metric traces of a healthy PPO run, for tests, docs and demos of the doctor and
the report. Failure modes are made by editing a healthy trace (``set_metric``), so each
test states exactly which signal it breaks.

The shapes follow what published PPO-RLHF runs show (Huang et al. 2024, TRL's example runs):
score rising and levelling off, KL to the reference growing to a few nats, entropy slowly
falling, approx_kl ≈ 0.01, clipfrac ≈ 0.1, value loss falling and explained variance rising
after a short warm-up.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, Callable

import yaml

PROMPTS = ["Explain why the sky is blue.", "Give me a tip for learning to cook.", "What is a prime number?", "How do plants grow?"]
_WORDS = "light scatters air molecules blue short wavelengths sun sky more than red because small particles".split()


def healthy_metrics(n: int = 60, seed: int = 0, critic: bool = True, eval_every: int = 10) -> list[dict[str, Any]]:
    """One metrics.jsonl row per iteration of a run that is going well."""
    rng = random.Random(seed)
    beta = 0.05
    rows = []
    for i in range(n):
        p = i / max(1, n - 1)
        kl3 = 0.1 + 4.0 * p + rng.gauss(0, 0.05)
        kl1 = kl3 + rng.gauss(0, 0.05)
        score = 1.5 * (1 - math.exp(-3 * p)) + rng.gauss(0, 0.05)
        policy_loss = rng.gauss(-0.01, 0.01)
        value_loss = 0.8 * math.exp(-2 * p) + 0.1 + rng.gauss(0, 0.02)
        row: dict[str, Any] = {
            "iteration": i,
            "objective/score_mean": score,
            "objective/score_std": 1.0 - 0.2 * p + rng.gauss(0, 0.02),
            "objective/kl_k1": kl1,
            "objective/kl_k3": kl3,
            "objective/kl_coef": beta,
            "objective/rlhf_reward": score - beta * kl1,
            "policy/entropy": 2.0 - 0.4 * p + rng.gauss(0, 0.02),
            "policy/clipfrac": 0.08 + rng.gauss(0, 0.01),
            "policy/approx_kl": 0.01 + abs(rng.gauss(0, 0.002)),
            "policy/ratio_mean": 1.0 + rng.gauss(0, 0.005),
            "policy/ratio_max": 1.6 + abs(rng.gauss(0, 0.2)),
            "losses/policy_loss": policy_loss,
            "losses/total_loss": policy_loss + 0.1 * value_loss,
            "rollout/response_length": 40 + 2 * p + rng.gauss(0, 1),
            "rollout/eos_fraction": min(1.0, 0.95 + rng.gauss(0, 0.01)),
            "rollout/tokens_per_s": 500 + rng.gauss(0, 20),
            "optim/grad_norm": 1.0 + rng.gauss(0, 0.1),
            "optim/lr": 1e-5 * (1 - 0.5 * p),
            "time/generate_s": 2.0 + rng.gauss(0, 0.1),
            "time/score_s": 0.3,
            "time/update_s": 1.5 + rng.gauss(0, 0.1),
            "time/iteration_s": 3.8 + rng.gauss(0, 0.1),
            "guard/skipped_updates": 0,
        }
        if critic:
            row.update(
                {
                    "losses/value_loss": value_loss,
                    "value/clipfrac": 0.05 + rng.gauss(0, 0.01),
                    "value/explained_variance": -0.2 + 0.9 * (1 - math.exp(-4 * p)) + rng.gauss(0, 0.03),
                    "value/mean": score * 0.8 + rng.gauss(0, 0.05),
                }
            )
        if eval_every and i % eval_every == 0:
            row["eval/score_mean"] = 1.4 * (1 - math.exp(-3 * p)) + rng.gauss(0, 0.03)
            row["eval/gold_score_mean"] = 0.8 * (1 - math.exp(-3 * p)) + rng.gauss(0, 0.03)
        rows.append(row)
    return rows


def unstable_metrics(n: int = 30, kl: float = 56.0, dip: float = 0.3) -> list[dict[str, Any]]:
    """A run thrown off by one update far outside the trust region (a learning rate 300x too
    high on the tiny config): at iteration 1 approx_kl is 6 nats/token and ρ reaches 59; from
    then on the KL to the reference sits at ``kl`` nats (the last window ``dip`` nats below the
    one before), the policy has collapsed onto one answer (entropy ≈ 0) and every response
    scores the same, so the score and its spread are flat at 0."""
    rows = []
    for i in range(1, n + 1):
        jump = i == 1
        level = 0.0 if jump else kl - (dip if i > n - min(10, n // 3) else 0.0)
        rows.append({
            "iteration": i,
            "objective/score_mean": 0.04 if jump else 0.0,
            "objective/score_std": 0.08 if jump else 0.0,
            "objective/kl_k3": level,
            "objective/kl_k1": level,
            "objective/kl_coef": 0.03,
            "policy/entropy": 4.3 if jump else 1e-6,
            "policy/approx_kl": 6.19 if jump else 0.0,
            "policy/clipfrac": 0.43 if jump else 0.0,
            "policy/ratio_mean": 1.0,
            "policy/ratio_max": 59.0 if jump else 1.0,
            "rollout/eos_fraction": 1.0,
        })  # fmt: skip
    return rows


def healthy_samples(n: int = 60, per_iteration: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """samples.jsonl rows: short varied responses that end with EOS."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        for k in range(per_iteration):
            words = rng.sample(_WORDS, k=10)
            response = " ".join(words).capitalize() + "."
            rows.append(
                {
                    "iteration": i,
                    "prompt": PROMPTS[(i + k) % len(PROMPTS)],
                    "response": response,
                    "score": round(1.5 * i / max(1, n - 1) + rng.gauss(0, 0.5), 4),
                    "kl": round(4.0 * i / max(1, n - 1) + abs(rng.gauss(0, 0.3)), 4),
                    "length": len(words) + 1,
                    "ended_with_eos": True,
                }
            )
    return rows


def set_metric(
    rows: list[dict[str, Any]], key: str, value: Callable[[int, Any], Any], iterations: range | None = None
) -> list[dict[str, Any]]:
    """A copy of ``rows`` with ``key`` replaced by ``value(iteration, old_value)`` on the given
    iterations (all by default). Returning ``...`` (Ellipsis) drops the key from that row."""
    out = []
    for row in rows:
        row = dict(row)
        i = row["iteration"]
        if iterations is None or i in iterations:
            new = value(i, row.get(key))
            if new is ...:
                row.pop(key, None)
            else:
                row[key] = new
        out.append(row)
    return out


def drop_metrics(rows: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """A copy without the keys starting with ``prefix`` (e.g. "value/" for critic-free runs)."""
    return [{k: v for k, v in row.items() if not k.startswith(prefix)} for row in rows]


def write_run(
    run_dir: str | Path,
    metrics: list[dict[str, Any]],
    samples: list[dict[str, Any]] = (),
    config: dict[str, Any] | None = None,
    eval_data: dict[str, Any] | None = None,
) -> Path:
    """Lay out a run directory the way the training loops do."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "metrics.jsonl").open("w", encoding="utf-8") as f:
        for row in metrics:
            f.write(json.dumps(row) + "\n")
    with (run_dir / "samples.jsonl").open("w", encoding="utf-8") as f:
        for row in samples:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    if eval_data is not None:
        (run_dir / "eval.json").write_text(json.dumps(eval_data, indent=2), encoding="utf-8")
    return run_dir
