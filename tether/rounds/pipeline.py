"""``tether rlhf``: iterated online RLHF (Bai et al. 2022, sec. 4.5; Touvron et al. 2023, Llama 2,
sec. 3.2.3, five rounds). Each round r = 1..R:

    1. sample   K responses per prompt from the current policy (the SFT model in round 1, round
                r-1's PPO policy after it); every pair of them is one task of round r
    2. label    the tasks enter the label store; a simulated labeler answers them, or people on
                the labeling page while the run waits (tether.rounds.labels)
    3. reward   a reward model trained on every label of rounds 1..r
    4. PPO      continued from round r-1's policy and critic, with the SFT model as the reference
                throughout; its last iteration is evaluated on the held-out prompts

Layout of ``<output_dir>/<run_name>/``::

    rlhf.yaml                the resolved config
    labels.sqlite            the label store of every round (a task knows its round)
    eval_prompts.jsonl       the held-out prompts every round's policy is evaluated on
    round_<r>/tasks.jsonl    the round's comparison tasks
    round_<r>/labels.json    how its labeling went (written last: the stage is done)
    round_<r>/preferences.jsonl   every label of rounds 1..r: what its reward model trains on
    round_<r>/rm/reward_model     its reward model (tether train-rm's run in round_<r>/rm)
    round_<r>/ppo/policy, ppo/critic   its policy and critic (tether ppo's run in round_<r>/ppo)
    rounds.jsonl             one row per finished round (tether.rounds.summary)
    report.html              the rounds table and plot, then the last round's PPO report

A stage is done when its artifact is there (each is written whole, then renamed into place);
``resume=auto`` re-enters at the first stage of the first round that is not, and a PPO stage
stopped by Ctrl+C continues from its checkpoint.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import yaml

from tether.errors import RunStopped, TetherError
from tether.reporting.progress import phase_progress
from tether.rounds.config import RoundsConfig
from tether.rounds.paths import STAGES, RoundPaths, round_paths  # noqa: F401 (re-exported)

@dataclass
class RoundsResult:
    run_dir: Path
    rows: list[dict]  # rounds.jsonl
    report: Path | None


def run_rlhf(config: RoundsConfig) -> RoundsResult:
    """The ``tether rlhf`` command: prepare the run directory, run the rounds, write the report."""
    from tether.rounds.summary import write_rounds_report

    labeler, config = _check_and_resolve(config)
    run = prepare_run_dir(config)
    try:
        rows = run_rounds(config, run, labeler)
    except (KeyboardInterrupt, RunStopped):  # what was finished is kept: say how to go on from it
        print(f"[rlhf] stopped; finished stages are kept. Continue with: tether rlhf --resume {run}",
              file=sys.stderr, flush=True)
        raise
    report = write_rounds_report(run, rows, config.rounds)
    return RoundsResult(run, rows, report)


def _check_and_resolve(config: RoundsConfig) -> tuple[Callable | None, RoundsConfig]:
    """Load user functions before any model (a typo fails in a second), resolve the precision."""
    from tether.labeling.simulated import load_labeler
    from tether.models.loading import resolve_device
    from tether.rollout.rewards import load_function
    from tether.utils.precision import resolve_precision

    labeler = load_labeler(config.labeler) if config.labeler else None
    if labeler is None and not config.labelers and config.label_db is None and config.resume is None:
        raise TetherError("who labels? set labeler=module:function (a simulated labeler), or name the people in "
                          "labelers (e.g. labelers=[alice,bob]: each gets a token for the labeling page)")
    if config.gold:
        load_function(config.gold, "gold score function")
    precision = resolve_precision(config.precision, resolve_device(config.device))
    return labeler, replace(config, precision=precision)


def prepare_run_dir(config: RoundsConfig) -> Path:
    name = config.run_name or time.strftime("rlhf-%Y%m%d-%H%M%S")
    run = Path(config.output_dir) / name
    marker = run / "rlhf.yaml"
    if run.exists() and any(run.iterdir()):
        if not marker.exists() and (config.resume or config.overwrite):
            raise TetherError(f"{run} exists and is not a tether rlhf run (no rlhf.yaml): refusing to "
                              + ("continue" if config.resume else "delete") + " it")
        if config.resume == "auto":
            print(f"[rlhf] continuing {run}", flush=True)
        elif config.overwrite:
            shutil.rmtree(run)
        else:
            raise TetherError(f"{run} already exists; continue it with `tether rlhf --resume {run}` (resume=auto), "
                              "replace it with overwrite=true, or choose another run_name")
    run.mkdir(parents=True, exist_ok=True)
    from tether.train.run_dir import write_atomic

    saved = replace(config, run_name=name, resume=None, overwrite=False)  # the run's config, not how it was started
    write_atomic(marker, yaml.safe_dump(asdict(saved), sort_keys=False))
    return run


def run_rounds(config: RoundsConfig, run: Path, labeler: Callable | None) -> list[dict]:
    """Every round's unfinished stages, in order; returns the rows of rounds.jsonl. ``run``
    exists (``prepare_run_dir``, or ``tether demo``'s own directory)."""
    from tether.labeling.store import Store
    from tether.rounds.labels import collect_round_labels, labeling_page
    from tether.rounds.summary import write_rounds_jsonl

    train_prompts, eval_file = split_prompts(config, run)
    store = Store(Path(config.label_db) if config.label_db else run / "labels.sqlite", create=True)
    with labeling_page(config, store):
        for r in range(1, config.rounds + 1):
            paths = round_paths(run, r)
            stage = paths.next_stage()
            if stage == len(STAGES):
                continue
            print(f"[rlhf] round {r} of {config.rounds}: " + (f"resuming at {STAGES[stage]}" if stage else "starting"),
                  flush=True)
            paths.dir.mkdir(parents=True, exist_ok=True)
            if stage <= STAGES.index("sample"):
                prompts = [train_prompts[i % len(train_prompts)] for i in config.label_prompt_range(r)]
                sample_round_tasks(config, r, _policy_of_round(run, r, config), prompts, paths.tasks)
            if stage <= STAGES.index("label"):
                collect_round_labels(config, store, r, paths.tasks, paths.preferences, paths.labels, labeler)
            if stage <= STAGES.index("reward"):
                train_round_reward(config, paths)
            require_learned(config, paths)
            train_round_policy(config, run, paths, eval_file)  # stage "ppo": every earlier stage leads to it
            write_rounds_jsonl(run, config.rounds)
    return write_rounds_jsonl(run, config.rounds)


def split_prompts(config: RoundsConfig, run: Path) -> tuple[list, Path | None]:
    """(training prompts, held-out prompts file). The first ``eval_samples`` held-out prompts
    are written to ``<run>/eval_prompts.jsonl`` and kept out of labeling and training."""
    from tether.rollout.prompts import resolve_prompts
    from tether.train.evaluation import prompt_key
    from tether.train.run_dir import write_atomic

    prompts = resolve_prompts(config.prompts)
    if config.eval_prompts is None:
        return prompts, None
    held = resolve_prompts(config.eval_prompts)[: config.eval_samples]
    keys = {prompt_key(p) for p in held}
    train = [p for p in prompts if prompt_key(p) not in keys]
    if not train:
        raise TetherError(f"every prompt of {config.prompts} is also in eval_prompts ({config.eval_prompts}); "
                          "give eval_prompts a held-out set")
    path = run / "eval_prompts.jsonl"
    write_atomic(path, "".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in held))
    return train, path


def _policy_of_round(run: Path, round_: int, config: RoundsConfig) -> str:
    """The policy round ``round_`` samples from and continues: the SFT model, then the last round's."""
    return config.model if round_ == 1 else str(round_paths(run, round_ - 1).policy)


# ----- 1. sample -------------------------------------------------------------------------------


def sample_round_tasks(config: RoundsConfig, round_: int, policy: str, prompts: list, path: Path) -> None:
    """K responses per prompt from ``policy``, every pair of them one task of the round (as
    ``tether demo``'s step 1), each marked with its round."""
    from tether.data.templates import prompt_text
    from tether.labeling.tasks import pair_tasks, write_tasks
    from tether.rollout.sampling import sample_responses

    texts = [prompt_text(p) for p in prompts]
    with phase_progress(f"round {round_}: sample", total=len(texts), quiet=True if config.quiet else None) as bar:
        samples, truncated = sample_responses(
            policy, texts, k=config.responses_per_prompt, max_new_tokens=config.pair_max_new_tokens,
            temperature=config.pair_temperature, seed=config.seed + round_ - 1, batch_size=config.sample_batch_size,
            device=config.device, precision=config.precision, on_batch=bar.advance, return_truncated=True)
    # the round in the id as well: a later round that samples the same texts for a prompt gets its own task
    tasks = [replace(t, id=f"r{round_}-{t.id}", round=round_) for t in pair_tasks(texts, samples, truncated)]
    write_tasks(tasks, path)


# ----- 3. reward model -------------------------------------------------------------------------


def train_round_reward(config: RoundsConfig, paths: RoundPaths) -> None:
    """The round's reward model, trained afresh from the SFT backbone on every label so far,
    rather than continued from the last round's weights: Bai et al. (2022, sec. 4.5) train new
    preference models on all the data collected so far at each iteration, and Touvron et al.
    (2023, sec. 3.2.2) train theirs for a single epoch because more epochs over-fit, which
    continuing would do to the earlier rounds' labels. A fresh model also keeps the held-out
    accuracy honest: the held-out prompts are drawn anew from all labels each round, and weights
    trained on last round's split would have seen some of them."""
    from tether.train.reward_stage import train_reward

    if paths.rm.exists():  # stopped mid-training: start the (short) reward-model stage again
        shutil.rmtree(paths.rm)
    train_reward(config, paths.preferences, paths.dir)


def require_learned(config: RoundsConfig, paths: RoundPaths) -> None:
    """With ``require_learned_reward``, stop before PPO when the round's reward model is not
    above chance (train-rm has said so already)."""
    verdict_file = paths.rm / "rm_verdict.json"
    if not config.require_learned_reward or not verdict_file.exists():
        return
    verdict = json.loads(verdict_file.read_text(encoding="utf-8"))
    if not verdict["learned"]:
        lo, hi = verdict["ci95"]
        raise TetherError(
            f"round {paths.round}: the reward model's held-out accuracy {verdict['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] "
            "is not above chance, and require_learned_reward=true stops before PPO; label more prompts, or go on "
            f"with `tether rlhf --resume {paths.dir.parent} require_learned_reward=false`")


# ----- 4. PPO ----------------------------------------------------------------------------------


def train_round_policy(config: RoundsConfig, run: Path, paths: RoundPaths, eval_file: Path | None) -> Path:
    """PPO for the round's share of the iterations, from round r-1's policy and critic (round
    1: the SFT model, and a critic initialised from the reward model), with the SFT model as
    the reference in every round: the KL penalty keeps the policy near the SFT model's
    distribution (Ouyang et al. 2022, eq. 2), so the drift stays bounded over all rounds
    instead of adding up from round to round. A run stopped mid-way continues from its
    checkpoint (resume=auto)."""
    from tether.train.ppo import train_ppo
    from tether.train.ppo_config import PPOConfig

    iterations = config.share(config.ppo_iterations, paths.round)
    previous = round_paths(run, paths.round - 1) if paths.round > 1 else None
    ppo_config = PPOConfig(
        policy=_policy_of_round(run, paths.round, config), reference=config.model,
        reward_model=str(paths.reward_model), critic="separate",
        critic_model=str(previous.critic) if previous else None,
        prompts=config.prompts, eval_prompts=str(eval_file) if eval_file else None, eval_every=iterations,
        gold=config.gold, total_iterations=iterations, batch_size=config.batch_size, ppo_epochs=config.ppo_epochs,
        mini_batch_size=config.mini_batch_size, micro_batch_size=config.micro_batch_size,
        forward_batch_size=config.batch_size, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
        learning_rate=config.learning_rate, critic_learning_rate=config.critic_learning_rate,
        kl_coef=config.kl_coef, kl_target=config.kl_target, missing_eos_penalty=config.missing_eos_penalty,
        seed=config.seed + paths.round - 1, device=config.device, precision=config.precision,
        checkpoint_every=config.checkpoint_every, output_dir=str(paths.dir), run_name="ppo", resume="auto",
        quiet=bool(config.quiet))
    print(f"[rlhf] round {paths.round}: PPO for {iterations} iterations from {ppo_config.policy}", file=sys.stderr,
          flush=True)
    return train_ppo(ppo_config)
