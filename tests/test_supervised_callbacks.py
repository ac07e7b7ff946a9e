"""Callbacks of the supervised commands (SFT, reward model, DPO), through the Python API: each
sees every step's logged row, and returning True ends the run after that step with its model
saved as the final one, as PPO's callbacks do."""

from __future__ import annotations

import json

import pytest

import tether
from tether.diagnostics.run import read_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")

DEMOS = [{"prompt": f"name a colour ({i}):", "completion": "blue"} for i in range(8)]
PAIRS = [{"prompt": f"name a colour ({i}):", "chosen": "blue", "rejected": "no"} for i in range(8)]
COMMON = dict(max_steps=50, batch_size=2, eval_every=1, quiet=True, device="cpu")

# command -> (API class, data rows, the folder train() returns inside the run, metrics of its step)
COMMANDS = {
    "sft": (tether.SFT, DEMOS, "policy", ["train/loss", "train/grad_norm", "train/lr", "eval/loss"]),
    "rm": (tether.RewardModel, PAIRS, "reward_model",
           ["train/loss", "train/accuracy", "train/margin", "train/grad_norm", "eval/accuracy"]),
    "dpo": (tether.DPO, PAIRS, ".", ["train/loss", "rewards/accuracy", "logps/chosen", "train/lr", "eval/loss"]),
}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_callback_sees_each_step_and_its_true_ends_the_run_with_the_model_saved(command, tmp_path, capsys):
    api, rows, folder, names = COMMANDS[command]
    seen: list[tuple[int, dict]] = []

    def record(step, metrics):
        seen.append((step, metrics))

    def stop_at_two(step, metrics):
        return step >= 2

    out = api(data=write_jsonl(tmp_path / "data.jsonl", rows), eval_fraction=0.25, output_dir=str(tmp_path),
              run_name=command, callbacks=[record, stop_at_two], **COMMON).train()
    run = tmp_path / command
    logged = read_jsonl(run / "metrics.jsonl")
    training_rows = [r for r in logged if "train/loss" in r]  # train-rm adds its verdict and normalisation rows
    assert [step for step, _ in seen] == [1, 2] == [r["iteration"] for r in training_rows]
    for (step, metrics), row in zip(seen, training_rows):
        assert set(names) <= set(metrics)
        assert metrics == {k: v for k, v in row.items() if k != "iteration"}  # the row just logged
    assert out == run / folder  # what train() returns after the last step
    assert (run / ("reward_model" if command == "rm" else "policy") / "config.json").is_file()
    assert "a callback stopped the run after step 2 of 50" in capsys.readouterr().err


def test_dpo_callback_sees_whether_the_reference_came_from_the_cache_on_the_first_step(tmp_path):
    firsts = []
    tether.DPO(data=write_jsonl(tmp_path / "prefs.jsonl", PAIRS), eval_fraction=0, output_dir=str(tmp_path),
               run_name="d", callbacks=[lambda step, metrics: firsts.append(metrics.get("ref/cached")) or step >= 2],
               **COMMON).train()
    assert firsts == [0.0, None]  # computed, not cached; logged with the first step only


def test_the_reward_model_judges_the_step_a_callback_stopped_at(tmp_path):
    tether.RewardModel(data=write_jsonl(tmp_path / "prefs.jsonl", PAIRS), eval_fraction=0.25, normalize="none",
                       output_dir=str(tmp_path), run_name="r", callbacks=[lambda step, metrics: step >= 3],
                       **COMMON).train()
    verdict = json.loads((tmp_path / "r" / "rm_verdict.json").read_text())
    assert verdict["step"] == 3
    final = [r for r in read_jsonl(tmp_path / "r" / "metrics.jsonl") if "eval/final_accuracy" in r]
    assert [r["iteration"] for r in final] == [3]


@pytest.mark.parametrize("api", [tether.SFT, tether.RewardModel, tether.DPO])
def test_a_callback_that_is_not_callable_is_refused_before_anything_runs(api, tmp_path):
    with pytest.raises(tether.ConfigError, match="callbacks must be callables fn\\(iteration, metrics\\); got int"):
        api(data=write_jsonl(tmp_path / "d.jsonl", DEMOS if api is tether.SFT else PAIRS), output_dir=str(tmp_path),
            run_name="x", callbacks=[3], **COMMON).train()
    assert not (tmp_path / "x").exists()
