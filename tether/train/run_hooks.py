"""What a caller adds to an online run beyond its config: reward sources given as Python callables
and per-iteration callbacks (tether.PPO; docs/python-api.md), plus the reward's per-source
metrics and the console's sample table, which the loop in ``tether.train.ppo`` calls here.

A callback is ``callback(iteration: int, metrics: dict[str, float]) -> bool | None``, called on
every rank after each iteration's metrics are logged (with eval/* on evaluation iterations).
Returning True stops the run cleanly: the loop ends after that iteration and the policy is
saved as the final one, as at the last iteration (a SIGINT, by contrast, leaves a checkpoint).
The supervised commands (SFT, reward model, DPO) call the same callbacks after each step
(tether.train.supervised).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tether.rollout.rewards import RewardSettings, RewardSpec, check_reward_specs, reward_specs

Callback = Callable[[int, dict], Any]


@dataclass
class RunHooks:
    rewards: list[RewardSpec]  # the run's named, weighted reward sources
    callbacks: Sequence[Callback] = ()
    sample_table_every: int = 0  # iterations between sample tables on the console; 0 = none
    python_reward: Any = None  # the reward as given from Python (None: the config's), for resume (ppo_resume)
    stopped_at: int | None = field(default=None, init=False)  # the iteration a callback stopped the run after

    @classmethod
    def create(cls, settings: RewardSettings, sample_table_every: int, reward: Any = None,
               callbacks: Sequence[Callback] = ()) -> "RunHooks":
        """The config's reward sources, or ``reward`` (callables, source strings, a list or a
        dict name -> source) when given; checked before any model loads."""
        specs = reward_specs(settings, reward)
        if reward is not None:
            check_reward_specs(specs)  # the config's own sources are checked by preflight
        return cls(specs, checked_callbacks(callbacks), sample_table_every, reward)

    # A reward given from Python is no part of config.yaml: a new run records what it was
    # (python_reward.json), a resumed one checks that it was given the same sources (ppo_resume).
    def record_python_reward(self, run_dir) -> None:
        from tether.train.ppo_resume import PYTHON_REWARD, record_python_reward

        if self.python_reward is not None:
            record_python_reward(run_dir, self.python_reward, self.rewards)
        else:  # a run replaced (overwrite=true) may have left one behind
            (Path(run_dir) / PYTHON_REWARD).unlink(missing_ok=True)

    def check_resumed_reward(self, run_dir) -> None:
        from tether.train.ppo_resume import check_same_python_reward

        if self.python_reward is not None:
            check_same_python_reward(run_dir, self.rewards)

    def after_iteration(self, iteration: int, metrics: dict[str, float], dist) -> bool:
        """Run the callbacks; True when one of them (on any rank) asks to stop."""
        wants_stop = callbacks_ask_to_stop(self.callbacks, iteration, metrics)
        stop = dist.any_true(wants_stop) if self.callbacks else False
        if stop:
            self.stopped_at = iteration
        return stop

    def report_stop(self, total_iterations: int, dist) -> None:
        if self.stopped_at is not None and dist.is_main:
            print(f"a callback stopped the run after iteration {self.stopped_at} of {total_iterations}; "
                  "that iteration's policy is saved as the final one", file=sys.stderr)

    def show_samples(self, iteration: int, rows: list[dict], progress, dist) -> None:
        """The sample table, every ``sample_table_every`` iterations, printed by rank 0 only."""
        if self.sample_table_every and iteration % self.sample_table_every == 0 and rows and dist.is_main:
            from tether.reporting.sample_table import sample_table

            progress.show(sample_table(iteration, rows))


def checked_callbacks(callbacks: Sequence[Callback]) -> tuple[Callback, ...]:
    """The callbacks, each checked to be callable before any model loads."""
    for callback in callbacks:
        if not callable(callback):
            from tether.errors import ConfigError

            raise ConfigError(f"callbacks must be callables fn(iteration, metrics); got {type(callback).__name__}")
    return tuple(callbacks)


def callbacks_ask_to_stop(callbacks: Sequence[Callback], iteration: int, metrics: dict[str, float]) -> bool:
    """Run every callback on a copy of the row (all run, even after one asks to stop); True
    when one of them returns True."""
    wants_stop = False
    for callback in callbacks:
        wants_stop = bool(callback(iteration, dict(metrics))) or wants_stop
    return wants_stop


def reward_components(reward) -> dict:
    """Each reward source's (B,) scores from the latest scoring call, taken right after it (the
    held-out evaluation scores with the same reward later in the iteration)."""
    return dict(getattr(reward, "components", {}))


def reward_metrics(components: dict) -> dict[str, float]:
    """``reward/<name>``: each reward source's mean (unweighted) score over the batch."""
    return {f"reward/{name}": scores.mean().item() for name, scores in components.items()}


def with_reward_components(rows: list[dict], components: dict) -> list[dict]:
    """Sample rows with each source's score (``rewards``: name -> score) when there are several."""
    if len(components) < 2:
        return rows
    return [{**row, "rewards": {name: scores[i].item() for name, scores in components.items()}}
            for i, row in enumerate(rows)]
