"""SFT and reward-model training resume exactly: a run that crashed after its step-3
checkpoint (simulated by removing the later checkpoint) continues with ``resume=auto`` to
the same weights and metrics as the run that never stopped."""

import pytest
import json
import shutil

import torch
from safetensors.torch import load_file

from tether.diagnostics.run import read_jsonl
from tether.train.reward_model import RewardModelConfig, train_reward_model
from tether.train.sft import SFTConfig, train_sft
from tether.utils.checkpoint import find_latest

pytestmark = pytest.mark.usefixtures("one_thread")



def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def crash_after_first_checkpoint_and_resume(train, config_a, config_b, folder):
    train(config_a)
    train(config_b)
    run_b = config_b.output_dir + "/" + config_b.run_name
    shutil.rmtree(find_latest(run_b))  # as if killed between the two checkpoints
    assert find_latest(run_b).name == "iter-000003"
    train(config_b)
    run_a = config_a.output_dir + "/" + config_a.run_name
    rows_a = [{k: v for k, v in r.items()} for r in read_jsonl(f"{run_a}/metrics.jsonl")]
    rows_b = [{k: v for k, v in r.items()} for r in read_jsonl(f"{run_b}/metrics.jsonl")]
    assert rows_a == rows_b and [r["iteration"] for r in rows_b][:6] == [1, 2, 3, 4, 5, 6]
    wa = load_file(f"{run_a}/{folder}/model.safetensors")
    wb = load_file(f"{run_b}/{folder}/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sft_resumes_exactly(tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": f"Q{i}: say hi", "completion": "hi there!"} for i in range(20)])
    common = dict(data=data, eval_fraction=0.2, max_steps=6, batch_size=4, learning_rate=3e-3, eval_every=2,
                  checkpoint_every=3, output_dir=str(tmp_path), quiet=True, device="cpu")
    crash_after_first_checkpoint_and_resume(train_sft, SFTConfig(run_name="a", **common),
                                            SFTConfig(run_name="b", resume="auto", **common), "policy")


def test_reward_model_resumes_exactly(tmp_path):
    rows = [{"prompt": f"topic {i % 5}?", "chosen": f"about topic {i % 5}", "rejected": "something else"}
            for i in range(40)]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    common = dict(data=data, eval_fraction=0.2, max_steps=6, batch_size=4, learning_rate=3e-3, eval_every=2,
                  normalize="chosen", normalize_samples=8, checkpoint_every=3, output_dir=str(tmp_path),
                  quiet=True, device="cpu")
    crash_after_first_checkpoint_and_resume(train_reward_model, RewardModelConfig(run_name="a", **common),
                                            RewardModelConfig(run_name="b", resume="auto", **common), "reward_model")
