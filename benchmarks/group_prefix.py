"""What running each GRPO group's prompt once (tether/data/sequences.py, ``PromptGroups``) saves
on SmolLM2-135M-Instruct, against no sharing and against the batch-wide prefix alone.

The batch: ``--prompts`` chat-templated prompts of ``common.PROMPTS`` x ``--group`` responses
of ``--response-tokens`` tokens (random ids: the cost does not depend on them), all rows in one
micro-batch. Three layouts of the same rows, alternating inside one process (ABC, CBA, ...: the
machine drifts between runs, not between neighbours):

* ``none``: every row whole;
* ``template``: the prefix common to every row (the chat template's system prompt and user
  header) once, as a batch of one; what tether did before groups were recognised;
* ``groups``: each distinct prompt once (a batch of ``--prompts``), its cache lent to its rows.

Timed per layout and round: the scoring forward (no grad, entropy on, as ``score_rollout``'s
policy pass) and the update's forward + backward (``policy_forward`` then ``backward``), wall
and CPU seconds; then generation (``generate_rollout``) with each prompt prefilled once
against every row prefilled. Medians over ``--rounds`` after one untimed round.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/group_prefix.py --rounds 2 --response-tokens 16 \
        --generate-tokens 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROMPTS  # noqa: E402

LAYOUTS = ("none", "template", "groups")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=2, help="distinct prompts in the batch")
    p.add_argument("--group", type=int, default=8, help="G: responses per prompt")
    p.add_argument("--response-tokens", type=int, default=32)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 only on a CPU with native bf16 (AVX512-BF16/AMX): elsewhere it is emulated")
    p.add_argument("--rounds", type=int, default=4, help="timed rounds (after one untimed)")
    p.add_argument("--generate-tokens", type=int, default=16, help="tokens per row in the generation A/B (0: skip)")
    return p.parse_args(argv)


def layouts(prompt_ids, prompt_mask, response_ids, response_mask) -> dict:
    """The three SequenceInputs of one batch (see the module docstring)."""
    import tether.data.sequences as sequences

    inputs = {
        "none": sequences.build_inputs(prompt_ids, prompt_mask, response_ids, response_mask, share_prefix=False),
        "groups": sequences.build_inputs(prompt_ids, prompt_mask, response_ids, response_mask),
    }
    grouping = sequences.prompt_groups
    sequences.prompt_groups = lambda ids, mask: None  # the batch-wide prefix alone
    try:
        inputs["template"] = sequences.build_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    finally:
        sequences.prompt_groups = grouping
    assert inputs["groups"].prompt_groups is not None and inputs["template"].shared_prefix > 0
    return inputs


def timed(fn) -> tuple[float, float, object]:
    """(wall s, CPU s of this process, result) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - w0, time.process_time() - c0, result


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from tether.data.sequences import left_pad
    from tether.data.templates import encode_prompt
    from tether.models.forward import policy_forward
    from tether.models.loading import load_causal_lm, load_tokenizer
    from tether.rollout.generation import SamplingSettings, generate_rollout
    from tether.utils.precision import autocast

    torch.manual_seed(0)
    tokenizer, model = load_tokenizer("smollm2"), load_causal_lm("smollm2")
    device = torch.device("cpu")
    texts = [p for p in PROMPTS[: args.prompts] for _ in range(args.group)]
    token_lists = [encode_prompt(tokenizer, p) for p in texts]
    prompt_ids, prompt_mask = left_pad(token_lists, tokenizer.pad_token_id, device)
    rows, width = prompt_ids.shape
    response_ids = torch.randint(0, model.config.vocab_size, (rows, args.response_tokens))
    response_mask = torch.ones_like(response_ids)
    inputs = layouts(prompt_ids, prompt_mask, response_ids, response_mask)

    def score(batch):
        with torch.no_grad(), autocast(device, args.precision):
            return policy_forward(model, batch, response_ids, with_entropy=True).logprobs

    def update(batch):
        with autocast(device, args.precision):
            out = policy_forward(model, batch, response_ids)
        out.logprobs.sum().backward()
        model.zero_grad(set_to_none=True)

    model.train()
    times = {name: {"score": [], "update": [], "score_cpu": [], "update_cpu": []} for name in LAYOUTS}
    logprobs = {}
    for rnd in range(args.rounds + 1):
        for name in (LAYOUTS if rnd % 2 == 0 else LAYOUTS[::-1]):
            s_wall, s_cpu, logprobs[name] = timed(lambda: score(inputs[name]))
            u_wall, u_cpu, _ = timed(lambda: update(inputs[name]))
            if rnd:
                for key, value in (("score", s_wall), ("update", u_wall), ("score_cpu", s_cpu), ("update_cpu", u_cpu)):
                    times[name][key].append(value)
        print(f"round {rnd}{' (untimed)' if not rnd else ''}: " + ", ".join(
            f"{n} {times[n]['score'][-1] + times[n]['update'][-1]:.2f} s" if rnd else n for n in LAYOUTS), flush=True)
    gaps = {n: (logprobs[n] - logprobs["none"]).abs().max().item() for n in LAYOUTS}
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    print(f"SmolLM2-135M, {args.precision}, {torch.get_num_threads()} thread(s): {args.prompts} prompts x G = "
          f"{args.group} = {rows} rows, prompt width {width} ({prompt_mask.sum(1).min().item()}-"
          f"{prompt_mask.sum(1).max().item()} tokens, {inputs['template'].shared_prefix} common to all), "
          f"{args.response_tokens} response tokens; median of {args.rounds} rounds")
    base = med["none"]["score"] + med["none"]["update"]
    for name in LAYOUTS:
        m = med[name]
        total, cpu = m["score"] + m["update"], m["score_cpu"] + m["update_cpu"]
        print(f"{name:>8}: score {m['score']:.2f} s, update fwd+bwd {m['update']:.2f} s, sum {total:.2f} s "
              f"({total / base:.3f}x; CPU {cpu:.2f} s), max |logprob - none| {gaps[name]:.1e}")
    if args.generate_tokens:
        generation(args, model, tokenizer, texts, token_lists, generate_rollout, SamplingSettings, autocast)


def generation(args, model, tokenizer, texts, token_lists, generate_rollout, SamplingSettings, autocast) -> None:
    """Alternating generate_rollout with each prompt prefilled once and with every row prefilled."""
    import torch

    settings = SamplingSettings(args.generate_tokens, min_new_tokens=args.generate_tokens)
    times = {True: [], False: []}
    same = True
    for rnd in range(args.rounds + 1):
        outs = {}
        for share in ((True, False) if rnd % 2 == 0 else (False, True)):
            torch.manual_seed(rnd)
            with autocast(torch.device("cpu"), args.precision):
                wall, _, outs[share] = timed(lambda: generate_rollout(
                    model, tokenizer, texts, token_lists, settings, args.group, share_prompts=share))
            if rnd:
                times[share].append(wall)
        same &= torch.equal(outs[True].response_ids, outs[False].response_ids)
    shared, plain = statistics.median(times[True]), statistics.median(times[False])
    print(f"generate {args.generate_tokens} tokens x {len(texts)} rows: prompts prefilled once {shared:.2f} s, "
          f"every row {plain:.2f} s ({shared / plain:.3f}x); same tokens in every round: {same}")


if __name__ == "__main__":
    main()
