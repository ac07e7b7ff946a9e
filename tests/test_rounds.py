"""`tether rlhf`: rounds of sample -> label -> reward model -> PPO on the tiny model, with a
simulated labeler (the page and people: tests/test_rounds_browser.py)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tether.cli import main
from tether.config import load_config
from tether.errors import ConfigError, DataError, TetherError
from tether.labeling.export import export_jsonl
from tether.labeling.store import MIGRATIONS, RoundProgress, Store
from tether.labeling.tasks import Task, load_tasks, parse_task_row
from tether.rounds.config import RoundsConfig
from tether.rounds.labels import collect_round_labels
from tether.rounds.paths import RoundPaths
from tether.rounds.pipeline import require_learned, round_paths, run_rlhf

pytestmark = pytest.mark.usefixtures("one_thread")

# the shipped tiny config: two rounds of 3 prompts x 3 responses = 9 tasks and 2 PPO iterations each
TINY = load_config(RoundsConfig, Path(__file__).parents[1] / "configs" / "rlhf-tiny.yaml", ["quiet=true"])
CALLS: list[str] = []  # prompts counting_labeler was asked about


def counting_labeler(prompt: str, responses: list[str]) -> list[int]:
    """Shortest first, never a tie; records each call."""
    CALLS.append(prompt)
    return sorted(range(len(responses)), key=lambda i: (len(responses[i]), i))


def tiny_config(tmp_path: Path, **changes) -> RoundsConfig:
    return replace(TINY, output_dir=str(tmp_path), run_name="rlhf", **changes)


def hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def same_weights(state: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(state[name], tensor) for name, tensor in saved.items())


# ----- config ---------------------------------------------------------------------------------


def test_budgets_split_evenly_over_rounds_and_label_prompts_follow_on():
    config = RoundsConfig(rounds=3, label_prompts=10, ppo_iterations=25)
    # 10 = 4 + 3 + 3 and 25 = 9 + 8 + 8: the first rounds take the remainder
    assert [config.share(10, r) for r in (1, 2, 3)] == [4, 3, 3]
    assert [config.share(25, r) for r in (1, 2, 3)] == [9, 8, 8]
    assert [list(config.label_prompt_range(r)) for r in (1, 2, 3)] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_a_rounds_reward_model_at_chance_stops_before_its_ppo_by_default(tmp_path):
    # as in the demo: PPO on a reward model whose held-out accuracy is not above chance would
    # follow noise, so the default stops there and says how to go on
    paths = RoundPaths(round=2, dir=tmp_path / "round-2")
    paths.rm.mkdir(parents=True)
    (paths.rm / "rm_verdict.json").write_text(json.dumps({"learned": False, "accuracy": 0.52, "ci95": [0.41, 0.63]}))
    with pytest.raises(TetherError, match=r"round 2: .*52\.0% \[41\.0%, 63\.0%\] is not above chance"):
        require_learned(RoundsConfig(), paths)
    require_learned(RoundsConfig(require_learned_reward=False), paths)  # the opt-out goes on


def test_config_errors_are_one_line(tmp_path):
    path = tmp_path / "rlhf.yaml"
    path.write_text("rounds: 4\nlabel_prompts: 6\n")
    with pytest.raises(ConfigError, match='"label_prompts" \\(6\\) must give every one of the 4 rounds at least 2'):
        load_config(RoundsConfig, path)
    with pytest.raises(ConfigError, match="answers_per_task"):
        load_config(RoundsConfig, None, ["labeler=tether.demo.gold:gold_labeler", "answers_per_task=2"])
    with pytest.raises(ConfigError, match="label_db"):
        load_config(RoundsConfig, None, ["label_server=http://127.0.0.1:8765"])
    with pytest.raises(ConfigError, match="eval_prompts"):
        load_config(RoundsConfig, None, ["gold=tether.demo.gold:gold_score", "eval_prompts=null"])
    assert load_config(RoundsConfig, None, ["labelers=[alice, bob]"]).labelers == ["alice", "bob"]


# ----- the round of a task: file, store, export, API -------------------------------------------


def test_a_task_keeps_its_round_through_file_store_export_and_api(tmp_path):
    from fastapi.testclient import TestClient

    from tether.labeling.server import create_app

    task = parse_task_row({"id": "r2-a", "prompt": "p", "responses": ["x", "yy"], "round": 2}, "tasks.jsonl:1")
    assert task.round == 2 and task.to_json()["round"] == 2
    with pytest.raises(DataError, match='tasks.jsonl:3: field "round": expected a positive integer, got int 0'):
        parse_task_row({"prompt": "p", "responses": ["x", "y"], "round": 0}, "tasks.jsonl:3")
    store = Store(tmp_path / "labels.sqlite", create=True)
    store.add_tasks([task, Task("plain", "q", ("a", "b"))])
    token = store.add_labeler("ann")
    assert [t.round for t in store.tasks()] == [2, None]

    client = TestClient(create_app(store))
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/next", headers=headers).json()["task"]["round"] == 2
    client.post("/api/answers", headers=headers, json={"task_id": "r2-a", "choice": "b", "request_id": "1"})
    assert client.get("/api/next", headers=headers).json()["task"]["round"] is None
    client.post("/api/answers", headers=headers, json={"task_id": "plain", "choice": "a", "request_id": "2"})

    export_jsonl(store, tmp_path / "all.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [r.get("round") for r in rows] == [2, None]  # a task outside rounds exports as before
    export_jsonl(store, tmp_path / "round2.jsonl", keep=lambda t: t.round == 2)
    assert [json.loads(line)["task_id"] for line in (tmp_path / "round2.jsonl").read_text().splitlines()] == ["r2-a"]


def test_a_store_of_the_previous_schema_gains_the_round_column(tmp_path):
    path = tmp_path / "v2.sqlite"
    conn = sqlite3.connect(path)
    for migration in MIGRATIONS[:2]:
        for statement in migration:
            conn.execute(statement)
    conn.execute("INSERT INTO tasks (id, position, prompt, responses, k, truncated) "
                 "VALUES ('t1', 0, 'p', '[\"a\", \"b\"]', 2, '[true, false]')")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    store = Store(path)
    assert store.tasks() == [Task("t1", "p", ("a", "b"), (True, False), None)]
    assert store.schema_version() == 3


def test_round_progress_counts_tasks_with_enough_live_answers(tmp_path):
    store = Store(tmp_path / "labels.sqlite", create=True)
    store.add_tasks([Task("a", "p", ("x", "y"), round=1), Task("b", "p", ("x", "z"), round=1),
                     Task("c", "p", ("x", "w"), round=2)])
    store.add_labeler("ann")
    store.add_labeler("bob")
    ann, bob = store.labeler("ann"), store.labeler("bob")
    store.submit(ann, "a", "a", None, None, "1")
    store.submit(bob, "a", "skip", None, None, "2")  # a skip is an answer: the task was seen
    store.submit(ann, "b", "a", None, None, "3")
    store.submit(ann, "c", "a", None, None, "4")
    assert store.round_progress(1, 1) == RoundProgress(answered=2, total=2)
    assert store.round_progress(1, 2).answered == 1  # only "a" has two labelers' answers
    store.undo(ann)  # ann's latest: task c (round 2)
    assert (store.round_progress(2, 1).answered, store.round_progress(2, 1).total) == (0, 1)


# ----- waiting for people ---------------------------------------------------------------------


def _people_round(tmp_path: Path, **changes) -> tuple[RoundsConfig, Store, Path]:
    config = tiny_config(tmp_path, labeler=None, poll_interval_s=0.05, min_round_preferences=2, **changes)
    store = Store(tmp_path / "labels.sqlite", create=True)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"r1-{i}", "prompt": f"p{i}", "responses": ["x", f"y{i}"], "round": 1})
                             + "\n" for i in range(3)))
    return config, store, tasks


def test_the_round_waits_for_every_answer_then_goes_on(tmp_path):
    config, store, tasks = _people_round(tmp_path)
    store.add_labeler("ann")
    ann = store.labeler("ann")

    def label_slowly():
        time.sleep(0.3)  # the round is waiting by now
        for i in range(3):
            store.submit(ann, f"r1-{i}", "a", None, None, f"q{i}")
            time.sleep(0.1)

    helper = threading.Thread(target=label_slowly)
    helper.start()
    started = time.monotonic()
    labels = collect_round_labels(config, store, 1, tasks, tmp_path / "prefs.jsonl", tmp_path / "labels.json", None)
    helper.join()
    assert time.monotonic() - started >= 0.5  # it did wait for the third answer
    assert (labels.answered, labels.tasks, labels.preferences, labels.deadline_passed) == (3, 3, 3, False)
    assert json.loads((tmp_path / "labels.json").read_text())["answered"] == 3
    assert len((tmp_path / "prefs.jsonl").read_text().splitlines()) == 3


def test_at_the_deadline_the_round_goes_on_with_enough_answers_and_stops_with_too_few(tmp_path):
    config, store, tasks = _people_round(tmp_path, label_deadline_s=0.3)
    store.add_tasks(load_tasks(tasks))
    store.add_labeler("ann")
    ann = store.labeler("ann")
    store.submit(ann, "r1-0", "a", None, None, "q0")
    with pytest.raises(TetherError, match="1 preferences .* fewer than min_round_preferences=2"):
        collect_round_labels(config, store, 1, tasks, tmp_path / "prefs.jsonl", tmp_path / "labels.json", None)
    assert not (tmp_path / "labels.json").exists()  # not done: a resumed run waits again
    store.submit(ann, "r1-1", "b", None, None, "q1")
    labels = collect_round_labels(config, store, 1, tasks, tmp_path / "prefs.jsonl", tmp_path / "labels.json", None)
    assert (labels.answered, labels.preferences, labels.deadline_passed) == (2, 2, True)


def test_people_need_labelers_and_a_server_that_answers(tmp_path, capsys):
    import httpx

    from tether.labeling.testing import free_port
    from tether.rounds.labels import labeling_page

    config, store, _ = _people_round(tmp_path)
    with pytest.raises(TetherError, match="has no labelers"):
        with labeling_page(config, store):
            pass
    down = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(TetherError, match=f"label_server {down} does not answer"):
        with labeling_page(replace(config, labelers=["ann"], label_server=down, label_db=str(store.path)), store):
            pass
    assert store.labeler("ann") is None  # no token made that nobody was shown
    port = free_port()
    with labeling_page(replace(config, labelers=["ann"], port=port), store) as url:
        assert url == f"http://127.0.0.1:{port}/"
        assert httpx.get(url + "api/health").json()["ok"] is True
    assert f"ann: {url}?token=" in capsys.readouterr().out
    with pytest.raises(httpx.TransportError):  # the page stops with the block
        httpx.get(url + "api/health")


# ----- two rounds with a simulated labeler ------------------------------------------------------


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    """A 2-round run, recording the weights each PPO stage starts from."""
    import tether.train.ppo as ppo_module

    out = tmp_path_factory.mktemp("rounds")
    starts: list[dict] = []  # one per round's PPO, in order
    build = ppo_module.build_roles

    def recording_build(*args, **kwargs):
        roles = build(*args, **kwargs)
        starts.append({
            "policy": {k: v.clone() for k, v in roles.policy.state_dict().items()},
            "reference": {k: v.clone() for k, v in roles.reference.state_dict().items()},
            "critic": {k: v.clone() for k, v in roles.critic.hf_model.state_dict().items()}})
        return roles

    ppo_module.build_roles = recording_build
    try:
        result = run_rlhf(tiny_config(out))
    finally:
        ppo_module.build_roles = build
    return result, starts


def test_every_round_keeps_its_tasks_labels_reward_model_and_policy(two_rounds):
    result, _ = two_rounds
    run = result.run_dir
    for r in (1, 2):
        paths = round_paths(run, r)
        tasks = [json.loads(line) for line in paths.tasks.read_text().splitlines()]
        assert len(tasks) == 9 and {t["round"] for t in tasks} == {r}  # 3 prompts x C(3,2) pairs
        assert json.loads(paths.labels.read_text())["round"] == r
        assert (paths.reward_model / "config.json").exists() and (paths.policy / "config.json").exists()
        assert (paths.critic / "config.json").exists()
    rows = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [1, 2] and [row["ppo_iterations"] for row in rows] == [2, 2]
    assert rows[1]["labels_so_far"] > rows[0]["labels_so_far"] == rows[0]["preferences"]
    for key in ("rm_score", "sft_rm_score", "gold_score", "sft_gold_score", "rm_accuracy"):
        assert all(isinstance(row[key], float) for row in rows), key
    html = result.report.read_text()
    assert "Rounds: iterated online RLHF" in html and 'alt="rounds"' in html


def test_round_two_continues_round_ones_policy_and_critic_against_the_sft_reference(two_rounds, tiny_model_path):
    result, starts = two_rounds
    round_1 = round_paths(result.run_dir, 1)
    sft = hf_weights(Path(tiny_model_path))
    first, second = starts
    # round 1: the SFT policy, a critic from round 1's reward model
    assert same_weights(first["policy"], sft) and same_weights(first["reference"], sft)
    assert same_weights(first["critic"], hf_weights(round_1.reward_model))
    # round 2: round 1's final policy and critic (which PPO did change), the SFT model as reference
    assert not same_weights(first["policy"], hf_weights(round_1.policy))
    assert same_weights(second["policy"], hf_weights(round_1.policy))
    assert same_weights(second["critic"], hf_weights(round_1.critic))
    assert same_weights(second["reference"], sft)


def test_round_twos_reward_model_trains_on_the_labels_of_both_rounds(two_rounds):
    result, _ = two_rounds
    run = result.run_dir
    round_2 = round_paths(run, 2)
    records = [json.loads(line) for line in round_2.preferences.read_text().splitlines()]
    assert {r["round"] for r in records} == {1, 2}
    store = Store(run / "labels.sqlite")
    preferences = [a for a, _ in store.live_answers() if a.choice not in ("tie", "skip")]
    assert len(records) == len(preferences)
    assert (round_2.rm / "data_summary.txt").read_text().split(": ")[1].startswith(f"{len(records)} rows")
    assert yaml.safe_load((round_2.rm / "config.yaml").read_text())["data"] == str(round_2.preferences)


# ----- resume -----------------------------------------------------------------------------------


def test_resume_continues_after_round_ones_reward_model_without_labeling_again(tmp_path, monkeypatch):
    import tether.train.ppo as ppo_module

    config = tiny_config(tmp_path, labeler=f"{__name__}:counting_labeler", gold=None)
    real_train_ppo = ppo_module.train_ppo

    def interrupted(ppo_config):
        raise KeyboardInterrupt  # Ctrl+C as round 1's PPO starts

    CALLS.clear()
    monkeypatch.setattr(ppo_module, "train_ppo", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_rlhf(config)
    round_1 = round_paths(tmp_path / "rlhf", 1)
    assert round_1.next_stage() == 3  # sampled, labeled, reward model trained; PPO not
    assert len(CALLS) == 9
    store = Store(tmp_path / "rlhf" / "labels.sqlite")
    answers_before = [(a.id, a.task_id, a.created_at) for a in store.answer_rows()]
    rm_written = (round_1.reward_model / "model.safetensors").stat().st_mtime_ns
    tasks_before = round_1.tasks.read_text()

    CALLS.clear()
    monkeypatch.setattr(ppo_module, "train_ppo", real_train_ppo)
    with pytest.raises(TetherError, match="already exists; continue it with `tether rlhf --resume"):
        run_rlhf(config)  # without resume, an existing run is never touched
    result = run_rlhf(tiny_config(tmp_path, labeler=f"{__name__}:counting_labeler", gold=None, resume="auto"))

    round_2_tasks = [json.loads(line) for line in round_paths(result.run_dir, 2).tasks.read_text().splitlines()]
    assert len(CALLS) == len(round_2_tasks) == 9  # only round 2's tasks were labeled
    assert [(a.id, a.task_id, a.created_at) for a in store.answer_rows()][:9] == answers_before
    assert (round_1.reward_model / "model.safetensors").stat().st_mtime_ns == rm_written
    assert round_1.tasks.read_text() == tasks_before
    assert [row["round"] for row in result.rows] == [1, 2]


def test_cli_resume_keeps_the_runs_config(tmp_path, capsys):
    run = tmp_path / "rlhf"
    run.mkdir()
    assert main(["rlhf", "--resume", str(run)]) == 2
    assert "no rlhf.yaml there" in capsys.readouterr().err
    (run / "rlhf.yaml").write_text("model: tiny-llama\n")
    assert main(["rlhf", "--resume", str(run), "learning_rate=1"]) == 2
    assert "--resume keeps the run's config" in capsys.readouterr().err


# ----- tether demo rounds=R ---------------------------------------------------------------------


def test_demo_in_rounds_splits_its_labels_and_iterations(tmp_path, capsys):
    out = tmp_path / "demo"
    tiny = ["label_prompts=4", "eval_samples=6", "ppo_iterations=3", "ppo_epochs=1", "bootstrap=200",
            "sample_batch_size=16"]
    assert main(["demo", "--quick", "--model", "tiny-llama", "--out", str(out), *tiny, "rounds=2"]) == 0
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    # 4 labeled prompts = 2 + 2, 3 PPO iterations = 2 + 1; --quick's 3 responses give 3 pairs a prompt
    assert [row["tasks"] for row in rows] == [6, 6] and [row["ppo_iterations"] for row in rows] == [2, 1]
    result = json.loads((out / "eval.json").read_text())
    assert result["label_counts"]["tasks"] == 12
    assert "over 2 rounds" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert html.index("Evaluation: SFT vs PPO") < html.index("Rounds: iterated online RLHF")
    assert not (out / "ppo").exists() and (out / "round_2" / "ppo" / "policy").is_dir()


def test_a_run_nobody_labels_stops_before_making_its_directory(tmp_path, capsys):
    assert main(["rlhf", f"output_dir={tmp_path}", "run_name=nobody"]) == 2
    assert "who labels?" in capsys.readouterr().err
    assert not (tmp_path / "nobody").exists()
