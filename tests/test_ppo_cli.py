"""`tether ppo` from the command line: bad input gives one clear line and a non-zero exit;
the real SmolLM2 config runs and its saved policy reloads and generates."""

import subprocess
import sys

import pytest

from tether.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


BASE = ["--config", "configs/ppo-tiny.yaml"]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("learning_rat=0.1", 'unknown config key "learning_rat" (did you mean \'learning_rate\'?)'),
        ("ppo_epochs=many", 'field "ppo_epochs": expected an int'),
        ("policy=/no/such/model", "model not found: '/no/such/model'"),
        ("reward_function=tether.rollout.rules:nope", "has no function 'nope'"),
        ("mini_batch_size=5", "must split into minibatches"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, tmp_path, override, expected):
    code, err = run_cli(capsys, "ppo", *BASE, f"output_dir={tmp_path}", "quiet=true", override)
    assert code == 2
    assert expected in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_config_file_errors_name_the_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: tiny-llama\nreward_function: tether.rollout.rules:vowel_fraction\nkl_coef: high\n")
    code, err = run_cli(capsys, "ppo", "--config", str(bad))
    assert code == 2 and f"{bad}:3: field \"kl_coef\": expected a float" in err


def raising_reward(prompts, responses):
    raise RuntimeError("reward server down")


def short_reward(prompts, responses):
    return [1.0]


@pytest.mark.parametrize("fn, expected", [
    ("raising_reward", "raised RuntimeError: reward server down"),
    ("short_reward", "returned 1 scores for 4 responses"),
])
def test_broken_reward_function(capsys, tmp_path, fn, expected):
    code, err = run_cli(capsys, "ppo", *BASE, f"output_dir={tmp_path}", "quiet=true", "batch_size=4",
                        "mini_batch_size=4", "micro_batch_size=4", f"reward_function=tests.test_ppo_cli:{fn}")
    assert code == 2 and expected in err and len(err.splitlines()) == 1


def test_nan_reward_skips_the_update_and_the_run_goes_on(tmp_path):
    import json

    import torch

    code = main(["ppo", *BASE, f"output_dir={tmp_path}", "quiet=true", "total_iterations=3", "run_name=nan",
                 "reward_function=tether.rollout.rules:nan_on_first_call"])
    assert code == 0
    metrics = [json.loads(line) for line in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["guard/skipped_updates"] == 1 and "objective/score_mean" not in metrics[0]
    # the run goes on: the next two iterations score, update, and skip nothing more
    assert [m["iteration"] for m in metrics] == [1, 2, 3]
    assert all(0.0 <= m["objective/score_mean"] <= 1.0 and m["guard/skipped_updates"] == 1 for m in metrics[1:])
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "nan" / "policy" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_smollm2_config_runs_and_the_policy_reloads(tmp_path, smollm2_path):
    """The real model: 2 iterations with a small batch, then plain transformers loads the policy."""
    code = subprocess.run(
        [sys.executable, "-m", "tether.cli", "ppo", "--config", "configs/ppo-smollm2.yaml", "total_iterations=2",
         "batch_size=2", "mini_batch_size=2", "micro_batch_size=2", "max_new_tokens=12", "prompts=builtin:tiny",
         f"output_dir={tmp_path}", "run_name=real", "quiet=true"],
        capture_output=True, text=True, timeout=600,
    )
    assert code.returncode == 0, code.stderr[-2000:]
    import json
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # it ran: both iterations logged, every update taken, every logged number finite
    rows = [json.loads(line) for line in (tmp_path / "real" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    assert all(r["guard/skipped_updates"] == 0 and all(math.isfinite(v) for v in r.values()) for r in rows)
    # the saved policy is the updated one: plain transformers reloads weights that differ from SmolLM2's
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "real" / "policy").eval()
    base = AutoModelForCausalLM.from_pretrained(smollm2_path).state_dict()
    assert policy.state_dict().keys() == base.keys()
    assert any(not torch.equal(value, base[name]) for name, value in policy.state_dict().items())
    # ... and still speaks: two updates at lr 1e-6 leave the instruct model's greedy answer a greeting
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "real" / "policy")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = policy.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "hello" in text.lower(), text


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_only_rank_zero_says_run_written(monkeypatch, capsys, tmp_path, rank, printed):
    """Under torchrun every rank returns from training; the closing line is printed once."""
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr("tether.train.ppo.train_ppo", lambda config: tmp_path / "r")
    assert main(["ppo", *BASE, f"output_dir={tmp_path}", "quiet=true"]) == 0
    assert ("run written to" in capsys.readouterr().out) == printed


def test_version():
    from importlib.metadata import version

    out = subprocess.run([sys.executable, "-m", "tether.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"tether {version('tether')}", out.stdout + out.stderr
