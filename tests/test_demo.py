"""`tether demo`: the gold labeler, the bootstrap, the config, and the whole pipeline on the
tiny model (`--quick --model tiny-llama`, tiny sizes: well under a minute on 2 cores)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tether.cli import main
from tether.config import load_config
from tether.demo.config import DemoConfig
from tether.demo.evaluate import bootstrap_ci, per_prompt_means
from tether.demo.gold import gold_labeler, gold_score
from tether.errors import ConfigError

# on top of --quick: the smallest sizes that still run every phase
TINY = ["label_prompts=4", "eval_samples=6", "ppo_iterations=2", "ppo_epochs=1", "bootstrap=200", "sample_batch_size=16"]


def run_quick(out: Path, *extra: str, options: tuple[str, ...] = ()) -> int:
    return main(["demo", "--quick", "--model", "tiny-llama", "--out", str(out), *options, *TINY, *extra])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "quick"
    assert run_quick(out, "eval_samples_per_prompt=2") == 0
    return out


# ----- the simulated human ------------------------------------------------------------------


def test_gold_prefers_complete_concise_on_topic_friendly_answers():
    prompt = "How do I boil an egg?"
    good = "Happy to help! Boil the egg in water for eight minutes."
    cold = "Put the egg in water and heat it for eight minutes"
    rambling = " ".join(["Eggs are a food that people have eaten for a very long time."] * 6)
    assert gold_score(prompt, good) > gold_score(prompt, cold) > gold_score(prompt, rambling)
    assert gold_score(prompt, "") == -2.0
    # complete: ends on "." -> 1.0; on topic: {boil, egg} both reused -> 0.5; friendly: "happy"
    # and "!" of 3 -> 0.3 * 2/3; 11 words -> -11/60
    assert gold_score(prompt, good) == pytest.approx(1.0 + 0.5 + 0.3 * 2 / 3 - 11 / 60)
    # cut off (no sentence mark): 0; on topic: "egg" of {boil, egg} -> 0.25; 11 words
    assert gold_score(prompt, cold) == pytest.approx(0.25 - 11 / 60)


def test_gold_labeler_ranks_best_first_and_ties_equal_scores():
    prompt = "Suggest a name for a bakery."
    assert gold_labeler(prompt, ["Flour Power.", "Happy to help! Try Flour Power, a great bakery name."]) == [1, 0]
    assert gold_labeler(prompt, ["same", "same"]) == "tie"
    assert gold_labeler(prompt, ["a", "great!", "great! glad!"]) == [2, 1, 0]


def test_bootstrap_interval_brackets_the_mean():
    values = [0.0, 1.0] * 50
    mean, lo, hi = bootstrap_ci(values, 1000, seed=0)
    assert mean == 0.5 and lo < 0.5 < hi
    assert hi - lo == pytest.approx(2 * 1.96 * 0.05, abs=0.03)  # ≈ ±1.96·σ/√n, σ = 0.5, n = 100
    assert bootstrap_ci([2.0] * 5, 100) == (2.0, 2.0, 2.0)


def test_per_prompt_means_average_each_prompts_responses():
    # prompts a, b, c with 2 responses each: (1+3)/2, (0+0)/2, (5+6)/2
    assert per_prompt_means([1.0, 3.0, 0.0, 0.0, 5.0, 6.0], 2) == [2.0, 0.0, 5.5]
    assert per_prompt_means([1.0, 2.0], 1) == [1.0, 2.0]


def test_config_errors_are_one_line(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text("label_prompts: 2\n")
    with pytest.raises(ConfigError, match="label_prompts"):
        load_config(DemoConfig, path)
    with pytest.raises(ConfigError, match="module:function"):
        load_config(DemoConfig, None, ["labeler=nocolon"])
    config = load_config(DemoConfig, Path(__file__).parent.parent / "configs" / "demo.yaml")
    assert config == DemoConfig()  # the shipped file spells out the defaults


def test_bad_labeler_fails_before_any_model_loads(tmp_path, capsys):
    assert run_quick(tmp_path / "bad", options=("--labeler", "tether.demo.gold:no_such_function")) == 2
    assert "has no function 'no_such_function'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# ----- the whole pipeline, tiny ----------------------------------------------------------------


def test_quick_demo_writes_every_artifact(quick_run, capsys):
    for name in ("tasks.jsonl", "labels.sqlite", "preferences.jsonl", "rm/reward_model/config.json",
                 "ppo/policy/config.json", "ppo/metrics.jsonl", "eval.json", "report.html", "report.md"):
        assert (quick_run / name).exists(), name
    result = json.loads((quick_run / "eval.json").read_text())
    assert result["prompts"] == 6 and result["responses_per_prompt"] == 2
    for policy in ("sft", "ppo"):
        for key in ("gold", "rm", "kl", "length"):
            cell = result["policies"][policy][key]
            assert cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1]
    assert result["policies"]["sft"]["kl"]["mean"] == 0.0  # the SFT policy is the reference
    assert 0 <= result["win_rate_ppo_over_sft"]["mean"] <= 1
    assert len(result["samples"]) == 2
    # the labels went through the store: every exported pair names the simulated labeler
    rows = [json.loads(line) for line in (quick_run / "preferences.jsonl").read_text().splitlines()]
    assert rows and all(r["labeler"] == "sim-gold-labeler" for r in rows)


def test_quick_demo_report_has_the_evaluation_first_and_png_plots(quick_run):
    html = (quick_run / "report.html").read_text()
    assert html.index("Evaluation: SFT vs PPO") < html.index("<h2>Doctor</h2>")
    for name in ("eval_means.png", "eval_win_rate.png"):
        data = (quick_run / "report_plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 200 and height > 100
    assert "win rate PPO over SFT" in (quick_run / "report.md").read_text()
    assert "6 held-out prompts, 2 sampled responses each (averaged per prompt)" in html


def test_another_labeler_from_the_command_line(tmp_path, capsys):
    """Also: more label prompts than training prompts cycles them (4 from 3 prompts, 3 responses
    each under --quick: 3 pair tasks per prompt, 12 in all)."""
    out = tmp_path / "longer"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Name a fruit.", "Say hi.", "Count to 3.")))
    assert run_quick(out, "ppo_iterations=1", f"prompts={prompts}",
                     options=("--labeler", "tether.labeling.simulated:prefer_longer")) == 0
    tasks = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    asked = DemoConfig().instruction  # appended to every prompt, labeled and trained on alike
    assert len(tasks) == 12
    assert sorted({t["prompt"] for t in tasks}) == [f"{p} {asked}" for p in ("Count to 3.", "Name a fruit.", "Say hi.")]
    rows = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    assert all(r["labeler"] == "sim-prefer-longer" for r in rows)
    assert all(len(r["chosen"]) >= len(r["rejected"]) for r in rows)
    assert "report:" in capsys.readouterr().out


def test_the_instruction_reaches_labeling_ppo_and_evaluation(quick_run):
    """The brevity instruction is part of every prompt of the run: the labeled tasks, the PPO
    run's prompt file and the held-out prompts of the evaluation."""
    import yaml

    asked = DemoConfig().instruction
    tasks = [json.loads(line) for line in (quick_run / "tasks.jsonl").read_text().splitlines()]
    assert tasks and all(t["prompt"].endswith(" " + asked) for t in tasks)
    ppo_prompts = yaml.safe_load((quick_run / "ppo" / "config.yaml").read_text())["prompts"]
    assert Path(ppo_prompts) == quick_run / "prompts-train.jsonl"
    trained = [json.loads(line)["prompt"] for line in Path(ppo_prompts).read_text().splitlines()]
    assert trained and all(p.endswith(" " + asked) for p in trained)
    evaluated = json.loads((quick_run / "eval.json").read_text())["samples"]
    assert evaluated and all(s["prompt"].endswith(" " + asked) for s in evaluated)


def test_without_an_instruction_the_prompts_are_as_given(tmp_path):
    out = tmp_path / "plain"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Name a fruit.", "Say hi.")))
    assert run_quick(out, "ppo_iterations=1", f"prompts={prompts}", "instruction=null") == 0
    tasks = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    assert sorted({t["prompt"] for t in tasks}) == ["Name a fruit.", "Say hi."]


def test_existing_run_dir_needs_overwrite(quick_run, capsys):
    assert run_quick(quick_run) == 2
    assert "overwrite=true" in capsys.readouterr().err
