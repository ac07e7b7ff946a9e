"""The optional metric sinks against the real trackers: a tiny PPO run writes to each one, and
the tracker's own reader gives back every numeric metric of ``metrics.jsonl`` at its step.

Marked ``sinks``: ``make test-sinks`` runs them in .venv-sinks, which has the three extras; the
default run leaves them out, and each test skips where its package is not installed. Nothing here
leaves the machine: W&B's server address points at a closed local port, and the MLflow server
runs on localhost."""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import pytest

from tether.cli import main
from tether.diagnostics.run import read_jsonl
from tether.errors import TetherError
from tether.reporting.sinks import make_sinks

pytestmark = [pytest.mark.sinks, pytest.mark.usefixtures("one_thread")]

# Two iterations of the tiny config, small enough for seconds per run.
TINY_PPO = ["ppo", "--config", "configs/ppo-tiny.yaml", "quiet=true", "total_iterations=2", "batch_size=4",
            "mini_batch_size=4", "micro_batch_size=4", "ppo_epochs=1", "max_new_tokens=8", "run_name=r"]


def run_ppo(capsys, output_dir: Path, *overrides: str) -> Path:
    code = main([*TINY_PPO, f"output_dir={output_dir}", *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 0, err
    return output_dir / "r"


def logged_scalars(run_dir: Path) -> dict[tuple[str, int], float | None]:
    """metrics.jsonl as {(name, step): value}: its numeric entries (bools too), which every sink
    logs. None is a NaN (metrics.jsonl writes NaN as null)."""
    scalars: dict[tuple[str, int], float | None] = {}
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        for name, value in row.items():
            if name != "iteration" and (value is None or isinstance(value, (bool, int, float))):
                scalars[(name, row["iteration"])] = None if value is None else float(value)
    assert {step for _, step in scalars} == {1, 2}, "the run did not log both iterations"
    assert len({name for name, _ in scalars}) > 10
    return scalars


def assert_same_scalars(read: dict[tuple[str, int], float], logged: dict[tuple[str, int], float | None],
                        rel: float) -> None:
    assert sorted(read) == sorted(logged)
    for key, value in logged.items():
        if value is None:
            assert math.isnan(read[key]), key
        else:
            assert read[key] == pytest.approx(value, rel=rel, abs=1e-30), key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- TensorBoard ---------------------------------------------------------------------------


def test_tensorboard_event_files_hold_every_logged_scalar(capsys, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator

    run_dir = run_ppo(capsys, tmp_path, "metric_sinks=tensorboard")
    events = event_accumulator.EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    events.Reload()
    read = {(tag, event.step): event.value for tag in events.Tags()["scalars"] for event in events.Scalars(tag)}
    assert_same_scalars(read, logged_scalars(run_dir), rel=1e-6)  # event files keep float32
    (config_text,) = events.Tensors("config/text_summary")
    text = config_text.tensor_proto.string_val[0].decode()
    assert "policy: tiny-llama" in text and "total_iterations: 2" in text


# ---- Weights & Biases ----------------------------------------------------------------------


@pytest.fixture
def wandb_home(monkeypatch, tmp_path):
    """W&B's settings, cache and credentials in a temporary folder, and its server address on
    a closed local port: no test reads the user's W&B login or sends anything off the machine.
    W&B reads its environment once per process, when it sets itself up: torn down before and
    after, so each test's variables hold."""
    wandb = pytest.importorskip("wandb")
    wandb.teardown()
    for name in list(os.environ):
        if name.startswith("WANDB_"):
            monkeypatch.delenv(name)
    home = tmp_path / "wandb-home"
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        (home / name.lower()).mkdir(parents=True)
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("NETRC", str(home / "netrc"))  # no such file: no stored API key
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield home
    wandb.teardown()


# W&B keeps an offline run in its transaction log, ``run-<id>.wandb``: LevelDB's log format
# (leveldb's doc/log_format.md: 32 KiB blocks of records, each with a 7-byte header of CRC-32,
# length and type FULL/FIRST/MIDDLE/LAST, a block's last bytes padding when shorter than a header)
# behind a 7-byte header of W&B's own (":W&B", 0xBEE1, version 0), each record a wandb
# ``Record`` protobuf. wandb's Python reader of it (wandb/sdk/internal/datastore.py, whose CRC
# covers the type byte and the payload) went when wandb-core took the log over, and the SDK has
# no other; its message classes still parse the records.
LOG_BLOCK, LOG_HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(run_dir: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:LOG_HEADER] == struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
    records, pending, offset = [], b"", LOG_HEADER
    while offset + LOG_HEADER <= len(data):
        room = LOG_BLOCK - offset % LOG_BLOCK
        if room < LOG_HEADER:
            offset += room
            continue
        checksum, length, kind = struct.unpack_from("<IHB", data, offset)
        if kind == 0:  # zeros past the last record
            break
        payload = data[offset + LOG_HEADER:offset + LOG_HEADER + length]
        assert zlib.crc32(bytes([kind]) + payload) == checksum, f"{path}: bad record at byte {offset}"
        offset += LOG_HEADER + length
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_wandb_offline_run_file_holds_every_logged_scalar(wandb_home, capsys, tmp_path):
    """``wandb_mode`` is offline unless set (no WANDB_MODE here; an online start would fail on
    the closed server address)."""
    import wandb

    run_dir = run_ppo(capsys, tmp_path / "runs", "metric_sinks=wandb")
    # run.finish() can return before wandb-core's writer has closed the log; teardown waits for it
    wandb.teardown()
    records = wandb_records(run_dir)
    read = {}
    for record in (r for r in records if r.WhichOneof("record_type") == "history"):
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        read.update({(name, row["_step"]): value for name, value in row.items() if not name.startswith("_")})
    logged = logged_scalars(run_dir)
    assert_same_scalars(read, logged, rel=1e-12)
    (run,) = (r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert run.display_name == "r" and run.project == "tether"
    assert config["policy"] == "tiny-llama" and config["kl_coef"] == 0.03


def test_wandb_mode_disabled_in_the_environment_leaves_no_wandb_run(wandb_home, monkeypatch, capsys, tmp_path):
    """W&B's own switch, ``WANDB_MODE=disabled``, turns the sink off even with ``wandb_mode``
    online in the config: the run trains, says so once, and W&B writes nothing."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    code = main([*TINY_PPO, f"output_dir={tmp_path / 'runs'}", "metric_sinks=wandb", "wandb_mode=online"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count("metric sink wandb: disabled by the environment (WANDB_MODE=disabled)") == 1
    run_dir = tmp_path / "runs" / "r"
    assert (run_dir / "policy").is_dir() and not (run_dir / "wandb").exists()
    assert not list(wandb_home.rglob("*run-*"))


def test_wandb_online_without_network_fails_to_start_within_the_init_timeout(wandb_home, monkeypatch, tmp_path):
    """Online mode itself cannot be tested here (no W&B server). What can be: a server that does
    not answer ends the sink's start with one line naming it, once W&B's start timeout
    (``WANDB_INIT_TIMEOUT``, 90 s by default) runs out, instead of a hang."""
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)  # well-formed, so W&B gets as far as the server
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "10")
    started = time.monotonic()
    with pytest.raises(TetherError) as failure:
        make_sinks(["wandb"], tmp_path, {"wandb_mode": "online", "run_name": "r"})
    assert time.monotonic() - started < 60
    message = str(failure.value)
    assert message.startswith("the wandb metric sink failed to start: CommError: ") and "\n" not in message
    assert "connection refused" in message


def test_wandb_online_without_an_api_key_is_one_line(wandb_home, capsys, tmp_path):
    """No key and no terminal to ask for one (CI): one line and exit code 2, not a prompt."""
    code = main([*TINY_PPO, f"output_dir={tmp_path}", "metric_sinks=wandb", "wandb_mode=online"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "the wandb metric sink failed to start" in err


# ---- MLflow --------------------------------------------------------------------------------


def mlflow_read_back(tracking_uri: str, experiment: str = "tether") -> tuple[object, dict]:
    """The one run of ``experiment`` and its full metric history, through MLflow's client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    read = {(m.key, m.step): m.value for name in run.data.metrics
            for m in client.get_metric_history(run.info.run_id, name)}
    return run, read


def assert_mlflow_run(run, read, run_dir: Path) -> None:
    assert_same_scalars(read, logged_scalars(run_dir), rel=1e-12)
    assert run.info.run_name == "r" and run.info.status == "FINISHED"
    assert run.data.params["policy"] == "tiny-llama" and run.data.params["kl_coef"] == "0.03"


def test_mlflow_default_sqlite_store_holds_every_logged_scalar(capsys, tmp_path):
    pytest.importorskip("mlflow")
    run_dir = run_ppo(capsys, tmp_path, "metric_sinks=mlflow")
    run, read = mlflow_read_back(f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    assert_mlflow_run(run, read, run_dir)


def test_mlflow_file_store_uri(monkeypatch, capsys, tmp_path):
    """A ``file:`` URI: MLflow's plain file store, which MLflow 3 refuses (one line naming the
    way out) and opens with MLFLOW_ALLOW_FILE_STORE=true."""
    pytest.importorskip("mlflow")
    store = (tmp_path / "mlruns").resolve().as_uri()
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(TetherError, match=r"^the mlflow metric sink failed to start: .*MLFLOW_ALLOW_FILE_STORE=true"):
        make_sinks(["mlflow"], tmp_path / "refused", {"mlflow_tracking_uri": store})
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run_dir = run_ppo(capsys, tmp_path, "metric_sinks=mlflow", f"mlflow_tracking_uri={store}",
                      "mlflow_experiment=files")
    run, read = mlflow_read_back(store, "files")
    assert_mlflow_run(run, read, run_dir)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on a free localhost port with a SQLite backend; skips the tests that
    need it when it does not answer within 60 s."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                tail = (root / "server.log").read_text()[-500:]
                pytest.skip(f"mlflow server did not start within 60 s: {tail}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_mlflow_tracking_server_holds_every_logged_scalar(mlflow_server, capsys, tmp_path):
    run_dir = run_ppo(capsys, tmp_path, "metric_sinks=mlflow", f"mlflow_tracking_uri={mlflow_server}",
                      "mlflow_experiment=served")
    run, read = mlflow_read_back(mlflow_server, "served")
    assert_mlflow_run(run, read, run_dir)
    assert not (run_dir / "mlflow.db").exists()  # the server keeps the run, not the run directory
