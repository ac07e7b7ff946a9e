"""Shared pieces of the benchmarks: the fixed prompt list, the machine's matmul rate, the FLOP
count, the scalar-head reward model folder, and peak RSS.

FLOP convention (documented in docs/performance.md):
  forward  = 2 * N * tokens      backward = 4 * N * tokens      (so a training step = 6 * N * tokens)
where N is split in two parts, because tether runs them on different positions:
  N_body = parameters of the transformer body (embedding table excluded: a lookup is not a matmul)
  N_head = the LM head (576 x 49,152 for SmolLM2; tied to the embedding, counted once, here)
The body runs on every position of the trimmed (prompt | response) batch, padding included
(it is computed); the LM head runs on the R response positions only (tether's policy_forward),
and on one position per decode step in generate(). Attention's L^2 term is ignored (L <= ~90
here: under 2% of the body's FLOPs). Scalar heads (576 x 1) are ignored.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# Short user prompts; SmolLM2's chat template adds a ~30-token system prompt, so each prompt is
# ~36-42 tokens in all.
PROMPTS = [
    "Name a fruit.",
    "Say hello.",
    "What is two plus two?",
    "Describe the sky.",
    "Give me a color.",
    "Tell a short joke.",
    "Name a planet.",
    "What do cats eat?",
    "Write one word.",
    "Suggest a pet name.",
    "What is rain?",
    "Count to three.",
    "Name a tree.",
    "Describe a river.",
    "Say something kind.",
    "Name an ocean.",
]


def matmul_rate(dtype_name: str, n: int = 2048, seconds: float = 1.5, shape: tuple[int, int, int] | None = None,
                clock=time.perf_counter) -> float:
    """FLOP/s of torch.matmul(n x n, n x n) in a loop on this machine, now (best of repeats);
    with ``shape`` = (M, K, N), of an M x K by K x N product instead. Products under ~2 GFLOP
    are timed several to a measurement, so the timer's resolution does not count. ``clock``:
    time.process_time gives FLOPs per CPU second (one thread: the rate while scheduled)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    m, k, n = shape or (n, n, n)
    a = torch.randn(m, k, dtype=dtype)
    b = torch.randn(k, n, dtype=dtype)
    calls = max(1, int(2e9 / (2 * m * k * n)))
    torch.matmul(a, b)  # warm
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = clock()
        for _ in range(calls):
            torch.matmul(a, b)
        dt = clock() - t0
        best = max(best, 2 * m * k * n * calls / dt)
    return best


def smollm2_prompt_batch(rows: int = 8):
    """SmolLM2 (torch seed 0 first), its tokenizer, and the first ``rows`` of PROMPTS encoded as
    the PPO loop encodes them (chat template on) and left-padded as rollouts are:
    (tokenizer, model, prompt_token_ids, prompt_ids (rows, P), prompt_mask (rows, P))."""
    import torch

    from tether.data.templates import encode_prompt
    from tether.models.loading import load_causal_lm, load_tokenizer
    from tether.rollout.generation import left_pad

    torch.manual_seed(0)
    tokenizer, model = load_tokenizer("smollm2"), load_causal_lm("smollm2")
    prompt_token_ids = [encode_prompt(tokenizer, p) for p in PROMPTS[:rows]]
    prompt_ids, prompt_mask = left_pad(prompt_token_ids, tokenizer.pad_token_id, "cpu")
    return tokenizer, model, prompt_token_ids, prompt_ids, prompt_mask


def param_counts(causal_lm) -> tuple[int, int]:
    """(N_body, N_head) of a Hugging Face causal LM (see the module docstring)."""
    head = causal_lm.get_output_embeddings()
    emb = causal_lm.get_input_embeddings()
    n_head = head.weight.numel()
    seen = {id(p) for p in (head.weight, emb.weight)}
    n_body = sum(p.numel() for p in causal_lm.parameters() if id(p) not in seen)
    return n_body, n_head


def iteration_flops(n_body: int, n_head: int, B: int, P: int, R: int, epochs: int, separate_critic: bool,
                    reward_model: bool = True, shared_prefix: int = 0) -> dict[str, float]:
    """Model FLOPs of one PPO iteration as tether computes it (B rows, prompt width P,
    response width R, a prompt prefix of K = ``shared_prefix`` tokens run once per forward
    instead of B times; all models the same size, as in these benchmarks). Only FLOPs actually
    computed count: the K x (B - 1) positions sharing skips are not credited."""
    L = P + R
    body_fwd = 2 * n_body * (B * L - (B - 1) * shared_prefix)
    head_fwd = 2 * n_head * B * R
    generate = 2 * n_body * B * L + head_fwd  # prefill + decode steps (no sharing); head on one position per step
    score = 2 * (body_fwd + head_fwd)  # policy (old log-probs) + reference
    if separate_critic:
        score += body_fwd
    if reward_model:
        score += body_fwd
    per_epoch = 3 * (body_fwd + head_fwd) + (3 * body_fwd if separate_critic else 0)
    update = epochs * per_epoch
    return {"generate": generate, "score": score, "update": update, "total": generate + score + update}


def make_reward_model(folder: Path, seed: int = 0) -> Path:
    """A SmolLM2 with a fresh scalar head, saved with save_pretrained (no hub)."""
    import torch

    from tether.models.scalar_head import ScalarHeadModel

    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(seed)
    rm = ScalarHeadModel.from_pretrained("smollm2", fresh_head=True)
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(rm, "save_pretrained"):
        rm.save_pretrained(folder)
    else:
        rm.hf_model.save_pretrained(folder)
    from tether.models.loading import load_tokenizer

    load_tokenizer("smollm2").save_pretrained(folder)
    return folder


def run_measured_child(cmd: list[str], log_path: Path, env: dict | None = None) -> tuple[float, float]:
    """Run ``cmd`` as a fresh process, its output to ``log_path``; returns (peak RSS MiB of that
    child alone, from ``os.wait4``'s rusage, model loading included; wall seconds). A failing
    child ends the benchmark with the tail of its log."""
    t0 = time.perf_counter()
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"child failed (rc {code}): {' '.join(cmd)}\n{Path(log_path).read_text()[-3000:]}")
    return usage.ru_maxrss / 1024, wall


class StepStamps:
    """Wall and CPU timestamps at the start of training and after every optimizer step; as a
    Hugging Face ``TrainerCallback`` (``callback()``) it stamps TRL's trainers
    (``on_step_end`` runs once per optimizer step, after the update)."""

    def __init__(self):
        self.stamps: list[float] = []
        self.cpu: list[float] = []

    def stamp(self, *args, **kwargs) -> None:
        self.stamps.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def callback(self, at_train_begin: bool = True):
        from transformers import TrainerCallback

        hooks = {"on_step_end": self.stamp}
        if at_train_begin:
            hooks["on_train_begin"] = self.stamp
        return type("StepStampCallback", (TrainerCallback,), {k: (lambda f: lambda _self, *a, **kw: f())(v)
                                                              for k, v in hooks.items()})()

    def intervals(self) -> tuple[list[float], list[float]]:
        """(wall seconds, CPU seconds) between successive stamps."""
        return ([b - a for a, b in zip(self.stamps, self.stamps[1:])],
                [b - a for a, b in zip(self.cpu, self.cpu[1:])])


def peak_rss_mb() -> float:
    """Peak RSS of this process in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
