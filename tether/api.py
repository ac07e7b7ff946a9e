"""tether from Python: one small object per training command, built from its typed config (the
same dataclass the command's YAML fills), whose ``train()`` runs the command's own function.

    run_dir = tether.PPO(tether.PPOConfig(total_iterations=20), reward=my_reward).train()

``PPO`` adds what a YAML file cannot hold: reward sources as Python callables and callbacks
per iteration (tether.train.run_hooks); ``SFT``, ``RewardModel`` and ``DPO`` take callbacks per
step. Keyword fields replace those of the config given (or of
the defaults), validated as the config's own: ``tether.PPO(config, total_iterations=2)``.
Guide with examples the tests run: docs/python-api.md.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Callable, Sequence

from tether.errors import ConfigError


def _configured(config_class: type, config: Any, fields: dict[str, Any]):
    """``config`` (or the defaults) with ``fields`` replaced; an unknown name is a ConfigError
    with a suggestion, as a YAML key would be."""
    if config is not None and not isinstance(config, config_class):
        raise ConfigError(f"expected a {config_class.__name__}, got {type(config).__name__}")
    known = {f.name for f in dataclasses.fields(config_class) if f.init}
    for name in fields:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(f'unknown config key "{name}"' + (f" (did you mean '{close[0]}'?)" if close else ""))
    if config is None:
        return config_class(**fields)
    return dataclasses.replace(config, **fields) if fields else config


class PPO:
    """Online RLHF (PPO, or another row of the algorithm table through ``algorithm=``).

    ``reward``: instead of the config's reward fields, a callable ``fn(prompts, responses) ->
    list[float]``, a source string (``module:function``, a reward-model folder, an ``http://``
    reward server), a list of these (weighted by ``reward_weights``), or a dict name -> source
    (the names become the ``reward/<name>`` metrics). ``callbacks``: ``fn(iteration, metrics)``
    after each iteration; returning True ends the run there with its policy saved.
    ``train()`` returns the run directory."""

    def __init__(self, config=None, *, reward: Any = None, callbacks: Sequence[Callable] = (), **fields: Any):
        from tether.train.ppo_config import PPOConfig

        self.config = _configured(PPOConfig, config, fields)
        self.reward = reward
        self.callbacks = list(callbacks)

    @classmethod
    def resume(cls, run_dir: str | Path, *, reward: Any = None, callbacks: Sequence[Callable] = (),
               **fields: Any) -> "PPO":
        """Continue ``run_dir`` from its newest checkpoint with its own config.yaml, as ``tether
        ppo --resume`` does. ``reward``: a reward given from Python, which config.yaml cannot
        hold, again (the same sources under the same names; checked); ``fields``: those a resume
        may change (``total_iterations``, ``checkpoint_every``, ``keep_checkpoints``, ``quiet``,
        ``max_consecutive_skips``)."""
        from tether.train.ppo_resume import check_reward_given, resumed_config

        config = resumed_config(run_dir, fields=fields)
        if reward is None:
            check_reward_given(config, run_dir, from_python=True)
        return cls(config, reward=reward, callbacks=callbacks)

    def train(self) -> Path:
        from tether.train.ppo import train_ppo

        return train_ppo(self.config, reward=self.reward, callbacks=self.callbacks)


class _SupervisedCommand:
    """SFT, RewardModel and DPO: a command's config and the callbacks per step; ``train()`` runs
    the command's training function on them."""

    @staticmethod
    def _command() -> tuple[type, Callable]:
        """(the config class, the training function), imported when first used."""
        raise NotImplementedError

    def __init__(self, config=None, *, callbacks: Sequence[Callable] = (), **fields: Any):
        config_class, _ = self._command()
        self.config = _configured(config_class, config, fields)
        self.callbacks = list(callbacks)

    def train(self) -> Path:
        _, train = self._command()
        return train(self.config, callbacks=self.callbacks)


class SFT(_SupervisedCommand):
    """Supervised fine-tuning on demonstrations; ``train()`` returns ``<run>/policy``.
    ``callbacks``: ``fn(step, metrics)`` after each step; returning True ends the run there with
    its model saved."""

    @staticmethod
    def _command():
        from tether.train.sft import SFTConfig, train_sft

        return SFTConfig, train_sft


class RewardModel(_SupervisedCommand):
    """A Bradley-Terry reward model on preferences; ``train()`` returns ``<run>/reward_model``,
    which ``PPO(reward=...)`` and ``PPOConfig(reward_model=...)`` take. ``callbacks``: as
    ``SFT``'s; after a stop the model is judged, normalised and saved as after the last step."""

    @staticmethod
    def _command():
        from tether.train.reward_model import RewardModelConfig, train_reward_model

        return RewardModelConfig, train_reward_model


class DPO(_SupervisedCommand):
    """Direct preference optimisation; ``train()`` returns the run directory (its ``policy/``).
    ``callbacks``: as ``SFT``'s."""

    @staticmethod
    def _command():
        from tether.train.dpo import DPOConfig, train_dpo

        return DPOConfig, train_dpo


__all__ = ["PPO", "SFT", "RewardModel", "DPO"]
