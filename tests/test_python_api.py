"""The Python API's guide cannot rot: every ```python block of docs/python-api.md (and the
reward-server example of docs/rewards.md) runs here, in order, in one namespace, in an empty
folder; the assertions after each check what the guide says it shows."""

import json
import re
from pathlib import Path

import pytest

import tether

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(doc: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", doc.read_text(encoding="utf-8"), flags=re.M | re.S)


def run_blocks(doc: Path, folder: Path, monkeypatch) -> dict:
    monkeypatch.chdir(folder)
    namespace: dict = {"__name__": "docs_example"}
    blocks = python_blocks(doc)
    assert blocks, f"{doc} has no python examples"
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"{doc.name} example {number}", "exec"), namespace)
    return namespace


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_python_api_guide_runs_as_written(tmp_path, monkeypatch, capsys):
    ns = run_blocks(DOCS / "python-api.md", tmp_path, monkeypatch)
    runs = tmp_path / "runs"
    # the quick start: a Python callable as the reward
    quick = metrics(runs / "quickstart")
    assert len(quick) == 2 and "reward/brevity" in quick[0]
    assert ns["policy"].config.model_type == "llama" and ns["tokenizer"].eos_token is not None
    # two named sources, weighted: the trained score is their weighted sum
    for row in metrics(runs / "mixed"):
        assert row["objective/score_mean"] == pytest.approx(
            row["reward/vowels"] + 0.5 * row["reward/brevity"], abs=1e-5)  # missing_eos_penalty unset: pure sum
    # a callback's True ends the run after iteration 3 of 100 with the policy saved
    stopped = metrics(runs / "stopped-early")
    assert [r["iteration"] for r in stopped] == [1, 2, 3]
    assert ns["scores"] == [r["objective/score_mean"] for r in stopped]
    assert (runs / "stopped-early" / "policy" / "config.json").is_file()
    # a Python-reward run continued from Python, with the same reward, to 4 iterations
    assert [r["iteration"] for r in metrics(runs / "resumable")] == [1, 2, 3, 4]
    assert "reward/brevity" in metrics(runs / "resumable")[-1]
    # a string from a reward is refused, by name
    assert "reward function lambda returned str 'good' for response 0" in capsys.readouterr().out
    assert not (runs / "bad" / "policy").exists()
    # SFT -> reward model -> DPO, and PPO on that reward model
    assert (runs / "sft" / "policy" / "config.json").is_file() and (runs / "rm" / "reward_model").is_dir()
    assert (runs / "dpo" / "policy").is_dir() and "reward/reward_model" in metrics(runs / "from-sft")[0]
    # an SFT callback sees each step's row and ends the run early, its policy saved
    sft_rows = metrics(runs / "sft-callback")
    assert 1 <= len(sft_rows) <= 3 and ns["sft_losses"] == [r["train/loss"] for r in sft_rows]
    assert (runs / "sft-callback" / "policy" / "config.json").is_file()


def test_reward_server_example_runs_as_written(tmp_path, monkeypatch):
    ns = run_blocks(DOCS / "rewards.md", tmp_path, monkeypatch)
    rows = metrics(Path(ns["run_dir"]))
    port = ns["server"].server_port
    assert len(rows) == 2
    assert all(f"reward/127.0.0.1_{port}_score" in r and "reward/vowel_fraction" in r for r in rows)
    assert rows[0][f"reward/127.0.0.1_{port}_score"] > 0  # the server's length reward reached the run


def test_configs_are_exported_and_fields_checked():
    assert tether.PPOConfig is tether.PPO(reward=print).config.__class__
    with pytest.raises(tether.ConfigError, match="did you mean 'total_iterations'"):
        tether.PPO(total_iteration=3)
    with pytest.raises(tether.ConfigError, match="must be >= 1"):
        tether.SFT(data="x.jsonl", batch_size=0)
