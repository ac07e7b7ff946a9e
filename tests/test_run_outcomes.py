"""How a run ends, as a pipeline reading exit codes sees it: an optimizer step that makes a
weight NaN stops the run at that step; a run stopped by a signal exits 128 + signal and says
its checkpoint is partial; a run that died before its first checkpoint restarts under
``resume=auto``."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

import tether.train.optim
import tether.train.sft
from tether.cli import main
from tether.diagnostics.run import read_jsonl
from tether.train.optim import make_adamw, make_scheduler
from tether.utils.checkpoint import find_latest

pytestmark = pytest.mark.usefixtures("one_thread")

PPO_SMALL = ["--config", "configs/ppo-tiny.yaml", "quiet=true", "device=cpu", "batch_size=4", "mini_batch_size=2",
             "micro_batch_size=2", "ppo_epochs=2", "max_new_tokens=8", "total_iterations=3"]


def sft_args(tmp_path, *extra) -> list[str]:
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "done"}) + "\n" for i in range(8)))
    return ["sft", f"data={data}", "batch_size=2", "max_steps=3", "eval_fraction=0", "quiet=true", "device=cpu",
            f"output_dir={tmp_path / 'runs'}", "run_name=s", *extra]


def rows(run) -> list[dict]:
    path = run / "metrics.jsonl"
    return read_jsonl(path) if path.exists() else []


# -- an optimizer step that makes weights NaN ------------------------------------------------
# AdamW with eps = 0 divides 0 by 0 wherever a gradient is exactly 0 (embedding rows of tokens
# not in the batch): finite loss, finite gradients, NaN weights after the step.
def test_ppo_stops_at_the_first_step_that_makes_a_weight_nan(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tether.train.optim, "make_adamw",
                        lambda params, device, **kw: make_adamw(params, device, **{**kw, "eps": 0.0}))
    assert main(["ppo", *PPO_SMALL, f"output_dir={tmp_path}", "run_name=nan"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: the optimizer step made ")
    assert "non-finite (NaN/inf) from finite gradients" in err and "adam_eps above 0" in err
    assert rows(tmp_path / "nan") == []  # stopped inside iteration 1, not after every iteration ran
    assert not (tmp_path / "nan" / "policy").exists()


def test_sft_stops_at_the_first_step_that_makes_a_weight_nan(tmp_path, monkeypatch, capsys):
    class DivergingAdamW(torch.optim.AdamW):  # the tiny LM has no zero gradient for eps = 0 to hit
        def step(self, closure=None):
            loss = super().step(closure)
            if self.state[self.param_groups[0]["params"][0]]["step"] == 2:
                self.param_groups[0]["params"][0].data[0, 0] = float("nan")  # as a diverging update would
            return loss

    def diverging_optimizer(params, config, total_steps):
        optimizer = DivergingAdamW(list(params), lr=config.learning_rate)
        return optimizer, make_scheduler(optimizer, "constant", 0, total_steps)

    monkeypatch.setattr(tether.train.sft, "make_optimizer", diverging_optimizer)
    assert main(sft_args(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: step 2: the optimizer step made model weight model.embed_tokens.weight non-finite")
    assert [r["iteration"] for r in rows(tmp_path / "runs" / "s")] == [1]
    assert not (tmp_path / "runs" / "s" / "policy").exists()


# -- a run stopped by a signal ---------------------------------------------------------------
def test_a_stopped_sft_run_exits_128_plus_signal_and_says_it_is_partial(tmp_path, monkeypatch, capsys):
    calls = []
    completion_nll = tether.train.sft.completion_nll

    def signal_at_step_2(model, batch):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the real handler runs: the step finishes, then checkpoints
        return completion_nll(model, batch)

    monkeypatch.setattr(tether.train.sft, "completion_nll", signal_at_step_2)
    assert main(sft_args(tmp_path)) == 128 + signal.SIGTERM
    out, err = capsys.readouterr()
    run = tmp_path / "runs" / "s"
    assert "written" not in out
    assert "stopped by SIGTERM: the run is partial and no final model was written" in err
    assert f"resume={run}" in err
    assert not (run / "policy").exists()
    assert find_latest(run).name == "iter-000002" and [r["iteration"] for r in rows(run)] == [1, 2]
    assert main(sft_args(tmp_path, "resume=auto")) == 0  # and it continues from there
    assert [r["iteration"] for r in rows(run)] == [1, 2, 3] and (run / "policy").is_dir()


# -- a run that died before its first checkpoint ---------------------------------------------
def test_resume_auto_restarts_a_run_that_died_before_its_first_checkpoint(tmp_path, capsys):
    run = tmp_path / "runs" / "s"
    run.mkdir(parents=True)  # what kill -9 in step 2 of a run with checkpoint_every=0 leaves
    (run / "config.yaml").write_text("data: x\n")
    (run / "metrics.jsonl").write_text('{"iteration": 1, "train/loss": 4.2}\n')
    assert main(sft_args(tmp_path, "resume=auto")) == 0
    err = capsys.readouterr().err
    assert "stopped before its first checkpoint; starting it again from the beginning" in err
    assert [r["iteration"] for r in rows(run)] == [1, 2, 3] and (run / "policy").is_dir()
    # finished, with no checkpoint (checkpoint_every=0): resume=auto does not retrain over its model
    assert main(sft_args(tmp_path, "resume=auto")) == 2
    assert "holds a finished run (policy/) and no checkpoint to continue from" in capsys.readouterr().err
