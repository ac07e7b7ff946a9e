"""Optional metric sinks: a clear TetherError naming the extra when the package is missing,
and the sink logic exercised against fake modules injected in sys.modules."""

from __future__ import annotations

import sys
import types

import pytest

from tether.errors import ConfigError, TetherError
from tether.diagnostics.run import read_jsonl
from tether.reporting.sinks import JsonlSink, MlflowSink, RunLogger, TensorBoardSink, WandbSink, make_sinks

CONFIG = {"kl_coef": 0.05, "model": {"name": "tiny", "dtype": "bf16"}, "run_name": "r1"}


class Recorder:
    """Stands in for a package: records every call as (name, args, kwargs)."""

    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []

    def record(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return self

        return call

    def names(self):
        return [c[0] for c in self.calls]

    def find(self, name):
        return [c for c in self.calls if c[0] == name]


@pytest.mark.parametrize(
    "name, module, extra",
    [("tensorboard", "torch.utils.tensorboard", "tensorboard"), ("wandb", "wandb", "wandb"), ("mlflow", "mlflow", "mlflow")],
)
def test_missing_package_names_the_extra(monkeypatch, tmp_path, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(TetherError, match=rf"pip install 'tether\[{extra}\]'"):
        make_sinks([name], tmp_path, {})


def test_unknown_sink_and_jsonl_is_implicit(tmp_path):
    with pytest.raises(TetherError, match="unknown metric sink 'neptune': choose from jsonl, tensorboard, wandb, mlflow"):
        make_sinks(["neptune"], tmp_path, {})
    assert make_sinks(["jsonl", "JSONL", ""], tmp_path, {}) == []


def test_tensorboard_sink_with_fake_module(monkeypatch, tmp_path):
    rec = Recorder()
    fake = types.ModuleType("torch.utils.tensorboard")

    class SummaryWriter:
        def __init__(self, log_dir):
            rec.calls.append(("SummaryWriter", (log_dir,), {}))

        add_scalar = staticmethod(rec.record("add_scalar"))
        add_text = staticmethod(rec.record("add_text"))
        flush = staticmethod(rec.record("flush"))
        close = staticmethod(rec.record("close"))

    fake.SummaryWriter = SummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    (sink,) = make_sinks(["TensorBoard"], tmp_path, CONFIG)
    assert isinstance(sink, TensorBoardSink)
    sink.log(3, {"objective/kl_k3": 1.5, "note": "text is skipped", "guard/skipped_updates": 0, "ok": True})
    sink.close()
    assert rec.calls[0] == ("SummaryWriter", (str(tmp_path / "tensorboard"),), {})
    scalars = [(c[1][0], c[1][1], c[2]["global_step"]) for c in rec.find("add_scalar")]
    assert scalars == [("objective/kl_k3", 1.5, 3), ("guard/skipped_updates", 0.0, 3), ("ok", 1.0, 3)]
    assert "model.dtype: bf16" in rec.find("add_text")[0][1][1]
    assert rec.names()[-1] == "close"


def test_wandb_sink_is_offline_by_default(monkeypatch, tmp_path):
    rec = Recorder()
    fake = types.ModuleType("wandb")
    fake.init = rec.record("init")
    rec.log, rec.finish = rec.record("log"), rec.record("finish")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    (sink,) = make_sinks(["wandb"], tmp_path, CONFIG)
    assert isinstance(sink, WandbSink)
    sink.log(7, {"objective/score_mean": 0.25})
    sink.close()
    init = rec.find("init")[0][2]
    assert init["mode"] == "offline" and init["project"] == "tether" and init["name"] == "r1"
    assert init["dir"] == str(tmp_path) and init["config"]["model.name"] == "tiny"
    assert rec.find("log")[0][1:] == (({"objective/score_mean": 0.25},), {"step": 7})
    assert rec.names()[-1] == "finish"


def test_wandb_mode_disabled_in_the_environment_creates_no_wandb_run(monkeypatch, capsys, tmp_path):
    """W&B's own off switch: tether passes ``mode=`` to ``wandb.init``, which outranks the
    variable, so the sink itself must honour it: no run, one line saying why."""
    rec = Recorder()
    fake = types.ModuleType("wandb")
    fake.init = rec.record("init")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert make_sinks(["wandb"], tmp_path, {**CONFIG, "wandb_mode": "online"}) == []
    assert rec.calls == []
    err = capsys.readouterr().err.strip()
    assert err == "metric sink wandb: disabled by the environment (WANDB_MODE=disabled); no run is created there"


def test_wandb_mode_disabled_needs_no_wandb_package(monkeypatch, capsys, tmp_path):
    """A CI job that turns W&B off runs a config naming it even where wandb is not installed."""
    from tether.config import load_config
    from tether.train.ppo_config import PPOConfig

    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    overrides = ["reward_function=tether.rollout.rules:vowel_fraction", "metric_sinks=[wandb, jsonl]"]
    with pytest.raises(ConfigError, match=r"needs the 'wandb' package"):
        load_config(PPOConfig, None, overrides)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = load_config(PPOConfig, None, overrides)
    assert config.metric_sinks == ["wandb"]
    assert make_sinks(config.metric_sinks, tmp_path, {}) == []
    assert "disabled by the environment" in capsys.readouterr().err
    assert not (tmp_path / "wandb").exists()


def test_mlflow_sink_uses_a_sqlite_store_in_the_run_dir(monkeypatch, tmp_path):
    """MLflow 3 refuses a plain file store (``file:`` URI) unless told to allow it: the default
    is a SQLite database in the run directory, with the experiment's artifacts beside it."""
    rec = Recorder()
    fake = types.ModuleType("mlflow")
    for name in ("set_tracking_uri", "create_experiment", "set_experiment", "start_run", "log_params",
                 "log_metrics", "end_run"):
        setattr(fake, name, rec.record(name))
    fake.get_experiment_by_name = lambda name: rec.calls.append(("get_experiment_by_name", (name,), {}))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    (sink,) = make_sinks(["mlflow"], tmp_path, {**CONFIG, "prompt": "x" * 1000})
    assert isinstance(sink, MlflowSink)
    sink.log(2, {"losses/value_loss": 0.5})
    sink.close()
    assert rec.find("set_tracking_uri")[0][1][0] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert rec.find("create_experiment")[0][1:] == (
        ("tether",), {"artifact_location": (tmp_path.resolve() / "mlartifacts").as_uri()})
    params = rec.find("log_params")[0][1][0]
    assert params["model.dtype"] == "bf16" and len(params["prompt"]) == MlflowSink.MAX_PARAM_CHARS
    assert rec.find("log_metrics")[0][1:] == (({"losses/value_loss": 0.5},), {"step": 2})
    assert rec.names() == ["set_tracking_uri", "get_experiment_by_name", "create_experiment", "set_experiment",
                           "start_run", "log_params", "log_metrics", "end_run"]


def test_a_failing_second_sink_closes_the_first(monkeypatch, tmp_path):
    rec = Recorder()
    fake = types.ModuleType("wandb")
    fake.init = rec.record("init")
    rec.finish = rec.record("finish")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(TetherError, match="mlflow"):
        make_sinks(["wandb", "mlflow"], tmp_path, {})
    assert rec.names() == ["init", "finish"]


def test_run_logger_fans_out_to_optional_sinks(tmp_path):
    class Memory:
        def __init__(self):
            self.rows, self.closed = [], False

        def log(self, step, metrics):
            self.rows.append((step, metrics))

        def close(self):
            self.closed = True

    extra = Memory()
    logger = RunLogger(tmp_path, [extra])
    logger.log(0, {"objective/score_mean": float("nan"), "objective/kl_k3": float("inf")})
    logger.close()
    assert extra.rows == [(0, {"objective/score_mean": pytest.approx(float("nan"), nan_ok=True), "objective/kl_k3": float("inf")})]
    assert extra.closed
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"iteration": 0, "objective/score_mean": None, "objective/kl_k3": 1e308}]
    assert isinstance(logger.metrics, JsonlSink)


# -- sink options as config fields, checked when the config is parsed ----------------------
CONFIGS = [("tether.train.ppo_config", "PPOConfig", {"reward_function": "tether.rollout.rules:vowel_fraction"}), ("tether.train.sft", "SFTConfig", {"data": "d.jsonl"}),
           ("tether.train.reward_model", "RewardModelConfig", {"data": "d.jsonl"}),
           ("tether.train.dpo", "DPOConfig", {"data": "d.jsonl"})]


@pytest.mark.parametrize("module, cls, required", CONFIGS)
def test_every_training_config_takes_the_sink_options(monkeypatch, module, cls, required):
    """Each key the sinks read is a config field, and a single name (or "a,b") is a list."""
    import importlib

    from tether.config import load_config

    for package in ("tensorboard", "wandb"):
        monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    config_cls = getattr(importlib.import_module(module), cls)
    overrides = [f"{k}={v}" for k, v in required.items()] + [
        "metric_sinks=tensorboard", "wandb_mode=online", "wandb_project=p", "wandb_entity=team",
        "tensorboard_dir=/tmp/tb", "mlflow_tracking_uri=http://localhost:5000", "mlflow_experiment=e"]
    config = load_config(config_cls, None, overrides)
    assert config.metric_sinks == ["tensorboard"]
    assert (config.wandb_mode, config.wandb_project, config.wandb_entity, config.tensorboard_dir,
            config.mlflow_tracking_uri, config.mlflow_experiment) == (
        "online", "p", "team", "/tmp/tb", "http://localhost:5000", "e")
    assert load_config(config_cls, None, [*overrides[:len(required)], "metric_sinks=TensorBoard,wandb,jsonl"]
                       ).metric_sinks == ["tensorboard", "wandb"]


@pytest.mark.parametrize("sinks, message", [
    ("[neptune]", "unknown metric sink 'neptune': choose from jsonl, tensorboard, wandb, mlflow"),
    ("mlflow", "metric sink 'mlflow' needs the 'mlflow' package: pip install 'tether[mlflow]'"),
])
def test_bad_sink_is_one_line_before_the_run_directory_exists(monkeypatch, capsys, tmp_path, sinks, message):
    from tether.cli import main

    monkeypatch.setitem(sys.modules, "mlflow", None)  # not installed
    code = main(["ppo", "--config", "configs/ppo-tiny.yaml", f"output_dir={tmp_path}", "run_name=r",
                 f"metric_sinks={sinks}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_a_sink_that_fails_to_start_is_one_line(monkeypatch, tmp_path):
    """What the tracking library raises (a refused store, an unreachable server) is one line
    naming the sink, not a traceback."""
    fake = types.ModuleType("mlflow")
    fake.set_tracking_uri = lambda uri: None

    def refuse(name):
        raise RuntimeError("The filesystem tracking backend is in maintenance mode.\nSee the docs.")

    fake.get_experiment_by_name = fake.set_experiment = refuse
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    with pytest.raises(TetherError, match=r"^the mlflow metric sink failed to start: RuntimeError: The filesystem "
                                          r"tracking backend is in maintenance mode\.$"):
        make_sinks(["mlflow"], tmp_path, {"mlflow_tracking_uri": "file:///x"})


def test_real_mlflow_reads_back_what_the_sink_wrote(tmp_path):
    """With MLflow installed (an optional extra; skipped without it): the default store opens
    on current MLflow, and its client reads back the parameters and every step."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    (sink,) = make_sinks("mlflow", tmp_path, {"run_name": "r1", "kl_coef": 0.05})
    sink.log(1, {"objective/score_mean": 0.5})
    sink.log(2, {"objective/score_mean": 0.75})
    sink.close()
    client = MlflowClient(f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tether")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params == {"run_name": "r1", "kl_coef": "0.05"} and run.info.run_name == "r1"
    history = client.get_metric_history(run.info.run_id, "objective/score_mean")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75)]
