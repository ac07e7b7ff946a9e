"""``tether demo``: the whole RLHF pipeline on one model, each step the code path a user runs.

    1. sample     two responses per training prompt from the SFT policy -> tasks.jsonl
                  (``tether label make-tasks``)
    2. label      the simulated human answers every task in the label store, then the store is
                  exported (``tether label simulate`` + ``tether label export``)
    3. reward     a Bradley-Terry reward model on the SFT backbone, normalised (``tether train-rm``)
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
from dataclasses import asdict, dataclass, field
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
        ci = lambda c: f"{c['mean']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]"  # noqa: E731
        acc = f"{self.rm_accuracy:.1%}" if self.rm_accuracy is not None else "n/a"
        verdict = "PPO beats SFT (intervals do not overlap)" if self.eval["gold_intervals_separate"] else "intervals overlap"
        return [
            f"labels:        {self.labels}; reward model held-out accuracy {acc}",
            f"gold score:    SFT {ci(p['sft']['gold'])} -> PPO {ci(p['ppo']['gold'])}: {verdict}",
            f"reward model:  SFT {ci(p['sft']['rm'])} -> PPO {ci(p['ppo']['rm'])}",
            f"win rate:      PPO over SFT {ci(wr)}; KL to reference {p['ppo']['kl']['mean']:.2f} nats/response",
            f"length:        SFT {p['sft']['length']['mean']:.1f} -> PPO {p['ppo']['length']['mean']:.1f} tokens; "
            f"{sum(self.timings.values()) / 60:.1f} min in all",
        ]


def run_demo(config: DemoConfig) -> DemoResult:
    from tether.labeling.simulated import load_labeler
    from tether.models.loading import resolve_device
    from tether.rollout.prompts import resolve_prompts
    from tether.rollout.rewards import load_function
    from tether.utils.host_memory import keep_freed_host_memory

    labeler = load_labeler(config.labeler)  # fail before any model is loaded
    gold = load_function(config.gold, "gold score function")
    train_prompts = resolve_prompts(config.prompts)
    eval_prompts = resolve_prompts(config.eval_prompts)[: config.eval_samples]
    out = _prepare_dir(config)
    device = resolve_device(config.device)
    keep_freed_host_memory()  # tether/utils/host_memory.py
    timings: dict[str, float] = {}

    def step(name: str, started: float) -> None:
        timings[name] = time.perf_counter() - started
        print(f"[demo] {name}: {timings[name]:.0f} s", flush=True)

    t = time.perf_counter()
    pair_prompts = [train_prompts[i % len(train_prompts)] for i in range(config.pairs)]
    tasks_file = sample_pairs(config, pair_prompts, out)
    step("1 sample pairs", t)

    t = time.perf_counter()
    prefs, labels = label_pairs(config, tasks_file, labeler, out)
    step("2 label", t)

    t = time.perf_counter()
    rm_dir, rm_accuracy = train_reward(config, prefs, out)
    step("3 reward model", t)

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
    result["labels"] = labels
    result["kl_coef"] = config.kl_coef
    result["kl_target"] = config.kl_target
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
    """Two sampled responses per prompt, written as a labeling tasks file (as ``make-tasks``)."""
    from tether.data.templates import prompt_text
    from tether.labeling.tasks import tasks_from_samples, write_tasks
    from tether.rollout.sampling import sample_responses

    texts = [prompt_text(p) for p in prompts]
    with phase_progress("1/6 sample pairs", total=len(texts), quiet=_quiet(config)) as bar:
        # one call: the model is loaded once, not once per progress step
        samples = sample_responses(config.model, texts, k=2, max_new_tokens=config.pair_max_new_tokens,
                                   temperature=config.pair_temperature, seed=config.seed,
                                   batch_size=config.sample_batch_size, device=config.device,
                                   precision=config.precision, on_batch=bar.advance)
    tasks = tasks_from_samples(texts, samples, 2)
    path = out / "tasks.jsonl"
    write_tasks(tasks, path)
    return path


# ----- 2. label with the simulated human, through the label store -----------------------------


def label_pairs(config: DemoConfig, tasks_file: Path, labeler, out: Path) -> tuple[Path, str]:
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
    exported = export_jsonl(store, prefs)
    print(f"[demo] {summary.describe()}; exported {exported.pairs} pairs", flush=True)
    if exported.pairs < 4:
        raise TetherError(f"the labeler {config.labeler} gave only {exported.pairs} preferences "
                          f"({summary.ties} ties, {summary.skips} skips): the reward model needs at least 4")
    return prefs, f"{exported.pairs} preferences ({summary.ties} ties, {summary.skips} skips) from {name}"


# ----- 3. reward model ----------------------------------------------------------------------


def train_reward(config: DemoConfig, prefs: Path, out: Path) -> tuple[Path, float | None]:
    from tether.train.reward_model import RewardModelConfig, train_reward_model

    rm_config = RewardModelConfig(
        model=config.model, data=str(prefs), eval_fraction=config.rm_eval_fraction, epochs=config.rm_epochs,
        max_steps=config.rm_max_steps, batch_size=config.rm_batch_size, learning_rate=config.rm_learning_rate,
        trainable_layers=config.rm_trainable_layers,
        eval_every=10_000, normalize="chosen", seed=config.seed, device=config.device, output_dir=str(out),
        precision=config.precision,
        run_name="rm", quiet=bool(config.quiet))
    rm_dir = train_reward_model(rm_config)
    accuracy = None
    for line in (out / "rm" / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "eval/accuracy" in row:
            accuracy = row["eval/accuracy"]
    return rm_dir, accuracy


# ----- 4. PPO -------------------------------------------------------------------------------


def train_policy(config: DemoConfig, rm_dir: Path, out: Path) -> Path:
    from tether.train.ppo import train_ppo
    from tether.train.ppo_config import PPOConfig

    ppo_config = PPOConfig(
        policy=config.model, reward_model=str(rm_dir), critic="separate", prompts=config.prompts,
        eval_prompts=config.eval_prompts, total_iterations=config.ppo_iterations, batch_size=config.batch_size,
        ppo_epochs=config.ppo_epochs, mini_batch_size=config.mini_batch_size, micro_batch_size=config.micro_batch_size,
        forward_batch_size=config.batch_size, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
        learning_rate=config.learning_rate, critic_learning_rate=config.critic_learning_rate,
        kl_coef=config.kl_coef, kl_target=config.kl_target, missing_eos_penalty=config.missing_eos_penalty,
        seed=config.seed, device=config.device,
        precision=config.precision, output_dir=str(out), run_name="ppo", quiet=bool(config.quiet))
    return train_ppo(ppo_config)
