"""tether: RLHF with PPO, end to end. The Python API (docs/python-api.md):

    import tether
    tether.PPO(tether.PPOConfig(total_iterations=20), reward=my_reward).train()

Names load on first use, so that ``import tether`` (and the ``tether`` command) stays fast.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PPO": "tether.api", "SFT": "tether.api", "RewardModel": "tether.api", "DPO": "tether.api",
    "PPOConfig": "tether.train.ppo_config", "SFTConfig": "tether.train.sft",
    "RewardModelConfig": "tether.train.reward_model", "DPOConfig": "tether.train.dpo",
    "train_ppo": "tether.train.ppo", "train_sft": "tether.train.sft",
    "train_reward_model": "tether.train.reward_model", "train_dpo": "tether.train.dpo",
    "TetherError": "tether.errors", "ConfigError": "tether.errors", "DataError": "tether.errors",
    "RunStopped": "tether.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
