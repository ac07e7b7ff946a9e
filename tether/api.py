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

    def train(self) -> Path:
        from tether.train.ppo import train_ppo

        return train_ppo(self.config, reward=self.reward, callbacks=self.callbacks)


class SFT:
    """Supervised fine-tuning on demonstrations; ``train()`` returns ``<run>/policy``.
    ``callbacks``: ``fn(step, metrics)`` after each step; returning True ends the run there with
    its model saved."""

    def __init__(self, config=None, *, callbacks: Sequence[Callable] = (), **fields: Any):
        from tether.train.sft import SFTConfig

        self.config = _configured(SFTConfig, config, fields)
        self.callbacks = list(callbacks)

    def train(self) -> Path:
        from tether.train.sft import train_sft

        return train_sft(self.config, callbacks=self.callbacks)


class RewardModel:
    """A Bradley-Terry reward model on preferences; ``train()`` returns ``<run>/reward_model``,
    which ``PPO(reward=...)`` and ``PPOConfig(reward_model=...)`` take. ``callbacks``: as
    ``SFT``'s; after a stop the model is judged, normalised and saved as after the last step."""

    def __init__(self, config=None, *, callbacks: Sequence[Callable] = (), **fields: Any):
        from tether.train.reward_model import RewardModelConfig

        self.config = _configured(RewardModelConfig, config, fields)
        self.callbacks = list(callbacks)

    def train(self) -> Path:
        from tether.train.reward_model import train_reward_model

        return train_reward_model(self.config, callbacks=self.callbacks)


class DPO:
    """Direct preference optimisation; ``train()`` returns the run directory (its ``policy/``).
    ``callbacks``: as ``SFT``'s."""

    def __init__(self, config=None, *, callbacks: Sequence[Callable] = (), **fields: Any):
        from tether.train.dpo import DPOConfig

        self.config = _configured(DPOConfig, config, fields)
        self.callbacks = list(callbacks)

    def train(self) -> Path:
        from tether.train.dpo import train_dpo

        return train_dpo(self.config, callbacks=self.callbacks)


__all__ = ["PPO", "SFT", "RewardModel", "DPO"]
