"""Exact resume: a run stopped by a signal and continued with ``--resume`` ends with the same
weights, metrics and samples as the run that was never stopped (CPU, bit for bit)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tether.cli import main
from tether.rollout.rules import vowel_fraction
from tether.utils.checkpoint import complete_checkpoints, find_latest

SMALL = ["--config", "configs/ppo-tiny.yaml", "quiet=true", "device=cpu", "batch_size=4", "mini_batch_size=2",
         "micro_batch_size=2", "ppo_epochs=2", "max_new_tokens=8"]
# timing metrics differ between any two runs; reward/<source> is named after the reward function,
# and the interrupted runs use a differently named wrapper of the same scores (objective/* compares them)
IGNORED = ("time/", "rollout/tokens_per_s", "reward/")


pytestmark = pytest.mark.usefixtures("one_thread")


class SignalAt:
    """A reward function (vowel_fraction) that sends this process SIGINT during the call of
    iteration ``at``: the real handler runs, the iteration finishes, the loop checkpoints."""

    at = 3
    calls = 0


def sigint_at(prompts, responses):
    SignalAt.calls += 1
    if SignalAt.calls == SignalAt.at:
        os.kill(os.getpid(), signal.SIGINT)
    return vowel_fraction(prompts, responses)


def slow_reward(prompts, responses):
    time.sleep(float(os.environ.get("SLOW_REWARD_S", "0.3")))
    return vowel_fraction(prompts, responses)


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith(IGNORED)} for row in rows]


def weights(run: Path) -> dict[str, torch.Tensor]:
    found = {}
    for sub in ("policy", "critic"):
        if (run / sub / "model.safetensors").exists():
            found.update({f"{sub}.{k}": v for k, v in load_file(str(run / sub / "model.safetensors")).items()})
    return found


def assert_same_run(a: Path, b: Path) -> None:
    assert metrics(a) == metrics(b)
    assert (a / "samples.jsonl").read_text() == (b / "samples.jsonl").read_text()
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("algorithm, stop_at, extra", [
    ("ppo", 3, ["checkpoint_every=2"]),  # a periodic checkpoint (2), then the interrupt's (3)
    ("grpo", 1, ["samples_per_prompt=2", "batch_size=2", "kl_target=1.0"]),  # no critic, adaptive β
])
def test_interrupted_and_resumed_run_equals_the_straight_run(tmp_path, capsys, algorithm, stop_at, extra):
    common = [*SMALL, f"output_dir={tmp_path}", "total_iterations=6", *extra]
    assert main([algorithm, *common, "run_name=straight"]) == 0
    capsys.readouterr()

    SignalAt.at, SignalAt.calls = stop_at, 0
    stopped = main([algorithm, *common, "run_name=stopped", "reward_function=tests.test_resume:sigint_at"])
    out, err = capsys.readouterr()
    assert stopped == 128 + signal.SIGINT and "run written" not in out  # a partial run is no finished one
    assert "the run is partial" in err and f"tether ppo --resume {tmp_path / 'stopped'}" in err
    assert len(metrics(tmp_path / "stopped")) == stop_at and not (tmp_path / "stopped" / "policy").exists()
    assert find_latest(tmp_path / "stopped").name == f"iter-{stop_at:06d}"

    assert main(["ppo", "--resume", str(tmp_path / "stopped")]) == 0
    assert [r["iteration"] for r in metrics(tmp_path / "stopped")] == list(range(1, 7))
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")


def test_resume_auto_and_a_longer_total(tmp_path):
    common = [*SMALL, f"output_dir={tmp_path}", "run_name=r", "resume=auto", "checkpoint_every=2"]
    assert main(["ppo", *common, "total_iterations=2"]) == 0  # no checkpoint yet: a fresh run
    assert main(["ppo", "--resume", str(tmp_path / "r"), "total_iterations=4"]) == 0
    assert [r["iteration"] for r in metrics(tmp_path / "r")] == [1, 2, 3, 4]
    assert main(["ppo", *common, "total_iterations=4"]) == 0  # already done: nothing re-run
    assert [r["iteration"] for r in metrics(tmp_path / "r")] == [1, 2, 3, 4]
    assert len(complete_checkpoints(tmp_path / "r")) == 2  # keep_checkpoints default


def _start(tmp_path, *extra, env=None):
    cmd = [sys.executable, "-m", "tether.cli", "ppo", *SMALL, f"output_dir={tmp_path}", "run_name=sub",
           "reward_function=tests.test_resume:slow_reward", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _wait_for(predicate, proc, timeout=60.0):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_finishes_the_iteration_checkpoints_and_exits_128_plus_15(tmp_path):
    proc = _start(tmp_path, "total_iterations=50")
    metrics_file = tmp_path / "sub" / "metrics.jsonl"
    _wait_for(lambda: metrics_file.exists() and metrics_file.read_text().count("\n") >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "run written" not in out and "stopped by SIGTERM: the run is partial" in err
    assert f"tether ppo --resume {tmp_path / 'sub'}" in err
    done = len(metrics(tmp_path / "sub"))
    assert find_latest(tmp_path / "sub").name == f"iter-{done:06d}"


def test_a_second_signal_exits_at_once_and_the_last_checkpoint_stays_loadable(tmp_path):
    proc = _start(tmp_path, "total_iterations=50", "checkpoint_every=1", env={"SLOW_REWARD_S": "1"})
    _wait_for(lambda: find_latest(tmp_path / "sub") is not None, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT and "exiting now" in err
    latest = find_latest(tmp_path / "sub")
    os.environ["SLOW_REWARD_S"] = "0"
    try:
        assert main(["ppo", "--resume", str(tmp_path / "sub"), f"total_iterations={int(latest.name[5:]) + 1}"]) == 0
    finally:
        del os.environ["SLOW_REWARD_S"]
    rows = metrics(tmp_path / "sub")
    assert [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))
