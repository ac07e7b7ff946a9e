"""Crash-safe checkpoints: atomic writes, the `latest` pointer, pruning, torn folders ignored,
NaN weights never written, and kill -9 in the middle of a write."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tether.cli import main
from tether.errors import TetherError
from tether.utils.checkpoint import (Checkpointer, assert_finite, complete_checkpoints, find_latest, read_checkpoint,
                                     write_checkpoint)

from tests.test_resume import SMALL, metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_keeps_the_newest_n_and_points_latest_at_the_last(tmp_path):
    for it in range(1, 5):
        write_checkpoint(tmp_path, it, {"iteration": it}, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["iter-000003", "iter-000004"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "iter-000004"
    assert read_checkpoint(find_latest(tmp_path)) == {"iteration": 4}


def test_torn_and_temporary_folders_and_a_stale_pointer_are_ignored(tmp_path):
    write_checkpoint(tmp_path, 1, {"iteration": 1}, keep=3)
    root = tmp_path / "checkpoints"
    (root / ".tmp-iter-000002").mkdir()  # killed before the rename
    (root / ".tmp-iter-000002" / "state.pt").write_bytes(b"half")
    (root / "iter-000003").mkdir()  # no meta.json: never completed
    (root / "latest").write_text("iter-000009")  # names a folder that does not exist
    assert find_latest(tmp_path).name == "iter-000001"
    write_checkpoint(tmp_path, 2, {"iteration": 2}, keep=3)  # a crash after the rename, before `latest`
    (root / "latest").write_text("iter-000001")
    assert find_latest(tmp_path).name == "iter-000002"


def test_an_unreadable_checkpoint_is_one_clear_error(tmp_path):
    path = write_checkpoint(tmp_path, 1, {"iteration": 1}, keep=1)
    (path / "state.pt").write_bytes(b"garbage")
    with pytest.raises(TetherError, match="unreadable.*delete that folder"):
        read_checkpoint(path)


def test_nan_weights_are_never_written(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(TetherError, match="not finite"):
        assert_finite({"policy": model})
    ckpt = Checkpointer(tmp_path, every=1, keep=1, last=1, modules={"policy": model})
    with pytest.raises(TetherError):
        ckpt.save(1, {}, [])
    assert find_latest(tmp_path) is None


def test_state_round_trip_restores_weights_optimizer_generators_and_rng(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(5)
    ckpt = Checkpointer(tmp_path, 0, 1, 1, modules={"m": model}, stateful={"opt": opt}, generators={"g": gen})
    ckpt.save(7, {"total_skips": 2}, [(7, {"a": 1.0})])
    expected = (model.weight.clone(), torch.rand(1, generator=gen), torch.rand(1))

    torch.manual_seed(0)
    model2 = torch.nn.Linear(3, 1)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    gen2 = torch.Generator()
    ckpt2 = Checkpointer(tmp_path, 0, 1, 1, modules={"m": model2}, stateful={"opt": opt2}, generators={"g": gen2})
    state = read_checkpoint(find_latest(tmp_path))
    assert ckpt2.restore(state) == (7, {"total_skips": 2}) and state["history"] == [(7, {"a": 1.0})]
    assert torch.equal(model2.weight, expected[0]) and opt2.state_dict()["state"][0]["step"] == 1
    assert torch.equal(torch.rand(1, generator=gen2), expected[1]) and torch.equal(torch.rand(1), expected[2])


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one_and_resume_auto_picks_it(tmp_path):
    """The writer pauses after writing iteration 3's state (TETHER_TEST_CHECKPOINT_PAUSE) and
    the process is killed with SIGKILL there: iteration 2's checkpoint must be the one used."""
    run = tmp_path / "k9"
    args = [*SMALL, f"output_dir={tmp_path}", "run_name=k9", "total_iterations=4", "checkpoint_every=1", "resume=auto"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TETHER_TEST_CHECKPOINT_PAUSE": "3:120"}
    proc = subprocess.Popen([sys.executable, "-m", "tether.cli", "ppo", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    half = run / "checkpoints" / ".tmp-iter-000003" / "state.pt"
    deadline = time.time() + 90
    while not half.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert find_latest(run).name == "iter-000002"
    assert read_checkpoint(find_latest(run))["iteration"] == 2

    assert main(["ppo", *args]) == 0  # resume=auto: continues from iteration 2
    assert [r["iteration"] for r in metrics(run)] == [1, 2, 3, 4]
    assert not (run / "checkpoints" / ".tmp-iter-000003").exists()
    assert find_latest(run).name == "iter-000004"
