"""tether against TRL 1.16 stage by stage: an SFT step, a reward-model step, a DPO step, a GRPO
iteration and an RLOO iteration, at equal settings, in fp32.

Both sides: SmolLM2-135M-Instruct from the folder tether's registry converted (no hub), the
same rows, the same shapes and the same optimisation:

    stage  rows per step                       what one step is
    sft    --batch demonstrations              forward + backward + AdamW on the completion NLL
    rm     --batch preference pairs            Bradley-Terry loss on chosen and rejected (2 x batch sequences)
    dpo    --batch preference pairs            sigmoid DPO loss, beta 0.1; reference log-probs computed
                                               once before training on both sides (TRL:
                                               precompute_ref_log_probs=True), so not inside the step
    grpo   --batch prompts x --group samples   generate exactly --response-tokens tokens, Python reward,
                                               group-normalised advantages, KL (k3) in the loss, beta 0.05,
                                               token-mean loss (TRL loss_type="dapo"), 1 epoch, 1 minibatch
    rloo   --batch prompts x --group samples   the same rollout; leave-one-out baseline, KL (k1) in the
                                               reward, beta 0.05

Settings that make TRL equal (every one passed explicitly, see child_trl): fp32 (bf16=False:
TRL's configs default to bf16), gradient_checkpointing=False (TRL's default is True), fused
AdamW (optim="adamw_torch_fused", tether's make_adamw), learning rate 1e-5 constant, no warm-up,
weight decay 0, max_grad_norm 1.0, gradient_accumulation_steps=1, no packing or padding-free
batches, max_length 256 (no row reaches it: TRL's RewardTrainer drops longer rows), GRPO/RLOO:
use_vllm=False, num_iterations=1, steps_per_generation=1 (one generation of batch x group per step),
min_new_tokens = max_completion_length (tether: EOS suppressed until then, as in
benchmarks/ppo_iteration.py), temperature 1, top_k 0, top_p 1. Prompts of SFT, RM and DPO are
rendered through SmolLM2's chat template once, here, and handed to both sides as plain text
(tether: chat_template=false); GRPO and RLOO prompts go through each side's own chat-template
path (TRL: conversational rows).

Each measurement is its own subprocess (fresh process, models loaded, --warmup steps unmeasured,
then --steps measured), TRL and tether alternating for each stage and swapping order every round,
for --rounds rounds. Reported per stage: median seconds per step of each side, the ratio, the
ratio of CPU seconds, each child's peak RSS (os.wait4), and each side's model FLOP/s as a
fraction of the fp32 matmul rate this process measures between the children.

    make bench-stages                                        # defaults below
    .venv-bench-stages/bin/python benchmarks/vs_trl_stages.py --stages sft,grpo --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import PROMPTS, StepStamps, log, matmul_rate, param_counts, run_measured_child  # noqa: E402

STAGES = ("sft", "rm", "dpo", "grpo", "rloo")
ONLINE = ("grpo", "rloo")
MAX_LENGTH = 256
LEARNING_RATE = 1e-5
DPO_BETA = 0.1
KL_COEF = 0.05

# Fixed completions (about 30 tokens each), the same for every row, so every step has the same shapes.
COMPLETION = ("Here is a short answer in plain words: it is simple, it is clear, and it should help you "
              "with what you asked about today.")
CHOSEN = COMPLETION
REJECTED = ("I am not sure what you mean, but maybe you could ask again in a different way so that I can "
            "try to give a better reply later on.")


def vowel_share(prompts, responses) -> list[float]:
    """The online stages' Python reward (tether's ``module:function`` form): the share of vowels
    among a response's letters. Cheap, and different between samples, so advantages are not zero."""
    scores = []
    for text in responses:
        letters = [c for c in text.lower() if c.isalpha()]
        scores.append(sum(c in "aeiou" for c in letters) / max(len(letters), 1))
    return scores


def trl_vowel_share(prompts, completions, **kwargs) -> list[float]:
    """The same reward in TRL's signature (conversational completions are lists of messages)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return vowel_share(prompts, texts)


@dataclass(frozen=True)
class Settings:
    """What both sides of one stage run with (passed to every child as JSON)."""

    stage: str
    batch: int  # demonstrations (sft), pairs (rm, dpo) or prompts (grpo, rloo) per optimizer step
    group: int  # samples per prompt (grpo, rloo)
    response_tokens: int  # generated tokens per sample (grpo, rloo)
    warmup: int
    steps: int
    data: str  # the stage's rows (.jsonl)

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default=",".join(STAGES), help="comma list of: " + ", ".join(STAGES))
    p.add_argument("--rounds", type=int, default=3, help="rounds; each side of each stage measured once per round")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps at the start of each child")
    p.add_argument("--steps", type=int, default=2, help="measured steps per child")
    p.add_argument("--batch", type=int, default=4, help="rows per step of SFT (demonstrations), RM and DPO (pairs)")
    p.add_argument("--prompts", type=int, default=2, help="prompts per GRPO / RLOO iteration")
    p.add_argument("--group", type=int, default=4, help="samples per prompt (GRPO, RLOO)")
    p.add_argument("--response-tokens", type=int, default=16, help="generated tokens per sample (GRPO, RLOO)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of every child and of the matmul calibration (OMP_NUM_THREADS)")
    p.add_argument("--json", default=None, help="write all figures to this file")
    p.add_argument("--child", choices=["trl", "tether"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--settings", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="profile one step of every child (GRPO/RLOO: one extra iteration) with torch.profiler, "
                        "top N ops in the child's log; a profiled run's times are not for comparison")
    return p.parse_args(argv)


# ----- data -----------------------------------------------------------------------------------------


def write_stage_data(stage: str, rows: int, folder: Path, tokenizer) -> tuple[Path, dict]:
    """The stage's rows as .jsonl (both sides read the same file) and their token counts."""
    def rendered(prompt: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(rows)]
    if stage == "sft":
        records = [{"prompt": rendered(p), "completion": COMPLETION} for p in prompts]
    elif stage in ("rm", "dpo"):
        records = [{"prompt": rendered(p), "chosen": CHOSEN, "rejected": REJECTED} for p in prompts]
    else:
        records = [{"prompt": p} for p in prompts]
    path = folder / f"{stage}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    # Tokens per row: prompt as rendered by the chat template; responses with their EOS.
    prompt_tokens = [count(rendered(p)) for p in prompts]
    tokens = {"prompt": statistics.mean(prompt_tokens)}
    if stage == "sft":
        tokens["response"] = count(COMPLETION) + 1
    elif stage in ("rm", "dpo"):
        tokens["chosen"], tokens["rejected"] = count(CHOSEN) + 1, count(REJECTED) + 1
    return path, tokens


def step_flops(stage: str, s: Settings, tokens: dict, n_body: int, n_head: int) -> float:
    """Model FLOPs one step needs (2·N per token forward, 6·N forward + backward; the LM head only
    where the loss reads logits; attention's L² term and scalar heads ignored; padding not
    counted). The same count for both sides. Online stages: generation (prefill + one head
    position per decode step), the reference forward and the policy's forward + backward; the
    old log-probs' forward that tether makes and TRL skips at num_iterations=1 is not counted."""
    P = tokens["prompt"]
    if stage == "sft":
        R = tokens["response"]
        return s.batch * (6 * n_body * (P + R) + 6 * n_head * R)
    if stage in ("rm", "dpo"):
        per_pair = sum(6 * n_body * (P + tokens[k]) + (6 * n_head * tokens[k] if stage == "dpo" else 0)
                       for k in ("chosen", "rejected"))
        return s.batch * per_pair
    n, R = s.batch * s.group, s.response_tokens
    generate = 2 * n_body * n * (P + R) + 2 * n_head * n * R
    reference = 2 * n_body * n * (P + R) + 2 * n_head * n * R
    update = 6 * n_body * n * (P + R) + 6 * n_head * n * R
    return generate + reference + update


# ----- tether children ------------------------------------------------------------------------------


def stamp_run_log(stamps: StepStamps, total_steps: int, finish) -> None:
    """Stamp after every optimizer step of tether's offline loops (each logs its step through
    RunDirectory.log right after the update: tether/train/sft.py, reward_model.py, dpo.py), and
    call ``finish`` after the last one: saving the trained model is no step, on either side."""
    from tether.train import run_dir

    original = run_dir.RunDirectory.log

    def log_and_stamp(self, iteration, metrics, progress=None):
        original(self, iteration, metrics, progress)
        stamps.stamp()
        if len(stamps.stamps) == total_steps:
            finish()

    run_dir.RunDirectory.log = log_and_stamp


def measured(stamps: StepStamps, warmup: int) -> dict:
    """Step times from stamps taken after every step: interval i ends step i + 2, so the first
    step is always unmeasured, and the first ``warmup`` steps are dropped."""
    wall, cpu = stamps.intervals()
    return {"step_s": wall[warmup - 1:], "step_cpu_s": cpu[warmup - 1:], "all_step_s": wall}


def child_tether(s: Settings, out_dir: str, profile: int, finish) -> None:
    if s.stage in ONLINE:
        finish(tether_online(s, profile))
        return
    common = dict(model="smollm2", data=s.data, eval_fraction=0.0, chat_template=False, max_length=MAX_LENGTH,
                  batch_size=s.batch, epochs=1, learning_rate=LEARNING_RATE, lr_schedule="constant",
                  warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=0, device="cpu", precision="fp32",
                  output_dir=out_dir, quiet=True)
    stamps = StepStamps()
    stamp_run_log(stamps, s.total_steps, lambda: finish(measured(stamps, s.warmup)))
    if profile:
        profile_steps(stamps, profile, s.warmup)
    if s.stage == "sft":
        from tether.train.sft import SFTConfig, train_sft

        train_sft(SFTConfig(**common))
    elif s.stage == "rm":
        from tether.train.reward_model import RewardModelConfig, train_reward_model

        train_reward_model(RewardModelConfig(**common, fresh_head=True, head_learning_rate=LEARNING_RATE,
                                             normalize="none"))
    else:
        from tether.train.dpo import DPOConfig, train_dpo

        train_dpo(DPOConfig(**common, beta=DPO_BETA, loss_type="sigmoid"))


def tether_online(s: Settings, profile: int) -> dict:
    """GRPO / RLOO through benchmarks/ppo_iteration.py: tether's own roles, optimizer and
    ``iterate`` (what ``tether grpo`` runs per iteration), responses forced to exactly
    --response-tokens tokens."""
    import ppo_iteration

    args = ppo_iteration.parse_args([
        "--precision", "fp32", "--batch-size", str(s.batch), "--response-tokens", str(s.response_tokens),
        "--epochs", "1", "--iterations", str(s.steps), "--warmup", str(s.warmup), "--no-matmul"])
    n = s.batch * s.group
    state = ppo_iteration.build(
        args, None, algorithm=s.stage, reward_model=None, reward_function="vs_trl_stages:vowel_share",
        samples_per_prompt=s.group, mini_batch_size=n, micro_batch_size=n, forward_batch_size=n, ppo_epochs=1,
        kl_coef=KL_COEF, learning_rate=LEARNING_RATE, loss_aggregation="token-mean")
    rows = [ppo_iteration.one_iteration(state) for _ in range(s.total_steps)]
    for i, r in enumerate(rows):
        log(f"tether {s.stage} {'warmup' if i < s.warmup else 'measured'} iteration {i + 1}: {r['iteration_s']:.1f} s "
            f"(generate {r['generate_s']:.1f}, score {r['score_s']:.1f}, update {r['update_s']:.1f})")
    if profile:
        ppo_iteration.profile_iteration(state, profile)
    kept = rows[s.warmup:]
    return {"step_s": [r["iteration_s"] for r in kept], "step_cpu_s": [r["iteration_cpu_s"] for r in kept],
            "all_step_s": [r["iteration_s"] for r in rows],
            "phases": {k: statistics.median(r[k] for r in kept) for k in ("generate_s", "score_s", "update_s")},
            "response_tokens_min": min(r["response_tokens_min"] for r in kept)}


def profile_steps(stamps: StepStamps, top: int, warmup: int) -> None:
    """Profile the step after the warm-up with torch.profiler (started and stopped by the step
    stamps), printing the top ops by self CPU time when the run ends."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    stamp = stamps.stamp

    def stamp_and_profile(*a, **k):
        stamp()
        if len(stamps.stamps) == warmup:
            prof.start()
        elif len(stamps.stamps) == warmup + 1:
            prof.stop()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40))

    stamps.stamp = stamp_and_profile


# ----- TRL children ---------------------------------------------------------------------------------


def trl_common_args(s: Settings, out_dir: str) -> dict:
    """The TrainingArguments both sides agree on (see the module docstring)."""
    return dict(output_dir=out_dir, per_device_train_batch_size=s.batch, gradient_accumulation_steps=1,
                num_train_epochs=1, max_steps=s.total_steps, learning_rate=LEARNING_RATE,
                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                optim="adamw_torch_fused", bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
                seed=0, report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
                dataloader_num_workers=0)


def child_trl(s: Settings, out_dir: str, profile: int, finish) -> None:
    from datasets import Dataset

    from tether.models.registry import resolve_model

    path = str(resolve_model("smollm2"))  # the converted local folder tether loads
    rows = [json.loads(line) for line in Path(s.data).read_text().splitlines()]
    common = trl_common_args(s, out_dir)
    if s.stage == "sft":
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(**common, max_length=MAX_LENGTH, packing=False, padding_free=False,
                           completion_only_loss=True)
        make = lambda cb: SFTTrainer(model=path, args=config, train_dataset=Dataset.from_list(rows), callbacks=cb)  # noqa: E731
    elif s.stage == "rm":
        from trl import RewardConfig, RewardTrainer

        config = RewardConfig(**common, max_length=MAX_LENGTH, center_rewards_coefficient=None, disable_dropout=True)
        make = lambda cb: RewardTrainer(model=path, args=config, train_dataset=Dataset.from_list(rows), callbacks=cb)  # noqa: E731
    elif s.stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(**common, max_length=MAX_LENGTH, beta=DPO_BETA, loss_type=["sigmoid"],
                           label_smoothing=0.0, precompute_ref_log_probs=True, padding_free=False,
                           disable_dropout=True)
        make = lambda cb: DPOTrainer(model=path, args=config, train_dataset=Dataset.from_list(rows), callbacks=cb)  # noqa: E731
    else:
        online = dict(common, per_device_train_batch_size=s.batch * s.group)
        conversational = [{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows]
        shared = dict(num_generations=s.group, max_completion_length=s.response_tokens,
                      generation_kwargs={"min_new_tokens": s.response_tokens},
                      steps_per_generation=1,  # one generation of batch x group per optimizer step num_iterations=1, beta=KL_COEF, temperature=1.0, top_k=0, top_p=1.0,
                      use_vllm=False, disable_dropout=True, epsilon=0.2, shuffle_dataset=False)
        if s.stage == "grpo":
            from trl import GRPOConfig, GRPOTrainer

            config = GRPOConfig(**online, **shared, loss_type="dapo", scale_rewards="group")
            make = lambda cb: GRPOTrainer(model=path, reward_funcs=[trl_vowel_share], args=config,  # noqa: E731
                                          train_dataset=Dataset.from_list(conversational), callbacks=cb)
        else:
            from trl import RLOOConfig, RLOOTrainer

            config = RLOOConfig(**online, **shared, normalize_advantages=False)
            make = lambda cb: RLOOTrainer(model=path, reward_funcs=[trl_vowel_share], args=config,  # noqa: E731
                                          train_dataset=Dataset.from_list(conversational), callbacks=cb)
    stamps = StepStamps()
    if profile:
        profile_steps(stamps, profile, s.warmup)
    trainer = make([stamps.callback(at_train_begin=False)])
    log(f"TRL {s.stage}: precision bf16={config.bf16}, gradient_checkpointing={config.gradient_checkpointing}, "
        f"optim={config.optim}, device {trainer.accelerator.device}")
    trainer.train()
    finish(measured(stamps, s.warmup))


# ----- parent ---------------------------------------------------------------------------------------


def run_child(side: str, s: Settings, workdir: Path, index: int, threads: int, profile: int = 0) -> dict:
    out = workdir / f"{index:02d}-{s.stage}-{side}.json"
    settings = workdir / f"{s.stage}-settings.json"
    settings.write_text(json.dumps(asdict(s)))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--settings", str(settings),
           "--out", str(out)] + (["--profile", str(profile)] if profile else [])
    log(f"[{index}] {s.stage} {side}")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    try:
        peak_rss, wall = run_measured_child(cmd, workdir / f"{index:02d}-{s.stage}-{side}.log", env)
    except SystemExit as failed:  # one failing side must not lose the other stages' figures
        log(f"[{index}] {s.stage} {side} FAILED: {failed}")
        return {"side": side, "error": str(failed)[-3000:]}
    result = json.loads(out.read_text())
    result.update(side=side, peak_rss_mb=peak_rss, wall_s=wall)
    log(f"[{index}] {s.stage} {side}: steps {', '.join(f'{x:.2f}' for x in result['step_s'])} s; "
        f"peak RSS {peak_rss:.0f} MiB; child wall {wall:.0f} s")
    return result


def model_sizes() -> tuple[int, int]:
    """(N_body, N_head) of SmolLM2 without loading its weights (meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tether.models.registry import resolve_model

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(resolve_model("smollm2"))))
    return param_counts(model)


def parent(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)  # the calibration runs on as many threads as the children

    from tether.models.loading import load_tokenizer

    stages = args.stages.split(",")
    unknown = [x for x in stages if x not in STAGES]
    if unknown:
        raise SystemExit(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    workdir = Path(tempfile.mkdtemp(prefix="vs-trl-stages-"))
    tokenizer = load_tokenizer("smollm2")
    n_body, n_head = model_sizes()
    settings, flops = {}, {}
    for stage in stages:
        total = args.warmup + args.steps
        batch = args.prompts if stage in ONLINE else args.batch
        path, tokens = write_stage_data(stage, batch * total, workdir, tokenizer)
        settings[stage] = Settings(stage, batch, args.group, args.response_tokens, args.warmup, args.steps, str(path))
        flops[stage] = step_flops(stage, settings[stage], tokens, n_body, n_head)
    rates: list[float] = []
    results = {stage: {"trl": [], "tether": []} for stage in stages}
    index = 0
    for rnd in range(args.rounds):
        for stage in stages:
            for side in (("trl", "tether") if rnd % 2 == 0 else ("tether", "trl")):
                rates.append(matmul_rate("fp32", seconds=1.0, clock=time.process_time))  # between children
                results[stage][side].append(run_child(side, settings[stage], workdir, index, args.threads,
                                                     args.profile))
                index += 1
                (workdir / "partial.json").write_text(json.dumps(results, indent=1))
                log(f"partial figures: {workdir / 'partial.json'}")
    rates.append(matmul_rate("fp32", seconds=1.0, clock=time.process_time))
    matmul = statistics.median(rates)
    summary = {"rounds": args.rounds, "warmup": args.warmup, "steps": args.steps, "batch": args.batch,
               "prompts": args.prompts, "group": args.group, "response_tokens": args.response_tokens, "precision": "fp32",
               "torch": torch.__version__, "threads": torch.get_num_threads(), "n_body": n_body, "n_head": n_head,
               "matmul_fp32_flops_per_s": matmul, "matmul_samples": rates, "stages": {}, "workdir": str(workdir)}
    for stage in stages:
        entry = {"step_flops": flops[stage]}
        for side, all_runs in results[stage].items():
            runs = [r for r in all_runs if "error" not in r]
            if not runs:
                entry[side] = {"error": all_runs[0]["error"] if all_runs else "not run"}
                continue
            steps = [x for r in runs for x in r["step_s"]]
            cpus = [x for r in runs for x in r["step_cpu_s"]]
            median = statistics.median(steps)
            cpu = statistics.median(cpus)
            entry[side] = {"median_s": median, "step_s": steps, "median_cpu_s": cpu, "step_cpu_s": cpus,
                           "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                           # FLOPs per CPU second over the matmul's FLOPs per CPU second: with one
                           # thread, the share of the time scheduled that became model FLOPs
                           "fraction_of_matmul": flops[stage] / cpu / matmul}
            if "phases" in runs[0]:
                entry[side]["phase_median_s"] = {k: statistics.median(r["phases"][k] for r in runs)
                                                 for k in runs[0]["phases"]}
        if "median_s" in entry["tether"] and "median_s" in entry["trl"]:
            entry["ratio"] = entry["tether"]["median_s"] / entry["trl"]["median_s"]
            entry["cpu_ratio"] = entry["tether"]["median_cpu_s"] / entry["trl"]["median_cpu_s"]
        summary["stages"][stage] = entry
    return summary


def print_summary(s: dict) -> None:
    print(f"tether vs TRL 1.16 by stage, SmolLM2-135M, fp32, batch {s['batch']} (GRPO/RLOO: {s['prompts']} prompts "
          f"x {s['group']} samples, {s['response_tokens']} tokens); {s['rounds']} rounds x {s['steps']} measured step(s) after {s['warmup']} "
          f"warm-up; torch {s['torch']}, {s['threads']} threads")
    print(f"fp32 matmul 2048^2 rate in this run (median, per CPU second): {s['matmul_fp32_flops_per_s'] / 1e9:.1f} GFLOP/s")
    print(f"{'stage':<6} {'TRL s':>7} {'tether s':>9} {'ratio':>6} {'CPU ratio':>9} {'RSS TRL':>8} {'RSS tether':>10} "
          f"{'GFLOP':>6} {'TRL/mm':>7} {'tether/mm':>9}")
    for stage, e in s["stages"].items():
        t, w = e["trl"], e["tether"]
        if "ratio" not in e:
            print(f"{stage:<6} failed: " + "; ".join(f"{k}: {v['error'].splitlines()[-1]}" for k, v in
                                                     (("TRL", t), ("tether", w)) if "error" in v))
            continue
        print(f"{stage:<6} {t['median_s']:7.2f} {w['median_s']:9.2f} {e['ratio']:5.2f}x {e['cpu_ratio']:8.2f}x "
              f"{t['peak_rss_mb']:8.0f} {w['peak_rss_mb']:10.0f} {e['step_flops'] / 1e9:6.0f} "
              f"{t['fraction_of_matmul']:7.1%} {w['fraction_of_matmul']:9.1%}")
    for stage, e in s["stages"].items():
        ph = e["tether"].get("phase_median_s")
        if ph:
            print(f"tether {stage} phases (median s): generate {ph['generate_s']:.2f}, score {ph['score_s']:.2f}, "
                  f"update {ph['update_s']:.2f}")
        print(f"{stage} steps (s): " + "; ".join(
            f"{name} " + ", ".join(f"{x:.2f}" for x in e[side]["step_s"])
            for name, side in (("TRL", "trl"), ("tether", "tether")) if "step_s" in e[side]))
    print("(ratio < 1: tether faster. RSS in MiB. Shared machine: compare ratios, not absolute times.)")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        settings = Settings(**json.loads(Path(args.settings).read_text()))
        out_dir = tempfile.mkdtemp(prefix=f"{args.child}-{settings.stage}-")
        t0 = time.perf_counter()

        def finish(result: dict) -> None:
            result["child_s"] = time.perf_counter() - t0
            log(f"{args.child} {settings.stage} steps (s): " + ", ".join(f"{x:.2f}" for x in result["all_step_s"]))
            Path(args.out).write_text(json.dumps(result))
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)  # no model saving or interpreter teardown: neither is a step

        (child_trl if args.child == "trl" else child_tether)(settings, out_dir, args.profile, finish)
        raise SystemExit(f"{args.child} {settings.stage}: training ended before step {settings.total_steps}")
    summary = parent(args)
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
