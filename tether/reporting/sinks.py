"""Where metrics go. ``metrics.jsonl`` and ``samples.jsonl`` in the run directory always; other
sinks (TensorBoard, W&B, MLflow) are optional and added by name (``metric_sinks``), with their
options as config fields (``SinkOptions``, shared by every training config)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Literal, Protocol

from tether.errors import ConfigError, TetherError


class MetricSink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


class JsonlSink:
    """Appends one JSON object per line and flushes each time, so a live run can be read
    (by ``tether doctor``) while it trains and a crash loses at most the line being written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}, ensure_ascii=False) + "\n")
        self._file.flush()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.write({"iteration": step, **metrics})

    def close(self) -> None:
        self._file.close()


class RunLogger:
    """Fans metrics out to every configured sink; samples go to ``samples.jsonl``."""

    def __init__(self, run_dir: Path, sinks: list[MetricSink] | None = None):
        self.run_dir = Path(run_dir)
        self.metrics = JsonlSink(self.run_dir / "metrics.jsonl")
        self.samples = JsonlSink(self.run_dir / "samples.jsonl")
        self.sinks: list[MetricSink] = [self.metrics, *(sinks or [])]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.log(step, metrics)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.samples.write({"iteration": step, **row})

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.samples.close()


class NullLogger:
    """RunLogger's interface writing nothing: ranks other than 0 under torchrun."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass


# ---- options, checked when the config is parsed ------------------------------------------


@dataclasses.dataclass(frozen=True)
class SinkOptions:
    """The metric-sink fields of every training config (sft, train-rm, dpo, ppo and its
    variants); a config class inherits them and calls ``super().__post_init__()``."""

    metric_sinks: list[str] | str | None = None  # extra sinks: tensorboard, wandb, mlflow (a name, a list, or "a,b")
    tensorboard_dir: str | None = None  # TensorBoard event files (default: <run>/tensorboard)
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"  # offline: `wandb sync <run>/wandb/offline-run-*` later
    wandb_project: str = "tether"
    wandb_entity: str | None = None  # W&B team or user (default: your default entity)
    mlflow_tracking_uri: str | None = None  # default: sqlite:///<run>/mlflow.db; or http://host:5000, databricks, ...
    mlflow_experiment: str = "tether"

    def __post_init__(self) -> None:
        # normalised here, once: "tensorboard" and "tensorboard,wandb" mean the lists
        object.__setattr__(self, "metric_sinks", check_sink_names(self.metric_sinks))


SINK_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # sink -> module to find


def check_sink_names(names: list[str] | str | None) -> list[str] | None:
    """The sink names as a lower-case list without duplicates ("jsonl" dropped: always on).
    A ConfigError for an unknown name or a package that is not installed, so both are
    reported before a run directory is made or a model loaded."""
    if names is None:
        return None
    raw = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for item in raw:
        name = str(item).strip().lower()
        if name in ("", "jsonl") or name in out:
            continue
        if name not in SINK_PACKAGES:
            raise ConfigError(f"unknown metric sink '{item}': choose from {', '.join(['jsonl', *SINK_PACKAGES])}")
        if not _installed(SINK_PACKAGES[name]) and disabled_by_environment(name) is None:
            raise ConfigError(f"metric sink '{name}' needs the '{name}' package: pip install 'tether[{name}]'")
        out.append(name)
    return out


def disabled_by_environment(sink: str) -> str | None:
    """The environment setting that turns ``sink`` off, or None. ``WANDB_MODE=disabled`` is W&B's
    own switch (wandb/env.py) and CI jobs set it to keep every run off W&B; tether passes
    ``mode=`` to ``wandb.init`` explicitly, which outranks the variable, so it is honoured here."""
    if sink == "wandb" and os.environ.get("WANDB_MODE") == "disabled":
        return "WANDB_MODE=disabled"
    return None


def _installed(module: str) -> bool:
    if module in sys.modules:  # imported already (or blocked: None)
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


# ---- optional sinks -----------------------------------------------------------------------
# Each imports its package lazily (architecture principle 7: optional services at the edge),
# and raises a TetherError naming the extra to install when the package is missing.


def _import_optional(module: str, extra: str, sink: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TetherError(
            f"the {sink} metric sink needs the '{extra}' package: pip install 'tether[{extra}]' ({exc})"
        ) from None


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries as floats (bools too); strings and other values are left out."""
    out = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, (bool, int, float)):
            out[key] = float(value)
    return out


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _run_name(run_dir: Path, config: dict[str, Any]) -> str:
    return str(config.get("run_name") or Path(run_dir).resolve().name)


class TensorBoardSink:
    """Scalars to ``RUN_DIR/tensorboard`` (or config ``tensorboard_dir``) through
    torch.utils.tensorboard, which needs the ``tensorboard`` package."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        module = _import_optional("torch.utils.tensorboard", "tensorboard", "TensorBoard")
        log_dir = Path(config.get("tensorboard_dir") or Path(run_dir) / "tensorboard")
        self.writer = module.SummaryWriter(log_dir=str(log_dir))
        if config:
            # the resolved config, readable in TensorBoard's text tab
            lines = [f"{k}: {v}" for k, v in _flatten(config).items()]
            self.writer.add_text("config", "    " + "\n    ".join(lines), 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in _scalars(metrics).items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Weights & Biases. Offline by default (config ``wandb_mode``: offline | online |
    disabled), so it works without network; ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads
    later. Config keys: ``wandb_project`` (default "tether"), ``wandb_entity``, ``run_name``."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        wandb = _import_optional("wandb", "wandb", "Weights & Biases")
        self.run = wandb.init(
            project=config.get("wandb_project", "tether"),
            entity=config.get("wandb_entity"),
            name=_run_name(run_dir, config),
            dir=str(run_dir),
            mode=config.get("wandb_mode", "offline"),
            config=_flatten(config),
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(_scalars(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class MlflowSink:
    """MLflow. A SQLite store at ``RUN_DIR/mlflow.db`` by default (MLflow 3 refuses a plain
    file store unless told to allow it; ``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db``
    to browse); config ``mlflow_tracking_uri`` for a server or another store, and
    ``mlflow_experiment`` (default "tether")."""

    # MLflow rejects parameter values past a length limit (500 chars in older servers)
    MAX_PARAM_CHARS = 250

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        self.mlflow = _import_optional("mlflow", "mlflow", "MLflow")
        run_dir = Path(run_dir).resolve()
        uri = config.get("mlflow_tracking_uri") or f"sqlite:///{run_dir / 'mlflow.db'}"
        experiment = config.get("mlflow_experiment") or "tether"
        self.mlflow.set_tracking_uri(uri)
        with _quiet_loggers("mlflow", "alembic"):  # a new database logs its table creation at INFO
            if not config.get("mlflow_tracking_uri") and self.mlflow.get_experiment_by_name(experiment) is None:
                # artifacts beside the database, not in ./mlruns of whatever folder the run started in
                self.mlflow.create_experiment(experiment, artifact_location=(run_dir / "mlartifacts").as_uri())
            self.mlflow.set_experiment(experiment)
        self.mlflow.start_run(run_name=_run_name(run_dir, config))
        params = {k: str(v)[: self.MAX_PARAM_CHARS] for k, v in _flatten(config).items()}
        if params:
            self.mlflow.log_params(params)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics(_scalars(metrics), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


OPTIONAL_SINKS: dict[str, type] = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "mlflow": MlflowSink}


def make_sinks(names: list[str] | str, run_dir: Path, config: dict[str, Any]) -> list[MetricSink]:
    """The optional sinks named in ``names`` (case-insensitive; "jsonl" is accepted and
    skipped: RunLogger always writes metrics.jsonl). ``config`` is the resolved run config,
    logged as hyper-parameters; it also carries the sinks' own keys (``SinkOptions``).
    Raises TetherError for an unknown name, a missing package, or a sink that fails to start."""
    sinks: list[MetricSink] = []
    seen: set[str] = set()
    for raw in names.split(",") if isinstance(names, str) else names:
        name = str(raw).strip().lower()
        if name in ("", "jsonl") or name in seen:
            continue
        if name not in OPTIONAL_SINKS:
            known = ", ".join(["jsonl", *OPTIONAL_SINKS])
            raise TetherError(f"unknown metric sink '{raw}': choose from {known}")
        seen.add(name)
        if (setting := disabled_by_environment(name)) is not None:
            print(f"metric sink {name}: disabled by the environment ({setting}); no run is created there",
                  file=sys.stderr)
            continue
        try:
            sinks.append(OPTIONAL_SINKS[name](Path(run_dir), dict(config or {})))
        except Exception as exc:
            for sink in sinks:  # do not leave half-opened runs behind
                sink.close()
            if isinstance(exc, TetherError):
                raise
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise TetherError(f"the {name} metric sink failed to start: {type(exc).__name__}: {first_line}") from None
    return sinks
