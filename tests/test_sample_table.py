"""The console's table of samples: every ``sample_table_every`` iterations (0 = never), with
prompt, response, score (and each reward source's when there are several) and KL, text printed
as written."""

import json

import pytest
from rich.console import Console

from tether.cli import main
from tether.reporting.sample_table import sample_table

pytestmark = pytest.mark.usefixtures("one_thread")


def rendered(table) -> str:
    console = Console(record=True, width=120, file=open("/dev/null", "w"))
    console.print(table)
    return console.export_text()


def test_table_shows_each_sample_and_each_reward_source():
    rows = [{"prompt": "say hi:", "response": "[bold]hi[/bold]", "score": 0.75, "kl": 0.0123,
             "rewards": {"politeness": 0.5, "brevity": 1.0}},
            {"prompt": "x" * 500, "response": "ok", "score": -2.0, "kl": 1.5,
             "rewards": {"politeness": -1, "brevity": -3}}]
    text = rendered(sample_table(7, rows))
    assert "samples at iteration 7" in text
    header = next(line for line in text.splitlines() if "prompt" in line)
    assert [h in header for h in ("prompt", "response", "score", "politeness", "brevity", "KL")] == [True] * 6
    assert "[bold]hi[/bold]" in text  # a response's brackets are text, not markup
    assert "0.75" in text and "0.0123" in text and "-2" in text and "1.5" in text
    assert "x" * 500 not in text.replace("\n", "").replace("│", "").replace(" ", "")  # long prompts are cut


def test_one_reward_source_has_no_per_source_columns():
    text = rendered(sample_table(1, [{"prompt": "p", "response": "r", "score": 1.0, "kl": 0.0}]))
    header = next(line for line in text.splitlines() if "prompt" in line)
    assert header.split() == ["┃", "prompt", "┃", "response", "┃", "score", "┃", "KL", "┃"]


@pytest.mark.parametrize("every, shown", [(2, [2]), (1, [1, 2]), (0, [])])
def test_ppo_prints_the_table_every_n_iterations(capsys, tmp_path, every, shown):
    code = main(["ppo", "--config", "configs/ppo-tiny.yaml", "quiet=true", "device=cpu", f"output_dir={tmp_path}",
                 "run_name=t", "total_iterations=2", "batch_size=4", "mini_batch_size=4", "micro_batch_size=4",
                 "ppo_epochs=1", "max_new_tokens=8", "log_samples=3", f"sample_table_every={every}"])
    err = capsys.readouterr().err
    assert code == 0
    assert [i for i in (1, 2) if f"samples at iteration {i}" in err] == shown
    samples = [json.loads(line) for line in (tmp_path / "t" / "samples.jsonl").read_text().splitlines()]
    for row in samples:
        if row["iteration"] in shown:
            assert row["prompt"] in err and f"{row['score']:.3g}" in err
