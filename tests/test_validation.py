"""Input validation before any heavy work: each bad input is one line naming the fix (exit 2),
raised before a model is loaded (build_roles is replaced by a tripwire here)."""

import json
import shutil
from collections import namedtuple

import pytest
import torch

from tether.cli import main
from tether.models.registry import resolve_model

BASE = ["--config", "configs/ppo-tiny.yaml", "quiet=true", "device=cpu"]


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    def tripwire(*args, **kwargs):
        raise AssertionError("models were loaded before the inputs were validated")

    monkeypatch.setattr("tether.train.ppo.build_roles", tripwire)


def one_line_error(capsys, *argv) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def small_vocab_model(tmp_path):
    folder = tmp_path / "small-vocab"
    shutil.copytree(resolve_model("tiny-llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 10
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("overrides, expected", [
    (["max_prompt_tokens=500", "max_new_tokens=24"],
     "max_prompt_tokens + max_new_tokens = 524 exceeds the policy's context of 512 tokens"),
    (["reference=/no/such/ref"], "field \"reference\": model not found: '/no/such/ref'"),
    (["reward_function=null", "reward_model=/no/such/rm"], "field \"reward_model\": model not found"),
    (["critic_model=/no/such/critic"], "field \"critic_model\": model not found"),
    (["reward_function=no_colon"], "reward function must look like module:function"),
    (["reward_function=no_such_module_xyz:f"], "cannot import module 'no_such_module_xyz'"),
    (["prompts=/no/such/prompts.jsonl"], "/no/such/prompts.jsonl"),
    (["prompts=builtin:nope"], "unknown builtin prompt set 'builtin:nope'"),
    (["keep_checkpoints=0"], 'field "keep_checkpoints" must be >= 1'),
    (["checkpoint_every=-1"], 'field "checkpoint_every" must be >= 0'),
    (["resume=auto", "run_name=null"], "resume: auto needs a run_name"),
    (["algorithm=grpo", "samples_per_prompt=1"], "set samples_per_prompt >= 2"),
    (["micro_batch_size=3"], "must be a multiple of micro_batch_size"),
    (["top_p=1.5"], 'field "top_p" must be in (0, 1]'),
])
def test_bad_config_is_one_line_before_any_model_loads(capsys, tmp_path, overrides, expected):
    err = one_line_error(capsys, "ppo", *BASE, f"output_dir={tmp_path}", *overrides)
    assert expected in err


def test_tokenizer_larger_than_the_model_vocabulary(capsys, tmp_path, small_vocab_model):
    err = one_line_error(capsys, "ppo", *BASE, f"output_dir={tmp_path}", f"policy={small_vocab_model}")
    assert "tokenizer has 77 tokens but the model's vocab_size is 10" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_but_absent(capsys, tmp_path):
    err = one_line_error(capsys, "ppo", *BASE, f"output_dir={tmp_path}", "device=cuda")
    assert "CUDA is not available; use device=cpu" in err


def test_bf16_on_a_cpu_without_support(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("tether.train.ppo_config._bf16_works", lambda device: False)
    err = one_line_error(capsys, "ppo", *BASE, f"output_dir={tmp_path}", "precision=bf16")
    assert "precision=bf16 is not supported on cpu; use precision=fp32" in err


def test_not_enough_disk_for_checkpoints(capsys, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    err = one_line_error(capsys, "ppo", *BASE, f"output_dir={tmp_path}")
    assert "checkpoints need about" in err and "lower keep_checkpoints" in err


def test_existing_run_is_refused_unless_overwrite_or_resume(capsys, tmp_path):
    (tmp_path / "ppo-tiny").mkdir()
    (tmp_path / "ppo-tiny" / "metrics.jsonl").write_text('{"iteration": 1}\n')
    err = one_line_error(capsys, "ppo", *BASE, f"output_dir={tmp_path}")
    assert "already holds a run" in err and "resume=auto" in err
    err = one_line_error(capsys, "ppo", *BASE, f"output_dir={tmp_path}", "resume=auto")
    assert "no complete checkpoint to resume from; pass overwrite=true" in err


def test_resume_errors(capsys, tmp_path):
    err = one_line_error(capsys, "ppo", "--resume", str(tmp_path / "nope"))
    assert "no config.yaml there" in err
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text(
        "policy: tiny-llama\nreward_function: tether.rollout.rules:vowel_fraction\nquiet: true\ndevice: cpu\n")
    err = one_line_error(capsys, "ppo", "--resume", str(tmp_path / "r"), "learning_rate=0.1")
    assert "only total_iterations" in err and "not 'learning_rate=0.1'" in err
    err = one_line_error(capsys, "ppo", "--resume", str(tmp_path / "r"))
    assert "has no complete checkpoint to resume from" in err


def test_prompt_file_with_a_bad_row(capsys, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n')
    err = one_line_error(capsys, "ppo", *BASE, f"output_dir={tmp_path}", f"prompts={prompts}")
    assert 'prompts.jsonl:2: field "prompt" is missing' in err
