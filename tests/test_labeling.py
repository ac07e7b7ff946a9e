"""Labeling: tasks files, the store, export, agreement stats, simulated labelers, the CLI.
All in-process and fast; the live server is tested in test_labeling_server.py."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import types

import pytest

from tether.cli import main
from tether.errors import DataError, TetherError
from tether.labeling.export import export_jsonl
from tether.labeling.judgement import judgement_from_output, make_judgement
from tether.labeling.simulated import load_labeler, noisy_shorter, prefer_shorter, simulate
from tether.labeling.stats import cohen_kappa, compute_stats, pair_items
from tether.labeling.store import SCHEMA_VERSION, AlreadyAnswered, Answer, Store, UnknownAnswer, UnknownTask
from tether.labeling.tasks import Task, load_prompts, load_tasks, write_tasks


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def make_store(tmp_path, tasks=None, labelers=("ann",)):
    store = Store(tmp_path / "labels.sqlite", create=True)
    store.add_tasks(tasks or [Task("t1", "Say hi", ("hi", "hello there")), Task("t2", "Name a color", ("red", "blue"))])
    tokens = {name: store.add_labeler(name) for name in labelers}
    return store, tokens


# -- tasks files ---------------------------------------------------------------------------
def test_load_tasks_reads_ids_and_derives_stable_ones(tmp_path):
    path = write_jsonl(tmp_path / "tasks.jsonl", [
        {"id": "x", "prompt": "p", "responses": ["a", "b"]},
        "",
        {"prompt": "q", "responses": ["a", "b", "c"]},
    ])
    tasks = load_tasks(path)
    assert [t.id for t in tasks] == ["x", load_tasks(path)[1].id]  # the derived id is the same on reload
    assert tasks[1].id.startswith("t-") and tasks[1].k == 3


@pytest.mark.parametrize("row, message", [
    ({"responses": ["a", "b"]}, 'tasks.jsonl:2: field "prompt" is missing'),
    ({"prompt": "", "responses": ["a", "b"]}, 'tasks.jsonl:2: field "prompt": expected a non-empty string'),
    ({"prompt": 3, "responses": ["a", "b"]}, 'tasks.jsonl:2: field "prompt": expected a non-empty string, got int 3'),
    ({"prompt": "p"}, 'tasks.jsonl:2: field "responses" is missing'),
    ({"prompt": "p", "responses": "ab"}, 'tasks.jsonl:2: field "responses": expected a list of strings'),
    ({"prompt": "p", "responses": ["only one"]}, 'tasks.jsonl:2: field "responses": expected at least 2 responses, got 1'),
    ({"prompt": "p", "responses": ["a", 7]}, 'tasks.jsonl:2: field "responses[1]": expected a string, got int 7'),
    ({"id": 5, "prompt": "p", "responses": ["a", "b"]}, 'tasks.jsonl:2: field "id": expected a non-empty string'),
    ({"id": "ok", "prompt": "p", "responses": ["a", "b"]}, 'tasks.jsonl:2: field "id": duplicate task id'),
    ('{"prompt": "p", ', "tasks.jsonl:2: not valid JSON"),
    ("[1, 2]", "tasks.jsonl:2: expected a JSON object, got list"),
])
def test_load_tasks_names_file_row_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "tasks.jsonl", [{"id": "ok", "prompt": "p", "responses": ["a", "b"]}, row])
    with pytest.raises(DataError, match="^" + re.escape(message)):
        load_tasks(path)


def test_load_prompts_jsonl_and_txt(tmp_path):
    assert load_prompts(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}])) == ["a", "b"]
    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    assert load_prompts(tmp_path / "p.txt") == ["first", "second"]
    with pytest.raises(DataError, match='p2.jsonl:1: field "prompt" is missing'):
        load_prompts(write_jsonl(tmp_path / "p2.jsonl", [{"text": "a"}]))


# -- judgements ----------------------------------------------------------------------------
def test_judgements_normalise_every_way_of_answering():
    assert make_judgement("a", None, 2).ranking == (0, 1)
    assert make_judgement("rank", [1, 0], 2).choice == "b"  # a K = 2 ranking is stored as a / b
    assert make_judgement("rank", [2, 0, 1], 3).ranking == (2, 0, 1)
    assert make_judgement("tie", None, 3).ranking is None
    assert judgement_from_output(1, 2).choice == "b"
    assert judgement_from_output("skip", 2).choice == "skip"
    for bad, k in [(("rank", [0, 0, 1]), 3), (("a", None), 3), (("rank", None), 3), (("huh", None), 2), (("rank", ["0", 1]), 2)]:
        with pytest.raises(DataError):
            make_judgement(*bad, k)
    for bad, k in [(2, 2), (0, 3), (True, 2), ("maybe", 2), ([0, 1], 3), (None, 2)]:
        with pytest.raises(DataError):
            judgement_from_output(bad, k)


# -- store ---------------------------------------------------------------------------------
def test_store_schema_wal_and_token_hashing(tmp_path):
    store, tokens = make_store(tmp_path)
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == store.schema_version()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert tokens["ann"] not in str(conn.execute("SELECT * FROM labelers").fetchall())  # only a hash is stored
    assert store.labeler_for_token(tokens["ann"]).name == "ann"
    assert store.labeler_for_token("nope") is None and store.labeler_for_token("") is None
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    with pytest.raises(TetherError, match="newer than this tether"):
        Store(store.path)
    with pytest.raises(TetherError, match="not found"):
        Store(tmp_path / "missing.sqlite")
    (tmp_path / "notes.txt").write_text("not a database, but long enough to have a header " * 10)
    with pytest.raises(TetherError, match="not a usable labeling database"):
        Store(tmp_path / "notes.txt")
    with pytest.raises(TetherError, match="already exists"):
        store.add_labeler("ann")
    with pytest.raises(DataError, match="labeler name"):
        store.add_labeler("bad name!")


def test_add_tasks_is_idempotent_and_refuses_changed_text_atomically(tmp_path):
    store, _ = make_store(tmp_path)
    assert store.add_tasks([Task("t1", "Say hi", ("hi", "hello there")), Task("t3", "p", ("x", "y"))]) == 1
    with pytest.raises(DataError, match="'t2' is already in labels.sqlite with a different"):
        store.add_tasks([Task("t4", "p", ("x", "y")), Task("t2", "Name a color", ("red", "green"))])
    assert [t.id for t in store.tasks()] == ["t1", "t2", "t3"]  # t4 rolled back with the failed batch


def test_submit_is_idempotent_one_live_answer_and_undo(tmp_path):
    store, _ = make_store(tmp_path)
    ann = store.labeler("ann")
    first = store.submit(ann, "t1", "a", None, "  short wins ", "req-1")
    assert first.created and first.answer.reason == "short wins" and first.progress.done == 1
    retry = store.submit(ann, "t1", "b", None, None, "req-1")  # same request id: nothing written
    assert not retry.created and retry.answer == first.answer
    with pytest.raises(AlreadyAnswered):
        store.submit(ann, "t1", "b", None, None, "req-2")
    with pytest.raises(UnknownTask):
        store.submit(ann, "nope", "a", None, None, "req-3")
    with pytest.raises(DataError):
        store.submit(ann, "t2", "rank", [0, 0], None, "req-4")
    assert store.next_task(ann).id == "t2"
    undone = store.undo(ann)
    assert undone.id == first.answer.id and undone.undone_at is not None
    assert store.undo(ann, undone.id).undone_at == undone.undone_at  # undoing again changes nothing
    assert store.undo(ann) is None  # nothing live left
    with pytest.raises(UnknownAnswer):
        store.undo(ann, 999)
    assert store.next_task(ann).id == "t1" and store.progress(ann).done == 0
    assert store.submit(ann, "t1", "b", None, None, "req-5").created  # answered again after the undo
    assert [a.choice for a in store.answer_rows()] == ["a", "b"]  # the undone row is kept, marked


# -- export and stats ----------------------------------------------------------------------
def test_export_keeps_every_labeler_and_counts_ties_and_skips(tmp_path):
    tasks = [Task("t1", "Say hi", ("hi", "hello there")), Task("t2", "Name a color", ("red", "blue")),
             Task("t3", "Count", ("1 2 3", "one two three", "1"))]
    store, _ = make_store(tmp_path, tasks, labelers=("ann", "bob"))
    ann, bob = store.labeler("ann"), store.labeler("bob")
    store.submit(ann, "t1", "a", None, "shorter", "1")
    store.submit(bob, "t1", "b", None, None, "2")
    store.submit(ann, "t2", "tie", None, None, "3")
    store.submit(bob, "t2", "skip", None, None, "4")
    store.submit(ann, "t3", "rank", [2, 0, 1], None, "5")
    summary = export_jsonl(store, tmp_path / "prefs.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert rows == [
        {"prompt": "Say hi", "chosen": "hi", "rejected": "hello there", "labeler": "ann", "task_id": "t1", "reason": "shorter"},
        {"prompt": "Say hi", "chosen": "hello there", "rejected": "hi", "labeler": "bob", "task_id": "t1", "reason": None},
        {"prompt": "Count", "responses": ["1 2 3", "one two three", "1"], "ranking": [2, 0, 1], "labeler": "ann",
         "task_id": "t3", "reason": None},
    ]
    assert (summary.pairs, summary.rankings, summary.ties, summary.skips, summary.labelers) == (2, 1, 1, 1, 2)


def test_cohen_kappa_by_hand():
    # A: first first second second tie ; B: first second second second tie
    # p_o = 4/5 = 0.8. A uses first 2, second 2, tie 1; B uses first 1, second 3, tie 1.
    # p_e = (2*1 + 2*3 + 1*1) / 25 = 9/25 = 0.36; kappa = (0.8 - 0.36) / (1 - 0.36) = 0.6875
    a = ["first", "first", "second", "second", "tie"]
    b = ["first", "second", "second", "second", "tie"]
    assert cohen_kappa(a, b) == pytest.approx(0.6875)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa(["first"] * 3, ["first"] * 3) is None  # p_e = 1: kappa undefined
    assert cohen_kappa([], []) is None


def test_pair_items_of_a_ranking():
    answer = Answer(1, "ann", "t", "r", "rank", (2, 0, 1), None, 0.0, None)
    # places: response 2 first, 0 second, 1 third -> (0,1): 0 better; (0,2): 2 better; (1,2): 2 better
    assert pair_items(answer, 3) == {(0, 1): "first", (0, 2): "second", (1, 2): "second"}


def test_stats_agreement_on_shared_tasks(tmp_path):
    tasks = [Task(f"t{i}", f"p{i}", ("x", "yy")) for i in range(5)]
    store, _ = make_store(tmp_path, tasks, labelers=("ann", "bob", "cat"))
    ann, bob, cat = (store.labeler(n) for n in ("ann", "bob", "cat"))
    # the hand-worked kappa example above, as answers: a = first better, b = second better
    for i, (x, y) in enumerate(zip(["a", "a", "b", "b", "tie"], ["a", "b", "b", "b", "tie"])):
        store.submit(ann, f"t{i}", x, None, None, f"ann{i}")
        store.submit(bob, f"t{i}", y, None, None, f"bob{i}")
    store.submit(cat, "t0", "skip", None, None, "cat0")  # a skip shares nothing
    stats = compute_stats(store)
    pairs = {(p.labeler_a, p.labeler_b): p for p in stats.agreement}
    assert pairs["ann", "bob"].shared_tasks == 5
    assert pairs["ann", "bob"].percent_agreement == pytest.approx(80.0)
    assert pairs["ann", "bob"].kappa == pytest.approx(0.6875)
    assert pairs["ann", "cat"].shared_tasks == 0 and pairs["ann", "cat"].kappa is None
    assert [(c.labeler, c.answered, c.ties, c.skips) for c in stats.labelers] == [("ann", 5, 1, 0), ("bob", 5, 1, 0), ("cat", 1, 0, 1)]


# -- simulated labelers --------------------------------------------------------------------
def test_simulate_goes_through_the_store_and_is_resumable(tmp_path):
    tasks = [Task("t1", "p", ("short", "much longer")), Task("t2", "q", ("same", "size")), Task("t3", "r", ("aaa", "a", "aa"))]
    store, _ = make_store(tmp_path, tasks)
    summary = simulate(store, prefer_shorter, "sim", limit=2)
    assert (summary.answered, summary.preferences, summary.ties) == (2, 1, 1)
    summary = simulate(store, prefer_shorter, "sim")
    assert (summary.answered, summary.already_done) == (1, 2)
    live = {a.task_id: a.ranking for a in store.answer_rows() if a.labeler == "sim"}
    assert live == {"t1": (0, 1), "t2": None, "t3": (1, 2, 0)}
    assert noisy_shorter("p", ["a", "bb"]) in ([0, 1], [1, 0])


def test_simulated_labeler_errors_are_clear(tmp_path):
    store, _ = make_store(tmp_path)
    with pytest.raises(TetherError, match="module:function"):
        load_labeler("no_colon")
    with pytest.raises(TetherError, match="cannot import module 'no_such_module_xyz'"):
        load_labeler("no_such_module_xyz:f")
    with pytest.raises(TetherError, match="has no function 'nope'"):
        load_labeler("tether.labeling.simulated:nope")
    with pytest.raises(DataError, match=r"labeler bad on task 't1': returned 7"):
        simulate(store, lambda prompt, responses: 7, "sim", spec="bad")
    with pytest.raises(TetherError, match="failed on task 't1': ZeroDivisionError"):
        simulate(store, lambda prompt, responses: 1 / 0, "sim", spec="boom")
    assert store.answer_rows() == []


# -- CLI -----------------------------------------------------------------------------------
def test_cli_add_labeler_simulate_export_stats(tmp_path, capsys):
    db = str(tmp_path / "l.sqlite")
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [
        {"id": "t1", "prompt": "Say hi", "responses": ["hi", "hello there"]},
        {"id": "t2", "prompt": "Count", "responses": ["1 2 3", "one two three", "1"]},
    ])
    assert main(["label", "add-labeler", "ann", "--db", db]) == 0
    token = capsys.readouterr().out.strip()
    assert Store(db).labeler_for_token(token).name == "ann"
    for fn in ("prefer_shorter", "prefer_longer"):
        assert main(["label", "simulate", "--labeler", f"tether.labeling.simulated:{fn}", "--db", db, "--tasks", str(tasks)]) == 0
    out = tmp_path / "prefs.jsonl"
    assert main(["label", "export", "--db", db, "--out", str(out)]) == 0
    assert "2 pairs and 2 rankings from 2 labelers" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["labeler"], r.get("chosen")) for r in rows if "chosen" in r} == {("sim-prefer-shorter", "hi"), ("sim-prefer-longer", "hello there")}
    assert main(["label", "stats", "--db", db, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    pair = next(p for p in stats["agreement"] if p["labeler_a"] == "sim-prefer-longer" and p["labeler_b"] == "sim-prefer-shorter")
    assert pair["shared_tasks"] == 2 and pair["percent_agreement"] == 0.0
    assert main(["label", "stats", "--db", db]) == 0
    assert "sim-prefer-longer ~ sim-prefer-shorter" in capsys.readouterr().out


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "tasks.jsonl", [{"prompt": "p", "responses": ["a", "b"]}, {"prompt": "p", "responses": ["a"]}])
    db = str(tmp_path / "l.sqlite")
    assert main(["label", "simulate", "--labeler", "tether.labeling.simulated:prefer_shorter", "--db", db, "--tasks", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'error: tasks.jsonl:2: field "responses": expected at least 2 responses, got 1'
    assert main(["label", "export", "--db", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("error: labeling database not found")
    assert main(["label", "make-tasks", "--policy", "m", "--prompts", str(bad), "--k", "1", "--out", "x"]) == 2
    assert "--k must be at least 2" in capsys.readouterr().err


def _fake_sampler(calls):
    def sample_responses(model, prompts, k, max_new_tokens=64, temperature=1.0, seed=0, return_truncated=False):
        calls.append((model, list(prompts), k, max_new_tokens, temperature, seed))
        texts = [[f"{p} answer {j}" for j in range(k)] for p in prompts]
        return (texts, [[j == 0 for j in range(k)] for _ in prompts]) if return_truncated else texts
    return sample_responses


def test_make_tasks_with_a_stub_sampler(tmp_path, monkeypatch, capsys):
    """The plumbing, against the documented signature of tether.rollout.sampling.sample_responses."""
    calls = []
    try:
        import tether.rollout.sampling as sampling
        monkeypatch.setattr(sampling, "sample_responses", _fake_sampler(calls), raising=False)
    except ImportError:  # the PPO engine's sampler is not written yet: stand in for the module
        module = types.ModuleType("tether.rollout.sampling")
        module.sample_responses = _fake_sampler(calls)
        monkeypatch.setitem(sys.modules, "tether.rollout.sampling", module)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say hi\nName a color\n")
    out = tmp_path / "tasks.jsonl"
    assert main(["label", "make-tasks", "--policy", "tiny-llama", "--prompts", str(prompts), "--k", "3", "--out", str(out),
                 "--max-new-tokens", "8", "--seed", "5"]) == 0
    assert calls == [("tiny-llama", ["Say hi", "Name a color"], 3, 8, 1.0, 5)]
    tasks = load_tasks(out)  # what make-tasks writes, the tasks reader accepts
    assert [t.responses for t in tasks][0] == ("Say hi answer 0", "Say hi answer 1", "Say hi answer 2")
    assert tasks[0].truncated == (True, False, False)  # the sampler's cut-off flags reach the tasks file


def test_make_tasks_with_the_real_sampler(tmp_path):
    sampling = pytest.importorskip("tether.rollout.sampling", reason="tether.rollout.sampling not written yet")
    if not hasattr(sampling, "sample_responses"):
        pytest.skip("tether.rollout.sampling.sample_responses not written yet")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hello"}, {"prompt": "count to three"}])
    out = tmp_path / "tasks.jsonl"
    assert main(["label", "make-tasks", "--policy", "tiny-llama", "--prompts", str(prompts), "--k", "2", "--out", str(out),
                 "--max-new-tokens", "4"]) == 0
    tasks = load_tasks(out)
    assert [t.prompt for t in tasks] == ["hello", "count to three"] and all(t.k == 2 for t in tasks)


def test_a_task_file_keeps_responses_with_unicode_line_separators(tmp_path):
    """make-tasks writes JSON with ensure_ascii=False, so U+2028 and U+0085 stay unescaped in
    the file; str.splitlines would cut such a row in two (a JSON error naming a line that does
    not exist in an editor), so the reader splits at newlines only."""
    odd = ("first\u2028second", "a\u0085b")
    write_tasks([Task("t1", "Say hi\u2029", odd)], tmp_path / "tasks.jsonl")
    assert "\u2028" in (tmp_path / "tasks.jsonl").read_text(encoding="utf-8")
    (loaded,) = load_tasks(tmp_path / "tasks.jsonl")
    assert loaded.prompt == "Say hi\u2029" and tuple(loaded.responses) == odd
    (tmp_path / "prompts.txt").write_text("one\u2028still one\ntwo\n", encoding="utf-8")
    assert load_prompts(tmp_path / "prompts.txt") == ["one\u2028still one", "two"]
