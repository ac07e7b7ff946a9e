"""Rollout speed at the demo's shapes: generated tokens per second of SmolLM2-135M-Instruct
sampling answers to the demo's prompts (``tether.demo.pipeline.demo_prompts``: the instruction
"Keep the answer under 30 words." appended, chat template on), ``--max-new-tokens`` each.

Variants, taking turns inside one process (A B C ..., then ... C B A: the machine drifts between
rounds, not between neighbours), each after one untimed call:

* ``hf bN``: tether's ``generate_rollout`` as the demo runs it, N rows per ``generate`` call
  (``sample_responses``' ``batch_size``, the demo's ``sample_batch_size``; PPO's rollout batch);
* ``static bN``: the same with transformers' static KV cache (``cache_implementation="static"``,
  sized once for the longest prompt plus the new tokens): preallocated, no ``torch.cat`` per step;
* ``compile bN``: the static cache plus transformers' own ``torch.compile`` of the decoding
  step (``CompileConfig``; the prefill stays eager); the compile (its first call) timed apart;
* ``bf16 bN``: under bf16 autocast (``precision: bf16``; emulated on a CPU without AVX512-BF16).

Every variant of a round starts from the same seed, so a variant that computes the same
distribution at the same batch draws the same tokens up to float rounding: the table says how
many rows came out identical to ``hf`` at that batch. Different batches draw their uniforms in
a different order: same distribution, other samples (the mean length and EOS share are there to
compare).

With ``--vllm-python``, a child process in vLLM's environment (``make test-vllm``'s .venv-vllm)
builds tether's ``VLLMEngine`` (the PPO loop's ``rollout_engine: vllm``; its start-up timed
apart) and alternates it with ``hf bN`` at ``--at-batch`` inside that process, so its ratio is
read against an HF row measured beside it.

Tokens counted: each response's tokens up to and including its first EOS (``response_mask``),
over wall seconds (and over this process's CPU seconds: on a shared machine the steadier one).

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rollout_speed.py --prompts 64 --rounds 2 \\
        --batches 8,16,32,64 --at-batch 64 --variants static
    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rollout_speed.py --prompts 16 --rounds 2 \\
        --batches 16 --at-batch 16 --variants static,compile,bf16
    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rollout_speed.py --prompts 64 --rounds 2 \\
        --batches '' --variants '' --at-batch 16 --vllm-python .venv-vllm/bin/python
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, run_measured_child  # noqa: E402

VARIANTS = ("static", "compile", "bf16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prompts", type=int, default=64, help="rows: the first N demo prompts, one answer each")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.8, help="the demo's labeled samples (PPO: 0.7)")
    p.add_argument("--batches", default="8,16,32,64", help="rows per generate call of the hf rows")
    p.add_argument("--at-batch", type=int, default=32, help="rows per call of the other variants (and vLLM's)")
    p.add_argument("--variants", default="static,bf16", help=f"comma-separated, of {', '.join(VARIANTS)}; '' for none")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds (after one untimed call per variant)")
    p.add_argument("--vllm-python", help="vLLM's interpreter (.venv-vllm/bin/python): add the vLLM engine rows")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--vllm-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variant(s) {', '.join(sorted(unknown))}: choose from {', '.join(VARIANTS)}")
    return args


def demo_rows(tokenizer, count: int) -> tuple[list, list[list[int]]]:
    """The first ``count`` training prompts of the demo as it samples them (instruction appended,
    tokenised as ``sample_responses`` does), cycled if the set is shorter."""
    from tether.demo.config import DemoConfig
    from tether.demo.pipeline import demo_prompts
    from tether.rollout.prompts import PromptStream

    prompts = demo_prompts(DemoConfig())[0]
    prompts = [prompts[i % len(prompts)] for i in range(count)]
    return prompts, PromptStream(prompts, tokenizer).token_ids


@contextmanager
def generation_fields(model, fields: dict):
    """``model.generate`` with ``fields`` set on the GenerationConfig tether passes it (the
    variants differ from ``generate_rollout`` in these fields only)."""
    if not fields:
        yield
        return
    plain = model.generate

    def generate(**kwargs):
        config = copy.deepcopy(kwargs["generation_config"])
        config.update(**fields)
        return plain(**{**kwargs, "generation_config": config})

    model.generate = generate
    try:
        yield
    finally:
        del model.generate  # the instance attribute: the class's method again


def variant_fields(name: str, cache_len: int) -> dict:
    """GenerationConfig fields of a variant. The static cache is sized once for the longest
    prompt plus the new tokens (``max_cache_len``), so every call reuses one shape and the
    compiled step does not recompile per prompt width."""
    if name not in ("static", "compile"):
        return {}
    fields = {"cache_implementation": "static", "max_cache_len": cache_len}
    if name == "compile":
        from transformers import CompileConfig

        # transformers compiles the decoding step itself on CUDA-like devices only; elsewhere
        # when asked (_compile_all_devices, transformers/generation/utils.py
        # _valid_auto_compile_criteria). "default": no CUDA graphs on a CPU.
        compile_config = CompileConfig(mode="default")
        compile_config._compile_all_devices = True
        fields["compile_config"] = compile_config
    return fields


class Sampler:
    """One variant: the rows in chunks of ``batch`` through ``generate_rollout`` (or a vLLM
    engine), returning (wall s, CPU s, per-row token lists, EOS flags)."""

    def __init__(self, label: str, batch: int, run_chunk, warm_rows: int = 8):
        self.label, self.batch, self.run_chunk = label, batch, run_chunk
        self.warm_rows = min(warm_rows, batch)  # rows of the untimed first call

    def __call__(self, prompts: list, token_ids: list[list[int]], settings):
        rows, ended = [], []
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(prompts), self.batch):
            chunk = slice(start, start + self.batch)
            rollout = self.run_chunk(prompts[chunk], token_ids[chunk], settings)
            rows.extend(ids[mask].tolist() for ids, mask in zip(rollout.response_ids, rollout.response_mask.bool()))
            ended.extend(rollout.ended_with_eos.tolist())
        return time.perf_counter() - wall, time.process_time() - cpu, rows, ended


def hf_sampler(model, tokenizer, label: str, batch: int, fields: dict, precision: str) -> Sampler:
    import torch

    from tether.rollout.generation import generate_rollout
    from tether.utils.precision import autocast

    def run_chunk(prompts, token_ids, settings):
        with generation_fields(model, fields), autocast(torch.device("cpu"), precision):
            return generate_rollout(model, tokenizer, prompts, token_ids, settings)

    # a compiled step recompiles for a new batch shape: warm it at the batch it is timed at
    return Sampler(label, batch, run_chunk, warm_rows=batch if "compile_config" in fields else 8)


def build_samplers(args, model, tokenizer, cache_len: int) -> list[Sampler]:
    samplers = [hf_sampler(model, tokenizer, f"hf b{b}", b, {}, "fp32") for b in args.batches]
    for name in args.variants:
        precision = "bf16" if name == "bf16" else "fp32"
        samplers.append(hf_sampler(model, tokenizer, f"{name} b{args.at_batch}", args.at_batch,
                                   variant_fields(name, cache_len), precision))
    return samplers


def measure(samplers: list[Sampler], prompts: list, token_ids: list[list[int]], settings, rounds: int) -> dict:
    """Alternating rounds; per sampler: first-call seconds (warm-up, the compile included),
    then per timed round wall s, CPU s, tokens, and the rows it drew."""
    import dataclasses

    import torch

    results = {s.label: {"first_call_s": 0.0, "wall": [], "cpu": [], "tokens": [], "rows": [], "ended": []}
               for s in samplers}
    # one untimed call each, of a few tokens (the static cache is sized by max_cache_len, so the
    # compiled step, warmed at its full batch, has the shapes of the timed calls)
    warm_settings = dataclasses.replace(settings, max_new_tokens=min(4, settings.max_new_tokens))
    for sampler in samplers:
        start = time.perf_counter()
        torch.manual_seed(0)
        sampler(prompts[: sampler.warm_rows], token_ids[: sampler.warm_rows], warm_settings)
        results[sampler.label]["first_call_s"] = time.perf_counter() - start
        log(f"warm-up {sampler.label}: {results[sampler.label]['first_call_s']:.1f} s")
    for rnd in range(rounds):
        for sampler in (samplers if rnd % 2 == 0 else samplers[::-1]):
            torch.manual_seed(1000 + rnd)  # every variant of a round draws from the same stream
            wall, cpu, rows, ended = sampler(prompts, token_ids, settings)
            entry = results[sampler.label]
            entry["wall"].append(wall)
            entry["cpu"].append(cpu)
            entry["tokens"].append(sum(len(r) for r in rows))
            entry["rows"].append(rows)
            entry["ended"].append(ended)
            log(f"round {rnd + 1} {sampler.label}: {wall:.1f} s, {entry['tokens'][-1]} tokens, load {load()}")
    return results


def summarise(results: dict) -> list[dict]:
    """Per sampler: median tokens/s (wall, CPU), mean length, EOS share, and how many rows drew
    the same tokens as ``hf`` at the same batch in the same round."""
    table = []
    for label, entry in results.items():
        batch = label.split(" b")[-1]
        same_as = results.get(f"hf b{batch}")
        rows = sum(len(r) for r in entry["rows"])
        identical = None
        if same_as is not None and same_as is not entry and same_as["rows"]:
            pairs = zip(entry["rows"], same_as["rows"])  # round by round
            identical = sum(a == b for mine, theirs in pairs for a, b in zip(mine, theirs))
        table.append({
            "variant": label,
            "tokens_per_s": statistics.median(t / w for t, w in zip(entry["tokens"], entry["wall"])),
            # vLLM's engine computes in its own process: this process's CPU seconds do not count it
            "tokens_per_cpu_s": None if label.startswith("vllm") else statistics.median(
                t / c for t, c in zip(entry["tokens"], entry["cpu"])),
            "rounds_s": entry["wall"],
            "rounds_cpu_s": entry["cpu"],
            "rounds_tokens": entry["tokens"],
            "first_call_s": entry["first_call_s"],
            "mean_length": sum(entry["tokens"]) / rows if rows else 0.0,
            "eos_share": sum(sum(e) for e in entry["ended"]) / rows if rows else 0.0,
            "rows_identical_to_hf": identical,
            "rows": rows,
        })
    return table


def print_table(table: list[dict], baseline: str, header: str) -> None:
    base = next((r["tokens_per_s"] for r in table if r["variant"] == baseline), None)
    print(header)
    print(f"{'variant':>12} {'tokens/s':>9} {'vs ' + baseline:>9} {'tok/CPU-s':>9} {'rounds (s)':>16} "
          f"{'1st call':>8} {'length':>6} {'EOS':>5}  same tokens as hf")
    for r in table:
        same = "" if r["rows_identical_to_hf"] is None else f"{r['rows_identical_to_hf']}/{r['rows']} rows"
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        cpu = "-" if r["tokens_per_cpu_s"] is None else f"{r['tokens_per_cpu_s']:.1f}"
        print(f"{r['variant']:>12} {r['tokens_per_s']:9.1f} {ratio:>9} {cpu:>9} "
              f"{', '.join(f'{s:.1f}' for s in r['rounds_s']):>16} {r['first_call_s']:7.1f}s {r['mean_length']:6.1f} "
              f"{r['eos_share']:5.0%}  {same}")


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def setup(args):
    import torch

    from tether.models.loading import load_causal_lm, load_tokenizer
    from tether.rollout.generation import SamplingSettings

    torch.manual_seed(0)
    tokenizer, model = load_tokenizer(args.model), load_causal_lm(args.model, "cpu")
    prompts, token_ids = demo_rows(tokenizer, args.prompts)
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    return tokenizer, model, prompts, token_ids, settings


def vllm_sampler(engine, label: str, batch: int) -> Sampler:
    return Sampler(label, batch, lambda prompts, token_ids, settings: engine.generate(prompts, token_ids, settings))


def vllm_child(args) -> None:
    """In vLLM's environment: tether's VLLMEngine against ``hf`` at ``--at-batch`` rows per call
    and at every row in one call, alternating."""
    import torch

    from tether.rollout.vllm_engine import VLLMEngine

    tokenizer, model, prompts, token_ids, settings = setup(args)
    start = time.perf_counter()
    engine = VLLMEngine(model, tokenizer, torch.device("cpu"), "fp32", seed=0,
                        max_model_len=max(map(len, token_ids)) + args.max_new_tokens)
    startup = time.perf_counter() - start
    log(f"vLLM engine start-up: {startup:.1f} s")
    try:
        samplers = [hf_sampler(model, tokenizer, f"hf b{args.at_batch}", args.at_batch, {}, "fp32"),
                    vllm_sampler(engine, f"vllm b{args.at_batch}", args.at_batch)]
        if args.at_batch < len(prompts):  # vLLM schedules its own batches: every row in one call too
            samplers += [hf_sampler(model, tokenizer, f"hf b{len(prompts)}", len(prompts), {}, "fp32"),
                         vllm_sampler(engine, f"vllm b{len(prompts)}", len(prompts))]
        results = measure(samplers, prompts, token_ids, settings, args.rounds)
    finally:
        engine.close()
    Path(args.json).write_text(json.dumps({"startup_s": startup, "table": summarise(results)}), encoding="utf-8")


def run_vllm(args) -> dict:
    """The vLLM child (``--vllm-child``) with the same prompts and tokens: its start-up seconds
    and its table."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "vllm.json"
        cmd = [args.vllm_python, str(Path(__file__).resolve()), "--vllm-child", "--json", str(out),
               "--model", args.model, "--prompts", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens),
               "--temperature", str(args.temperature), "--at-batch", str(args.at_batch), "--rounds", str(args.rounds)]
        # vLLM binds its OpenMP threads to cores of its own choosing unless told not to: with
        # "nobind" it runs as many threads as OMP_NUM_THREADS says, like the HF rows
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", **os.environ}
        rss, wall = run_measured_child(cmd, Path(folder) / "vllm.log", env)
        log(f"vLLM child: {wall:.0f} s, peak RSS {rss:.0f} MiB (the engine runs in its own process)")
        return json.loads(out.read_text(encoding="utf-8"))


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the models come from the local cache, never a download
    if args.vllm_child:
        return vllm_child(args)
    table = in_process(args) if args.batches or args.variants else []
    vllm = {}
    if args.vllm_python:
        vllm = run_vllm(args)
        print_table(vllm["table"], f"hf b{args.at_batch}", f"vLLM child ({args.vllm_python}, the engine in its own "
                    f"process, fp32): engine start-up {vllm['startup_s']:.1f} s; load average {load()} at end")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "hf": table, "vllm": vllm}, indent=1),
                                   encoding="utf-8")


def in_process(args) -> list[dict]:
    """The hf rows and the variants, alternating in this process; prints and returns the table."""
    import torch

    from tether.utils.host_memory import keep_freed_host_memory

    keep_freed_host_memory()  # as the training entry points set it
    load_start = load()
    tokenizer, model, prompts, token_ids, settings = setup(args)
    cache_len = max(map(len, token_ids)) + args.max_new_tokens
    results = measure(build_samplers(args, model, tokenizer, cache_len), prompts, token_ids, settings, args.rounds)
    table = summarise(results)
    lengths = [len(t) for t in token_ids]
    header = (f"{args.model}, fp32 unless named, {torch.get_num_threads()} thread(s): {len(prompts)} demo prompts "
              f"({min(lengths)}-{max(lengths)} tokens), {args.max_new_tokens} new tokens at most, temperature "
              f"{args.temperature}; median of {args.rounds} rounds; load average {load_start} at start, "
              f"{load()} at end")
    print_table(table, table[0]["variant"], header)
    return table

if __name__ == "__main__":
    main()
