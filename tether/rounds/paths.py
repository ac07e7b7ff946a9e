"""Where each round of ``tether rlhf`` keeps its files, and which of its stages are done."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["STAGES", "RoundPaths", "round_paths"]

STAGES = ("sample", "label", "reward", "ppo")


@dataclass(frozen=True)
class RoundPaths:
    """Where round r keeps its data, reward model and policy."""

    round: int
    dir: Path

    @property
    def tasks(self) -> Path:
        return self.dir / "tasks.jsonl"

    @property
    def labels(self) -> Path:
        return self.dir / "labels.json"

    @property
    def preferences(self) -> Path:
        return self.dir / "preferences.jsonl"

    @property
    def rm(self) -> Path:
        return self.dir / "rm"

    @property
    def reward_model(self) -> Path:
        return self.rm / "reward_model"

    @property
    def ppo(self) -> Path:
        return self.dir / "ppo"

    @property
    def policy(self) -> Path:
        return self.ppo / "policy"

    @property
    def critic(self) -> Path:
        return self.ppo / "critic"

    def next_stage(self) -> int:
        """Index in STAGES of the first stage whose artifact is missing; len(STAGES): done."""
        done = [self.tasks.is_file(), self.labels.is_file(), self.reward_model.is_dir(),
                self.policy.is_dir() and self.critic.is_dir()]
        return done.index(False) if False in done else len(STAGES)


def round_paths(run: Path, round_: int) -> RoundPaths:
    return RoundPaths(round_, run / f"round_{round_}")
