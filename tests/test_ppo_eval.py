"""The held-out evaluation inside an online run (tether/train/evaluation.py): its arithmetic,
the eval/* rows `tether ppo` logs, that eval prompts stay out of training, that evaluating
leaves training bit-identical, and (slow) that the doctor names reward hacking from them."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from tether.cli import main
from tether.config import load_config
from tether.errors import ConfigError, TetherError
from tether.rollout.engine import HFEngine
from tether.rollout.prompts import TINY_WORDS, builtin_prompts
from tether.rollout.rules import vowels_in_moderation
from tether.train.evaluation import (eval_means, eval_sums, isolated_rng, training_and_eval_prompts,
                                     win_rates)
from tether.train.ppo import train_ppo
from tether.train.ppo_config import PPOConfig

pytestmark = pytest.mark.usefixtures("one_thread")

EVAL_KEYS = {"eval/score_mean", "eval/gold_score_mean", "eval/win_rate", "eval/kl", "eval/response_length",
             "eval/eos_fraction", "eval/reference_score_mean", "eval/reference_gold_score_mean"}
GOLD = "gold=tether.rollout.rules:vowels_in_moderation"


def tiny_config(tmp_path, *items: str) -> PPOConfig:
    return load_config(PPOConfig, "configs/ppo-tiny.yaml", [f"output_dir={tmp_path}", "quiet=true", "overwrite=true", *items])


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def held_out_file(tmp_path, n: int = 8):
    """Four-word prompts: builtin:tiny's have three words, so none of these is a training prompt."""
    rng = random.Random(7)
    path = tmp_path / "held_out.txt"
    path.write_text("".join(" ".join(rng.sample(TINY_WORDS, 4)) + ":\n" for _ in range(n)))
    return path


# ----- the arithmetic ---------------------------------------------------------------------------


def test_win_rate_counts_ties_as_half():
    policy = torch.tensor([0.9, 0.1, 0.5, 0.5])
    reference = torch.tensor([0.2, 0.3, 0.5, 0.4])
    # win, loss, tie, win
    assert win_rates(policy, reference).tolist() == [1.0, 0.0, 0.5, 1.0]


def test_eval_means_over_ranks_are_the_global_means():
    # rank 0: 2 prompts, rank 1: 1 prompt. Scores 1, 3 | 5 -> global mean 3 (not (2 + 5) / 2 = 3.5)
    def values(score, kl, length, eos, ref):
        return {"score": torch.tensor(score), "kl": torch.tensor(kl), "length": torch.tensor(length),
                "eos": torch.tensor(eos)}, {"score": torch.tensor(ref)}

    a = eval_sums(*values([1.0, 3.0], [2.0, 4.0], [10.0, 20.0], [1.0, 0.0], [2.0, 3.0]))
    b = eval_sums(*values([5.0], [0.0], [30.0], [1.0], [6.0]))
    assert a["n"] == 2 and a["win_rate"] == 0.5  # 1 < 2 loses (0), 3 = 3 ties (½)
    averaged = {k: (a[k] + b[k]) / 2 for k in a}  # what DistContext.mean_metrics gives
    means = eval_means(averaged)
    assert means["eval/score_mean"] == pytest.approx(3.0)  # (1 + 3 + 5) / 3
    assert means["eval/kl"] == pytest.approx(2.0)  # (2 + 4 + 0) / 3
    assert means["eval/response_length"] == pytest.approx(20.0)
    assert means["eval/eos_fraction"] == pytest.approx(2 / 3)
    assert means["eval/reference_score_mean"] == pytest.approx(11 / 3)
    # wins: 1 < 2 -> 0; 3 = 3 -> ½; 5 < 6 -> 0
    assert means["eval/win_rate"] == pytest.approx(0.5 / 3)
    assert "eval/gold_score_mean" not in means  # no gold function, no gold key


def test_eval_sums_carry_gold_when_scored():
    policy = {"score": torch.tensor([1.0]), "kl": torch.tensor([0.0]), "length": torch.tensor([4.0]),
              "eos": torch.tensor([1.0]), "gold": torch.tensor([-0.5], dtype=torch.float64)}
    means = eval_means(eval_sums(policy, {"score": torch.tensor([1.0]), "gold": torch.tensor([0.25])}))
    assert means["eval/gold_score_mean"] == -0.5 and means["eval/reference_gold_score_mean"] == 0.25


def test_vowels_in_moderation_peaks_at_a_third():
    # "ab": 1/2 vowels -> -|1/2 - 1/3| = -1/6; "abc": 1/3 -> 0; "bcd": 0 -> -1/3
    assert vowels_in_moderation("p", "ab") == pytest.approx(-1 / 6)
    assert vowels_in_moderation("p", "abc") == pytest.approx(0.0)
    assert vowels_in_moderation("p", "bcd") == pytest.approx(-1 / 3)


def test_isolated_rng_leaves_the_training_stream_as_it_was():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with isolated_rng(torch.device("cpu"), 123):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    with isolated_rng(torch.device("cpu"), 123):
        assert torch.equal(torch.rand(3), inside)  # the same seed draws the same numbers every time


def test_training_prompts_that_are_eval_prompts_are_left_out(tmp_path, capsys):
    tiny = builtin_prompts("tiny")
    path = tmp_path / "eval.txt"
    path.write_text("".join(p + "\n" for p in tiny[:5]) + "a prompt of its own:\n")
    train, held = training_and_eval_prompts(tiny_config(tmp_path, f"eval_prompts={path}"))
    assert len(held) == 6 and not set(train) & set(held)
    assert train == [p for p in tiny if p not in set(tiny[:5])]  # the rest, in their order
    assert "training prompts are also in eval_prompts" in capsys.readouterr().err
    with pytest.raises(TetherError, match="held-out set"):
        training_and_eval_prompts(tiny_config(tmp_path, "eval_prompts=builtin:tiny"))


def test_gold_needs_eval_prompts_and_eval_every_positive(tmp_path):
    with pytest.raises(ConfigError, match="set eval_prompts"):
        tiny_config(tmp_path, GOLD)
    with pytest.raises(ConfigError, match='"eval_every": must be >= 1, got 0'):
        tiny_config(tmp_path, "eval_prompts=builtin:demo-eval", "eval_every=0")


# ----- on the tiny model -------------------------------------------------------------------------


def test_ppo_logs_finite_eval_rows_and_never_trains_on_eval_prompts(tmp_path, capsys, monkeypatch):
    tiny = builtin_prompts("tiny")
    eval_file = tmp_path / "eval.txt"  # 6 of them are training prompts too: they must be held out
    eval_file.write_text("".join(p + "\n" for p in tiny[:6]) + held_out_file(tmp_path).read_text())
    trained_on = []
    generate = HFEngine.generate

    def spy(self, prompts, *args, **kwargs):
        trained_on.extend(prompts)
        return generate(self, prompts, *args, **kwargs)

    monkeypatch.setattr(HFEngine, "generate", spy)
    code = main(["ppo", "--config", "configs/ppo-tiny.yaml", f"output_dir={tmp_path}", "quiet=true",
                 "total_iterations=5", "batch_size=16", f"eval_prompts={eval_file}", "eval_every=2", GOLD])
    assert code == 0
    metrics = read_metrics(tmp_path / "ppo-tiny")
    evaluated = [m for m in metrics if "eval/kl" in m]
    assert [m["iteration"] for m in evaluated] == [2, 4, 5]  # every 2 iterations, and the last
    for m in evaluated:
        assert EVAL_KEYS <= set(m)
        assert all(math.isfinite(m[k]) for k in EVAL_KEYS)
        assert 0.0 <= m["eval/win_rate"] <= 1.0 and 0.0 <= m["eval/eos_fraction"] <= 1.0
        assert 1.0 <= m["eval/response_length"] <= 24
        assert m["eval/kl"] > 0.0  # the policy has moved from the reference after its updates
        assert -1.0 <= m["eval/gold_score_mean"] <= 0.0
    # the reference's answers are sampled once: the same numbers in every row
    assert len({m["eval/reference_score_mean"] for m in evaluated}) == 1
    assert len(trained_on) == 5 * 16
    eval_prompts = set(eval_file.read_text().splitlines())
    assert not eval_prompts & set(trained_on)
    repeats = sum(p in set(tiny[:6]) for p in tiny)  # builtin:tiny repeats some prompts
    assert f"{repeats} of 256 training prompts are also in eval_prompts" in capsys.readouterr().err


def test_a_run_with_evaluation_trains_bit_identically_to_one_without(tmp_path):
    common = ("total_iterations=4", "batch_size=8", "mini_batch_size=8", "micro_batch_size=8", "ppo_epochs=2")
    plain = train_ppo(tiny_config(tmp_path, "run_name=plain", *common))
    evaluated = train_ppo(tiny_config(tmp_path, "run_name=evaluated", *common, f"eval_prompts={held_out_file(tmp_path)}",
                                      "eval_every=1", GOLD))
    a, b = read_metrics(plain), read_metrics(evaluated)
    assert all("eval/kl" in m for m in b) and not any("eval/kl" in m for m in a)
    for x, y in zip(a, b, strict=True):
        same = {k: v for k, v in x.items() if not k.startswith("time/") and k != "rollout/tokens_per_s"}
        assert same == {k: y[k] for k in same}
    for role in ("policy", "critic"):
        wa, wb = load_file(plain / role / "model.safetensors"), load_file(evaluated / role / "model.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), role


@pytest.mark.slow
def test_doctor_names_reward_hacking_from_the_eval_rows(tmp_path):
    # Over-optimisation on purpose: the reward pays for vowels without limit, β = 0, and the gold
    # likes vowels only up to a third of the characters. The policy writes ever more vowels, so
    # the training score climbs while the held-out gold score peaks early and falls
    # (measured: gold -0.15 at iteration 8, -0.65 at 40; training score 0.07 -> 0.93).
    from tether.diagnostics import diagnose_run
    from tether.reporting.report import write_report

    run = train_ppo(tiny_config(tmp_path, "run_name=hacked", "kl_coef=0", "total_iterations=40", "eval_every=4",
                                f"eval_prompts={held_out_file(tmp_path, 16)}", GOLD))
    findings = {f.rule: f for f in diagnose_run(run)}
    assert "reward_hacking" in findings, sorted(findings)
    assert "eval/gold_score_mean" in findings["reward_hacking"].evidence
    files = write_report(run)
    assert any(p.name == "eval_score_vs_kl.png" for p in files.plots)


@pytest.mark.slow
def test_under_torchrun_the_ranks_share_the_eval_prompts(tmp_path):
    # 3 eval prompts over 2 ranks: rank 0 evaluates two, rank 1 one and a weight-0 pad row (FSDP2's
    # forwards are collective: both ranks must run as many). The means are over the 3 prompts, and
    # DDP and FSDP2 (same seeds, same weights) give the same numbers.
    from tests.test_distributed import TINY, read_rows, torchrun

    eval_file = held_out_file(tmp_path, 3)
    evals = {}
    for strategy in ("ddp", "fsdp2"):
        torchrun(2, "-m", "tether.cli", "ppo", *TINY, f"output_dir={tmp_path}", f"run_name={strategy}",
                 f"strategy={strategy}", f"eval_prompts={eval_file}", "eval_every=1", GOLD)
        rows = read_rows(tmp_path / strategy)
        assert [r["iteration"] for r in rows] == [1, 2] and all(EVAL_KEYS <= set(r) for r in rows)
        evals[strategy] = [{k: r[k] for k in EVAL_KEYS} for r in rows]
    for a, b in zip(evals["ddp"], evals["fsdp2"]):
        assert all(math.isfinite(a[k]) for k in EVAL_KEYS)
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
        # a mean over 3 prompts: win rate in steps of ½ / 3
        assert (a["eval/win_rate"] * 6) == pytest.approx(round(a["eval/win_rate"] * 6))
