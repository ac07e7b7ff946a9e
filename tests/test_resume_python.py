"""A run whose reward was given from Python (``tether.PPO(config, reward=fn)``) cannot be
rebuilt from config.yaml: the command line's ``--resume`` says, on one line, the Python call
that continues it, and ``tether.PPO.resume(run_dir, reward=fn)`` continues it, refusing a
reward other than the one the run was trained with."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

import tether
from tether.cli import main
from tether.rollout.rewards import reward_specs
from tether.rollout.rules import vowel_fraction
from tether.train.ppo_resume import python_resume_call, record_python_reward

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(policy="tiny-llama", batch_size=4, mini_batch_size=4, micro_batch_size=4, ppo_epochs=1, max_new_tokens=8,
             quiet=True, device="cpu")
CALLS = {"n": 0, "sigint_at": None}


def brevity(prompts, responses):
    """1 for an empty answer, 0 from 40 characters on; sends this process SIGINT at call
    ``sigint_at`` (the real handler runs, the iteration finishes, the loop checkpoints)."""
    CALLS["n"] += 1
    if CALLS["n"] == CALLS["sigint_at"]:
        os.kill(os.getpid(), signal.SIGINT)
    return [1.0 - min(len(r), 40) / 40 for r in responses]


def iterations(run_dir: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_python_reward_run_is_continued_from_python_and_the_command_line_says_how(tmp_path, capsys):
    config = tether.PPOConfig(**SMALL, total_iterations=3, output_dir=str(tmp_path), run_name="py")
    CALLS.update(n=0, sigint_at=2)
    with pytest.raises(tether.RunStopped) as stopped:
        tether.PPO(config, reward=brevity).train()
    run_dir = tmp_path / "py"
    call = f"tether.PPO.resume({str(run_dir)!r}, reward=brevity).train()"
    assert f"Continue with: {call}" in str(stopped.value)  # not `tether ppo --resume`, which cannot

    capsys.readouterr()
    assert main(["ppo", "--resume", str(run_dir), "total_iterations=3"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --resume {run_dir}: the run's reward was given from Python (brevity (function)); config.yaml "
        f"cannot hold it, so continue the run from Python with the same reward: {call}")

    with pytest.raises(tether.ConfigError, match=r"^tether.PPO.resume\(.*the run's reward was given from Python"):
        tether.PPO.resume(run_dir)
    with pytest.raises(tether.ConfigError, match=r"trained with the reward sources brevity \(function\), but the "
                                                 r"resume was given vowel_fraction \(function\)"):
        tether.PPO.resume(run_dir, reward=vowel_fraction).train()
    with pytest.raises(tether.ConfigError, match="only total_iterations, .* may change, not 'learning_rate'"):
        tether.PPO.resume(run_dir, reward=brevity, learning_rate=0.1)
    assert iterations(run_dir) == [1, 2]  # none of the refused resumes touched the run

    CALLS.update(sigint_at=None)
    assert tether.PPO.resume(run_dir, reward=brevity, total_iterations=4).train() == run_dir
    assert iterations(run_dir) == [1, 2, 3, 4]
    assert (run_dir / "policy" / "config.json").is_file()


@pytest.mark.parametrize("reward, expression", [
    ({"short": brevity, "judge": "runs/rm/reward_model"}, "{'short': brevity, 'judge': 'runs/rm/reward_model'}"),
    ([brevity, "pkg.mod:score"], "[brevity, 'pkg.mod:score']"),
    (lambda prompts, responses: [0.0] * len(responses), "(lambda prompts, responses: ...)"),
])
def test_the_python_call_writes_the_reward_as_it_was_given(tmp_path, reward, expression):
    specs = reward_specs(tether.PPOConfig().reward_settings, reward)
    record_python_reward(tmp_path, reward, specs)
    assert python_resume_call(tmp_path) == f"tether.PPO.resume({str(tmp_path)!r}, reward={expression}).train()"
