"""Optional metric sinks: a clear TetherError naming the extra when the package is missing,
and the sink logic exercised against fake modules injected in sys.modules."""

from __future__ import annotations

import sys
import types

import pytest

from tether.errors import TetherError
from tether.reporting.sinks import JsonlSink, MlflowSink, RunLogger, TensorBoardSink, WandbSink, make_sinks, read_jsonl

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


def test_mlflow_sink_uses_a_local_file_store(monkeypatch, tmp_path):
    rec = Recorder()
    fake = types.ModuleType("mlflow")
    for name in ("set_tracking_uri", "set_experiment", "start_run", "log_params", "log_metrics", "end_run"):
        setattr(fake, name, rec.record(name))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    (sink,) = make_sinks(["mlflow"], tmp_path, {**CONFIG, "prompt": "x" * 1000})
    assert isinstance(sink, MlflowSink)
    sink.log(2, {"losses/value_loss": 0.5})
    sink.close()
    assert rec.find("set_tracking_uri")[0][1][0] == (tmp_path / "mlruns").resolve().as_uri()
    params = rec.find("log_params")[0][1][0]
    assert params["model.dtype"] == "bf16" and len(params["prompt"]) == MlflowSink.MAX_PARAM_CHARS
    assert rec.find("log_metrics")[0][1:] == (({"losses/value_loss": 0.5},), {"step": 2})
    assert rec.names() == ["set_tracking_uri", "set_experiment", "start_run", "log_params", "log_metrics", "end_run"]


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
