"""Continuing an online run: from the command line (``tether ppo --resume RUN_DIR``) or from
Python (``tether.PPO.resume(RUN_DIR, reward=...)``), both with the run's own config.yaml.

A reward given from Python (``tether.PPO(config, reward=...)``) is no field of the config, so
config.yaml cannot hold it and the command line cannot rebuild it. The run directory keeps what
can be said of it in ``python_reward.json``: how it was given (one source, a list, a dict) and
each source's metric name, kind and what it named (a callable's ``module:qualname``, or the
source string). With it a command-line resume says exactly which Python call continues the run,
and a resume from Python checks that it was given the same sources under the same names (the
``reward/<name>`` rows of metrics.jsonl go on under them)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tether.config import load_config
from tether.errors import ConfigError

if TYPE_CHECKING:  # the command line imports this module: torch (behind the rewards) only when a run starts
    from tether.rollout.rewards import RewardSpec

# What may change when a run is continued; anything else would not be the same run.
RESUME_OVERRIDES = ("total_iterations", "checkpoint_every", "keep_checkpoints", "quiet", "max_consecutive_skips")
PYTHON_REWARD = "python_reward.json"


def resumed_config(run_dir: str | Path, overrides: list[str] = (), fields: dict[str, Any] | None = None):
    """RUN_DIR's config.yaml with ``resume`` set to it, and the fields a resume may change:
    ``overrides`` as ``key=value`` (the command line) or ``fields`` as values (Python)."""
    from tether.train.ppo_config import PPOConfig

    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.yaml there; pass the run directory (runs/<run_name>)")
    changes = [(o.split("=", 1)[0], o) for o in overrides] + [(name, name) for name in fields or {}]
    for name, shown in changes:
        if name not in RESUME_OVERRIDES:
            raise ConfigError(f"--resume keeps the run's config; only {', '.join(RESUME_OVERRIDES)} may change, "
                              f"not '{shown}' (start a new run for that)")
    config = load_config(PPOConfig, config_path, [*overrides, f"resume={run_dir}"])
    return dataclasses.replace(config, **fields) if fields else config


def check_reward_given(config, run_dir: str | Path, from_python: bool = False) -> None:
    """A run whose reward was given from Python is continued only by giving it again, from
    Python: one line with the call that does it, for a resume from the command line (or from
    Python without ``reward=``)."""
    from tether.rollout.rewards import config_sources

    if config_sources(config.reward_settings):
        return
    where = f"tether.PPO.resume({str(run_dir)!r})" if from_python else f"--resume {run_dir}"
    raise ConfigError(f"{where}: {_given_from_python(run_dir)}; config.yaml cannot hold it, so continue the run "
                      f"from Python with the same reward: {python_resume_call(run_dir)}")


def resume_command(run_dir: str | Path, reward_from_python: bool) -> str:
    """How to continue a stopped run: the command line, or the Python call when the reward
    was given from Python."""
    return python_resume_call(run_dir) if reward_from_python else f"tether ppo --resume {run_dir}"


def python_resume_call(run_dir: str | Path) -> str:
    """``tether.PPO.resume('runs/x', reward=brevity).train()``, the reward written as it was
    given where the run recorded it."""
    record = read_python_reward(run_dir)
    reward = _reward_expression(record) if record else "<the reward given to tether.PPO>"
    return f"tether.PPO.resume({str(run_dir)!r}, reward={reward}).train()"


# ---- the record --------------------------------------------------------------------------------


def record_python_reward(run_dir: Path, reward: Any, specs: list[RewardSpec]) -> None:
    """Write ``python_reward.json`` for a run whose reward was given from Python."""
    given_as = "dict" if isinstance(reward, dict) else "list" if isinstance(reward, (list, tuple)) else "one"
    sources = [{"name": spec.name, "kind": spec.kind, "source": _described(spec.source),
                "callable": callable(spec.source)} for spec in specs]
    text = json.dumps({"given_as": given_as, "sources": sources}, indent=1, ensure_ascii=False) + "\n"
    (Path(run_dir) / PYTHON_REWARD).write_text(text, encoding="utf-8")


def read_python_reward(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / PYTHON_REWARD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent (or not readable): say what can be said without it
        return None
    well_formed = isinstance(record, dict) and isinstance(record.get("sources"), list) and all(
        isinstance(s, dict) and {"name", "kind", "source"} <= s.keys() for s in record["sources"])
    return record if well_formed and record["sources"] else None


def check_same_python_reward(run_dir: Path, specs: list[RewardSpec]) -> None:
    """A resume from Python continues the run with the sources it was trained with: the same
    names, kinds and number, in order (a callable's body cannot be compared)."""
    record = read_python_reward(run_dir)
    if record is None:
        return
    recorded = [(s["name"], s["kind"]) for s in record["sources"]]
    given = [(spec.name, spec.kind) for spec in specs]
    if given != recorded:
        raise ConfigError(f"{run_dir} was trained with the reward sources {_listed(recorded)}, but the resume was "
                          f"given {_listed(given)}; resume with the same reward: {python_resume_call(run_dir)}")


def _described(source: str | Callable) -> str:
    if isinstance(source, str):
        return source
    module = getattr(source, "__module__", None) or type(source).__module__
    name = getattr(source, "__qualname__", None) or type(source).__qualname__
    return f"{module}:{name}"


def _reward_expression(record: dict) -> str:
    sources = record["sources"]
    values = [_python_value(s) for s in sources]
    if record["given_as"] == "dict":
        return "{" + ", ".join(f"{s['name']!r}: {v}" for s, v in zip(sources, values)) + "}"
    if record["given_as"] == "list":
        return "[" + ", ".join(values) + "]"
    return values[0]


def _python_value(source: dict) -> str:
    """The source as the caller wrote it: a callable by its name, a string quoted."""
    if not source.get("callable"):
        return repr(source["source"])
    name = source["source"].rpartition(":")[2].rpartition(".")[2]
    return "(lambda prompts, responses: ...)" if name == "<lambda>" else name


def _given_from_python(run_dir: str | Path) -> str:
    record = read_python_reward(run_dir)
    if record is None:
        return "the run's reward was given from Python (tether.PPO(config, reward=...))"
    return f"the run's reward was given from Python ({_listed([(s['name'], s['kind']) for s in record['sources']])})"


def _listed(sources: list[tuple[str, str]]) -> str:
    return ", ".join(f"{name} ({kind})" for name, kind in sources) or "none"
