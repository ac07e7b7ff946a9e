"""A trained reward model's held-out accuracy by how clearly the simulated labeler preferred one
answer: the held-out pairs of a ``tether train-rm`` run, sorted by the taste's own score margin
|score(chosen) - score(rejected)| and cut into quartiles.

A labeler that ranks by a continuous score decides many pairs by a hair (two cut-off answers a
word apart in length), so the overall accuracy mixes pairs a reward model can learn with pairs
that are nearly coin flips of the labels themselves. Llama 2 reports its reward models' accuracy
the same way, by how much better the chosen answer was rated (Touvron et al. 2023, table 8).

    python benchmarks/rm_by_margin.py --run runs/demo-x/rm --score tether.demo.gold:gold_score
    python benchmarks/rm_by_margin.py --run runs/noisy/rm --score tether.demo.gold:gold_score --against-score

``--against-score`` judges the reward model against the taste's score instead of the labels: for a
noisy labeler (some verdicts flipped) that is how well it recovered the taste behind the noise.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from tether.config import load_config
from tether.data.batching import tokenize_pairs
from tether.data.preferences import without_ties
from tether.labeling.simulated import load_labeler
from tether.models.loading import load_tokenizer, resolve_device
from tether.models.scalar_head import ScalarHeadModel
from tether.train.reward_model import RewardModelConfig, score_all_pairs
from tether.train.supervised import load_preference_splits

QUARTILES = 4


def margin_quartiles(margins: list[float], correct: list[bool]) -> list[dict[str, float]]:
    """Pairs sorted by margin, cut into quartiles: each one's margin range, accuracy and size."""
    rows = sorted(zip(margins, correct))
    out = []
    for q in range(QUARTILES):
        part = rows[q * len(rows) // QUARTILES:(q + 1) * len(rows) // QUARTILES]
        if part:
            out.append({"margin_low": part[0][0], "margin_high": part[-1][0], "pairs": len(part),
                        "accuracy": sum(ok for _, ok in part) / len(part)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a tether train-rm run folder (config.yaml, reward_model/)")
    parser.add_argument("--score", required=True, help="module:function(prompt, response) -> float, the taste")
    parser.add_argument("--against-score", action="store_true",
                        help="right = agrees with the score's order (pairs of equal score left out), not the label's")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = parser.parse_args(argv)
    config = load_config(RewardModelConfig, f"{args.run}/config.yaml", [])
    _, held_out = load_preference_splits(config)
    if held_out is None:
        parser.error(f"{args.run} held out no prompts (eval_fraction 0 and no eval_data)")
    held_out = without_ties(held_out)
    score = load_labeler(args.score)
    tokenizer = load_tokenizer(f"{args.run}/reward_model")
    model = ScalarHeadModel.from_pretrained(f"{args.run}/reward_model", resolve_device(config.device))
    items, _ = tokenize_pairs(held_out.pairs, tokenizer, config.max_length, config.max_prompt_length,
                              config.chat_template)
    # tokenize_pairs keeps the order and drops only pairs truncated to nothing: none at these lengths
    if len(items) != len(held_out.pairs):
        sys.exit(f"{len(held_out.pairs) - len(items)} held-out pairs were dropped at tokenisation; raise max_length")
    with torch.no_grad():
        chosen, rejected = score_all_pairs(model, items, tokenizer.pad_token_id, config.batch_size * 2,
                                           config.precision)
    differences = [score(p.prompt, p.chosen) - score(p.prompt, p.rejected) for p in held_out.pairs]
    agrees = (chosen > rejected).tolist()
    if args.against_score:  # the taste's own order: the label may have been flipped
        kept = [i for i, d in enumerate(differences) if d != 0]
        differences = [differences[i] for i in kept]
        correct = [agrees[i] == (differences[j] > 0) for j, i in enumerate(kept)]
    else:
        correct = agrees
    margins = [abs(d) for d in differences]
    result = {"pairs": len(correct), "accuracy": sum(correct) / len(correct),
              "quartiles": margin_quartiles(margins, correct)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.run}: {result['pairs']} held-out pairs, accuracy {result['accuracy']:.1%}")
    for i, q in enumerate(result["quartiles"], start=1):
        print(f"  quartile {i}: margin {q['margin_low']:.3f}-{q['margin_high']:.3f}, "
              f"accuracy {q['accuracy']:.1%} ({q['pairs']} pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
