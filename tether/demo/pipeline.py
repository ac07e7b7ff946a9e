"""``tether demo``: the whole RLHF pipeline on one model, each step the code path a user runs.

    1. sample     K responses per training prompt from the SFT policy, every pair of them one
                  comparison task, cut-off responses marked -> tasks.jsonl (``tether label make-tasks``)
    2. label      the simulated human answers every task in the label store, then the store is
                  exported (``tether label simulate`` + ``tether label export``)
    3. reward     a Bradley-Terry reward model on the SFT backbone, early-stopped on held-out
                  prompts, normalised on the SFT samples; judged against chance before going on
                  (``tether train-rm``)
    4. PPO        critic initialised from the reward model, frozen reference (``tether ppo``)
    5. evaluate   SFT vs PPO on held-out prompts: gold and RM scores, KL, win rate -> eval.json
    6. report     report.html with the evaluation first, then the PPO run's report

Everything lands in ``<output_dir>/<run_name>/``: tasks.jsonl, labels.sqlite,
preferences.jsonl, rm/ (with rm/reward_model), ppo/ (with ppo/policy), eval.json, report.html.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from tether.demo.config import DemoConfig
from tether.errors import TetherError
from tether.reporting.progress import phase_progress


@dataclass
class DemoResult:
    run_dir: Path
    report: Path
    eval: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    rm_accuracy: float | None = None
    labels: str = ""

    def summary_lines(self) -> list[str]:
        p = self.eval["policies"]
        wr = self.eval["win_rate_ppo_over_sft"]
        best = self.eval.get("gold_best_of_n")
        headroom = (f"; best of {best['n']} SFT samples {best['best_of_n']:.3f}: PPO closed "
                    f"{self.eval['headroom_closed']:.0%} of that headroom") if best else ""
        ci = lambda c: f"{c['mean']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]"  # noqa: E731
        acc = f"{self.rm_accuracy:.1%}" if self.rm_accuracy is not None else "n/a"
        judged = self.eval.get("reward_model_verdict")
        if judged:
            acc += (f" [{judged['ci95'][0]:.1%}, {judged['ci95'][1]:.1%}], "
                    + ("above chance" if judged["learned"] else "NOT above chance: the labels did not steer PPO"))
        verdict = "PPO beats SFT (intervals do not overlap)" if self.eval["gold_intervals_separate"] else "intervals overlap"
        return [
            f"labels:        {self.labels}; reward model held-out accuracy {acc}",
            f"gold score:    SFT {ci(p['sft']['gold'])} -> PPO {ci(p['ppo']['gold'])}: {verdict}{headroom}",
            f"reward model:  SFT {ci(p['sft']['rm'])} -> PPO {ci(p['ppo']['rm'])}",
            f"win rate:      PPO over SFT {ci(wr)}; KL to reference {p['ppo']['kl']['mean']:.2f} nats/response",
            f"length:        SFT {p['sft']['length']['mean']:.1f} -> PPO {p['ppo']['length']['mean']:.1f} tokens; "
            f"{sum(self.timings.values()) / 60:.1f} min in all",
        ]


def run_demo(config: DemoConfig) -> DemoResult:
    from tether.labeling.simulated import load_labeler
    from tether.models.loading import resolve_device
    from tether.rollout.rewards import load_function
    from tether.utils.host_memory import keep_freed_host_memory
    from tether.utils.precision import resolve_precision

    labeler = load_labeler(config.labeler)  # fail before any model is loaded
    gold = load_function(config.gold, "gold score function")
    train_prompts, eval_prompts = demo_prompts(config)
    device = resolve_device(config.device)
    config = replace(config, precision=resolve_precision(config.precision, device))
    out = _prepare_dir(config)
    config = with_prompt_files(config, train_prompts, eval_prompts, out)
    keep_freed_host_memory()  # tether/utils/host_memory.py
    timings: dict[str, float] = {}

    def step(name: str, started: float) -> None:
        timings[name] = time.perf_counter() - started
        print(f"[demo] {name}: {timings[name]:.0f} s", flush=True)

    if config.rounds > 1:  # steps 1-4 in R rounds of iterated online RLHF (tether/rounds)
        from tether.rounds.demo import run_demo_rounds

        t = time.perf_counter()
        rm_dir, ppo_dir, rm_accuracy, labels, label_counts = run_demo_rounds(config, labeler, out)
        step(f"1-4 {config.rounds} rounds", t)
    else:
        t = time.perf_counter()
        if config.tasks:  # responses sampled before (the same model and settings): label these
            tasks_file = out / "tasks.jsonl"
            shutil.copyfile(config.tasks, tasks_file)
        else:
            tasks_file = sample_pairs(config, prompts_to_label(config, train_prompts), out)
        step("1 sample responses", t)

        t = time.perf_counter()
        prefs, labels, label_counts = label_pairs(config, tasks_file, labeler, out)
        step("2 label", t)

        t = time.perf_counter()
        from tether.train.reward_stage import train_reward

        rm_dir, rm_accuracy = train_reward(config, prefs, out)
        step("3 reward model", t)
        check_reward_model(config, out, labels)

        t = time.perf_counter()
        ppo_dir = train_policy(config, rm_dir, out)
        step("4 PPO", t)

    t = time.perf_counter()
    from tether.demo.evaluate import evaluate_policies
    from tether.rollout.generation import SamplingSettings

    result = evaluate_policies(
        config.model, ppo_dir / "policy", rm_dir, eval_prompts, labeler, gold,
        SamplingSettings(config.max_new_tokens, config.temperature), device,
        resamples=config.bootstrap, seed=config.seed, show=config.show_samples, quiet=_quiet(config),
        precision=config.precision, per_prompt=config.eval_samples_per_prompt)
    result["reward_model_accuracy"] = rm_accuracy
    verdict_file = rm_dir.parent / "rm_verdict.json"
    if verdict_file.exists():
        result["reward_model_verdict"] = json.loads(verdict_file.read_text(encoding="utf-8"))
    result["labels"] = labels
    result["label_counts"] = label_counts
    result["missing_eos_penalty"] = config.missing_eos_penalty
    result["kl_coef"] = config.kl_coef
    result["kl_target"] = config.kl_target
    if config.headroom_samples:
        result.update(best_of_n(config, eval_prompts, gold, result, out))
    for path in (out / "eval.json", ppo_dir / "eval.json"):
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    step("5 evaluate", t)

    t = time.perf_counter()
    from tether.demo.report import write_demo_report

    extra = {"labeler": config.labeler, "model": config.model,
             "reward model held-out accuracy": "n/a" if rm_accuracy is None else f"{rm_accuracy:.1%}",
             "labels": labels}
    files = write_demo_report(out, ppo_dir, result, extra)
    step("6 report", t)
    demo = DemoResult(out, files.html, result, timings, rm_accuracy, labels)
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
    return demo


def demo_prompts(config: DemoConfig) -> tuple[list, list]:
    """The training and held-out prompts, each with the demo's instruction appended."""
    from tether.data.templates import with_instruction
    from tether.rollout.prompts import resolve_prompts

    train = [with_instruction(p, config.instruction) for p in resolve_prompts(config.prompts)]
    held_out = resolve_prompts(config.eval_prompts)[: config.eval_samples]
    return train, [with_instruction(p, config.instruction) for p in held_out]


def prompts_to_label(config: DemoConfig, train: list) -> list:
    """The first ``label_prompts`` training prompts, cycling past the end of the set."""
    return [train[i % len(train)] for i in range(config.label_prompts)]


def with_prompt_files(config: DemoConfig, train: list, held_out: list, out: Path) -> DemoConfig:
    """The prompts as the run used them, written to the run directory; every later step (PPO,
    rounds) reads these files, so the instruction reaches each one."""
    files = {"prompts": out / "prompts-train.jsonl", "eval_prompts": out / "prompts-eval.jsonl"}
    for prompts, path in ((train, files["prompts"]), (held_out, files["eval_prompts"])):
        path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    return replace(config, **{field: str(path) for field, path in files.items()})


def best_of_n(config: DemoConfig, eval_prompts: list, gold, result: dict, out: Path) -> dict:
    """The gold headroom of the held-out prompts (tether.demo.headroom) and the share PPO closed."""
    from tether.data.templates import prompt_text
    from tether.demo.headroom import headroom, headroom_closed, sample_best_of

    path = Path(config.headroom_file) if config.headroom_file else out / "best_of_n.json"
    if not config.headroom_file:
        with phase_progress(f"best of {config.headroom_samples}", total=1, quiet=_quiet(config)) as bar:
            sample_best_of(config.model, [prompt_text(p) for p in eval_prompts], config.headroom_samples,
                           config.max_new_tokens, config.temperature, config.seed + 1, config.sample_batch_size,
                           config.device, config.precision, path)
            bar.advance(1)
    best = headroom(path, gold)
    policies = result["policies"]
    closed = headroom_closed(policies["sft"]["gold"]["mean"], policies["ppo"]["gold"]["mean"], best["best_of_n"])
    return {"gold_best_of_n": best, "headroom_closed": closed}


def _quiet(config: DemoConfig) -> bool | None:
    return True if config.quiet else None  # None: bars on a terminal, plain lines in a pipe or CI


def _prepare_dir(config: DemoConfig) -> Path:
    name = config.run_name or time.strftime("demo-%Y%m%d-%H%M%S")
    out = Path(config.output_dir) / name
    if out.exists() and any(out.iterdir()):
        if not config.overwrite:
            raise TetherError(f"{out} already exists; choose another run_name, or pass overwrite=true to replace it")
        if not (out / "demo.yaml").exists():
            raise TetherError(f"{out} exists and is not a demo run (no demo.yaml): refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False), encoding="utf-8")
    return out


# ----- 1. sample pairs from the SFT policy ---------------------------------------------------


def sample_pairs(config: DemoConfig, prompts: list, out: Path) -> Path:
    """K sampled responses per prompt; every pair of them is written as one comparison task of
    a labeling tasks file (as ``make-tasks``), each response marked when it was cut off."""
    from tether.data.templates import prompt_text
    from tether.labeling.tasks import pair_tasks, write_tasks
    from tether.rollout.sampling import sample_responses

    texts = [prompt_text(p) for p in prompts]
    k = config.responses_per_prompt
    with phase_progress("1/6 sample responses", total=len(texts), quiet=_quiet(config)) as bar:
        # one call: the model is loaded once, not once per progress step
        samples, truncated = sample_responses(
            config.model, texts, k=k, max_new_tokens=config.pair_max_new_tokens, temperature=config.pair_temperature,
            seed=config.seed, batch_size=config.sample_batch_size, device=config.device, precision=config.precision,
            on_batch=bar.advance, return_truncated=True)
    path = out / "tasks.jsonl"
    write_tasks(pair_tasks(texts, samples, truncated), path)
    return path


# ----- 2. label with the simulated human, through the label store -----------------------------


def label_pairs(config: DemoConfig, tasks_file: Path, labeler, out: Path) -> tuple[Path, str, dict[str, int]]:
    """``tether label simulate --tasks`` then ``tether label export``, in process."""
    from tether.labeling.export import export_jsonl
    from tether.labeling.simulated import simulate
    from tether.labeling.store import Store
    from tether.labeling.tasks import load_tasks

    store = Store(out / "labels.sqlite", create=True)
    store.add_tasks(load_tasks(tasks_file))
    name = "sim-" + config.labeler.rpartition(":")[2].replace("_", "-")
    summary = simulate(store, labeler, name, spec=config.labeler)
    prefs = out / "preferences.jsonl"
    exported = export_jsonl(store, prefs, ties=config.rm_ties)
    print(f"[demo] {summary.describe()}; exported {exported.pairs} pairs", flush=True)
    if summary.tie_warning():
        print(f"[demo] warning: {summary.tie_warning()}", flush=True)
    if exported.pairs < 4:
        raise TetherError(f"the labeler {config.labeler} gave only {exported.pairs} preferences "
                          f"({summary.ties} ties, {summary.skips} skips): the reward model needs at least 4")
    counts = {"tasks": summary.answered, "preferences": exported.pairs, "ties": summary.ties, "skips": summary.skips}
    return prefs, f"{exported.pairs} preferences ({summary.ties} ties, {summary.skips} skips) from {name}", counts


# ----- 3. reward model ----------------------------------------------------------------------


def check_reward_model(config: DemoConfig, out: Path, labels: str) -> None:
    """Stop before PPO when the reward model did not learn the labels (held-out accuracy not
    above chance): say why, and what to change."""
    path = out / "rm" / "rm_verdict.json"
    if not path.exists():
        return
    verdict = json.loads(path.read_text(encoding="utf-8"))
    lo, hi = verdict["ci95"]
    line = (f"reward model held-out accuracy {verdict['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] "
            f"on {verdict['pairs']} pairs from {verdict['prompts']} prompts")
    if verdict["learned"]:
        print(f"[demo] {line}: above chance", flush=True)
        return
    advice = (f"{line} is not above chance (50%): the reward model has not learned the labels ({labels}), "
              "and PPO would optimise noise. Label more prompts (label_prompts), make the labeler's taste "
              "decide more comparisons (fewer ties), or check that its answers are consistent")
    if config.require_learned_reward:
        raise TetherError(advice + "; require_learned_reward=false runs PPO anyway")
    print(f"[demo] warning: {advice}", flush=True)


# ----- 4. PPO -------------------------------------------------------------------------------


def train_policy(config: DemoConfig, rm_dir: Path, out: Path) -> Path:
    from tether.train.ppo import train_ppo
    from tether.train.ppo_config import PPOConfig

    ppo_config = PPOConfig(
        policy=config.model, reward_model=str(rm_dir), critic="separate", prompts=config.prompts,
        total_iterations=config.ppo_iterations, batch_size=config.batch_size,
        ppo_epochs=config.ppo_epochs, mini_batch_size=config.mini_batch_size, micro_batch_size=config.micro_batch_size,
        forward_batch_size=config.batch_size, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
        learning_rate=config.learning_rate, critic_learning_rate=config.critic_learning_rate,
        kl_coef=config.kl_coef, kl_target=config.kl_target, missing_eos_penalty=config.missing_eos_penalty,
        seed=config.seed, device=config.device,
        precision=config.precision, output_dir=str(out), run_name="ppo", quiet=bool(config.quiet))
    return train_ppo(ppo_config)
