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
    (["keep_checkpoints=0"], 'field "keep_checkpoints": must be >= 1, got 0'),
    (["checkpoint_every=-1"], 'field "checkpoint_every": must be >= 0, got -1'),
    (["resume=auto", "run_name=null"], "resume: auto needs a run_name"),
    (["algorithm=grpo", "samples_per_prompt=1"], "set samples_per_prompt >= 2"),
    (["micro_batch_size=3"], "must be a multiple of micro_batch_size"),
    (["top_p=1.5"], 'field "top_p": must be in (0, 1], got 1.5'),
])
def test_bad_config_is_one_line_before_any_model_loads(capsys, tmp_path, overrides, expected):
    err = one_line_error(capsys, "ppo", *BASE, f"output_dir={tmp_path}", *overrides)
    assert expected in err


def test_reward_function_and_labeler_from_the_current_folder(tmp_path, monkeypatch):
    """``reward_function=my_module:f`` finds my_module.py in the current folder, as
    ``--labeler my_module:f`` does: one loader serves both."""
    import sys
    from pathlib import Path

    from tether.labeling.simulated import load_labeler
    from tether.rollout.rewards import load_function

    config = Path("configs/ppo-tiny.yaml").resolve()
    (tmp_path / "cwd_rewards_mod.py").write_text("def f(prompts, responses):\n    return [1.0] * len(responses)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    assert load_function("cwd_rewards_mod:f")(["p"], ["a", "b"]) == [1.0, 1.0]
    assert load_labeler("cwd_rewards_mod:f") is load_function("cwd_rewards_mod:f")
    with pytest.raises(AssertionError, match="models were loaded"):  # validation passed
        main(["ppo", "--config", str(config), "quiet=true", "device=cpu", f"output_dir={tmp_path / 'runs'}",
              "reward_function=cwd_rewards_mod:f"])


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


def fake_free_disk(monkeypatch, free: int) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda path: usage(10**12, 10**12 - free, free))


# tiny-llama has 78,976 parameters: W = 4 bytes x 78,976 = 315,904 bytes of fp32 weights per
# trained model. A checkpoint holds weights + two Adam moments (3W each model), the final export
# W once more per model. Separate critic (the policy's copy): two trained models, 2W = 631,808.
#   checkpoint_every=0 (only on interrupt): 1 checkpoint -> 3 * 2W * 1 + 2W = 4 * 631,808 = 2,527,232
#   checkpoint_every=10 of 30, keep 2: 3 saves, keep + 1 = 3 at the peak -> 10 * 2W = 6,318,080
#   checkpoint_every=10 of 30, keep 5: 3 saves only -> the same 6,318,080
#   checkpoint_every=15 of 30, keep 5: 2 saves -> 7 * 2W = 4,422,656
#   shared critic, checkpoint_every=0: one trained model (the value head is not counted: it is
#   a few hundred bytes) -> 4W = 1,263,616
#   LoRA policy (adapters not counted), separate critic: 3W in the checkpoint + 2W exported = 5W
#   = 1,579,520
@pytest.mark.parametrize("overrides, needed", [
    ([], 2_527_232),
    (["checkpoint_every=10"], 6_318_080),
    (["checkpoint_every=10", "keep_checkpoints=5"], 6_318_080),
    (["checkpoint_every=15", "keep_checkpoints=5"], 4_422_656),
    (["critic=shared"], 1_263_616),
    (["lora_r=8"], 1_579_520),
])
def test_disk_check_counts_the_checkpoints_the_run_will_hold(capsys, tmp_path, monkeypatch, overrides, needed):
    # just too little: refused with the fix named; exactly enough: validation passes and the run
    # reaches model loading (the tripwire)
    fake_free_disk(monkeypatch, needed - 1)
    err = one_line_error(capsys, "ppo", *BASE, f"output_dir={tmp_path}", *overrides)
    assert "checkpoints need about" in err and "lower keep_checkpoints or checkpoint_every=0" in err
    fake_free_disk(monkeypatch, needed)
    with pytest.raises(AssertionError, match="models were loaded before the inputs were validated"):
        main(["ppo", *BASE, f"output_dir={tmp_path}", *overrides])


def test_disk_check_counts_fp32_bytes_of_a_bf16_checkpoint(tmp_path):
    """tether trains fp32 master weights, so a folder stored in bf16 (half the file size) still
    needs 4 bytes per parameter in each checkpoint."""
    from transformers import AutoModelForCausalLM

    from tether.train.ppo_config import _fp32_bytes

    model = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-llama"), torch_dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    assert _fp32_bytes(tmp_path / "bf16") == 4 * 78_976
    assert sum(f.stat().st_size for f in (tmp_path / "bf16").glob("*.safetensors")) < 2 * 78_976 + 10_000


def test_existing_run_is_refused_unless_overwrite_or_resume(capsys, tmp_path):
    (tmp_path / "ppo-tiny").mkdir()
    (tmp_path / "ppo-tiny" / "metrics.jsonl").write_text('{"iteration": 1}\n')
    err = one_line_error(capsys, "ppo", *BASE, f"output_dir={tmp_path}")
    assert "already holds a run" in err and "resume=auto" in err
    (tmp_path / "ppo-tiny" / "policy").mkdir()  # finished with checkpoint_every=0: nothing to continue
    err = one_line_error(capsys, "ppo", *BASE, f"output_dir={tmp_path}", "resume=auto")
    assert "holds a finished run (policy/) and no checkpoint to continue from; pass overwrite=true" in err


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


def test_tether_threads_is_applied_or_refused_in_one_line(monkeypatch):
    import torch

    from tether.errors import ConfigError
    from tether.utils.threads import threads_from_env

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("TETHER_THREADS", "1")
        assert threads_from_env() == 1 and torch.get_num_threads() == 1
        for bad in ("two", "0", "-3", "1.5"):
            monkeypatch.setenv("TETHER_THREADS", bad)
            with pytest.raises(ConfigError, match=f"TETHER_THREADS must be a whole number >= 1, got '{bad}'"):
                threads_from_env()
        monkeypatch.delenv("TETHER_THREADS")
        assert threads_from_env() is None
    finally:
        torch.set_num_threads(before)
