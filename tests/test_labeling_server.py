"""The labeling server: the JSON API in-process (access rules, bad input), then a real uvicorn
process under concurrent load and under kill -9."""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the labeling server needs fastapi (pip install tether[label])")
from fastapi.testclient import TestClient  # noqa: E402

from tether.cli import main  # noqa: E402
from tether.labeling.export import export_jsonl  # noqa: E402
from tether.labeling.server import create_app  # noqa: E402
from tether.labeling.store import SCHEMA_VERSION, Store  # noqa: E402
from tether.labeling.tasks import Task  # noqa: E402
from tether.labeling.testing import start_server  # noqa: E402

STATIC = Path(__file__).resolve().parents[1] / "tether" / "labeling" / "static"


@pytest.fixture
def api(tmp_path):
    store = Store(tmp_path / "labels.sqlite", create=True)
    store.add_tasks([Task("t1", "Say hi", ("hi", "hello there")), Task("t2", "Count", ("1 2 3", "one", "1"))])
    token = store.add_labeler("ann")
    client = TestClient(create_app(store))
    client.headers["Authorization"] = f"Bearer {token}"
    return client, store


def answer(task_id="t1", choice="a", request_id="r1", **extra):
    return {"task_id": task_id, "choice": choice, "request_id": request_id, **extra}


# -- API, in-process -----------------------------------------------------------------------
def test_tokens_are_required(api):
    client, _ = api
    assert client.get("/api/health").json() == {"ok": True, "schema_version": SCHEMA_VERSION}
    anonymous = TestClient(client.app)
    for method, path in [("GET", "/api/next"), ("GET", "/api/me"), ("POST", "/api/answers"), ("POST", "/api/undo"),
                         ("GET", "/api/openapi.json")]:
        response = anonymous.request(method, path, json=answer())
        assert response.status_code == 401 and response.json()["error"].startswith("missing token")
        assert response.headers["www-authenticate"] == "Bearer"
    response = anonymous.get("/api/next", headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401 and response.json() == {"error": "invalid token"}


def test_answer_flow_retry_and_undo(api):
    client, store = api
    assert client.get("/api/me").json() == {"labeler": "ann", "progress": {"done": 0, "total": 2}}
    assert client.get("/api/next").json()["task"]["id"] == "t1"
    first = client.post("/api/answers", json=answer(reason="shorter"))
    assert first.status_code == 201 and first.json()["progress"] == {"done": 1, "total": 2}
    retry = client.post("/api/answers", json=answer(reason="shorter"))  # a retried request: 200, nothing new
    assert retry.status_code == 200 and retry.json()["created"] is False
    assert client.post("/api/answers", json=answer(request_id="r2")).status_code == 409
    ranked = client.post("/api/answers", json=answer("t2", "rank", "r3", ranking=[2, 0, 1]))
    assert ranked.status_code == 201 and client.get("/api/next").json()["task"] is None
    undo = client.post("/api/undo", json={"answer_id": ranked.json()["answer"]["id"]}).json()
    assert undo["answer"]["undone"] and undo["task"]["id"] == "t2" and undo["progress"]["done"] == 1
    again = client.post("/api/undo", json={"answer_id": ranked.json()["answer"]["id"]}).json()  # a retried undo
    assert again["progress"]["done"] == 1  # ... undid nothing more
    assert [(a.task_id, a.undone_at is None) for a in store.answer_rows()] == [("t1", True), ("t2", False)]


@pytest.mark.parametrize("body, status, message", [
    (answer(task_id="nope"), 404, "no task with id 'nope'"),
    ('{"task_id": "t1", "choice": ', 422, "malformed JSON"),
    (answer(choice="better"), 422, "choice: Input should be 'a', 'b', 'tie', 'skip' or 'rank'"),
    ({"task_id": "t1", "choice": "a"}, 422, "request_id: Field required"),
    (answer(extra="x"), 422, "extra: Extra inputs are not permitted"),
    (answer("t2", "a"), 422, "choice 'a' needs a task with 2 responses"),
    (answer("t2", "rank", ranking=[0, 0, 1]), 422, "is not an ordering of the 3 response indices"),
    (answer("t2", "rank", ranking=["0", 1, 2]), 422, "ranking.0: Input should be a valid integer"),
    (answer(reason="x" * 2001), 422, "reason: String should have at most 2000 characters"),
    ("[]", 422, "Input should be a valid dictionary"),
])
def test_bad_input_is_refused_with_a_message_and_writes_nothing(api, body, status, message):
    client, store = api
    content = body if isinstance(body, str) else json.dumps(body)
    response = client.post("/api/answers", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert store.answer_rows() == []


def test_cross_origin_writes_are_refused(api):
    client, store = api
    for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/page"}, {"Origin": "null"}):
        response = client.post("/api/answers", json=answer(), headers=headers)
        assert response.status_code == 403 and "cross-origin" in response.json()["error"]
    assert store.answer_rows() == []
    assert client.post("/api/answers", json=answer(), headers={"Origin": "http://testserver"}).status_code == 201
    assert client.post("/api/undo", headers={"Referer": "http://testserver/"}).status_code == 200
    assert client.get("/api/next", headers={"Origin": "http://evil.example"}).status_code == 200  # reads: token only


def test_oversized_body_is_refused_before_parsing(api):
    client, _ = api
    response = client.post("/api/answers", content=b"x" * 100_000, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    # chunked: no Content-Length to check up front, so the bytes are counted as they arrive
    chunks = iter([b"x" * 50_000] * 2)
    response = client.post("/api/answers", content=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json() == {"error": "request body over 65536 bytes"}


def test_reused_request_id_with_a_different_answer_is_a_conflict(api):
    client, store = api
    assert client.post("/api/answers", json=answer(reason=" why ")).status_code == 201
    assert client.post("/api/answers", json=answer(reason="why")).status_code == 200  # the same answer: a retry
    ranked_same = answer(choice="rank", ranking=[0, 1], reason="why")  # stored as "a": still the same answer
    assert client.post("/api/answers", json=ranked_same).status_code == 200
    for changed in (answer(choice="b", reason="why"), answer(reason="other"), answer(choice="tie")):
        response = client.post("/api/answers", json=changed)
        assert response.status_code == 409, response.text
        assert "request_id 'r1' already answered task 't1' with a different answer" in response.json()["error"]
    assert [(a.choice, a.reason) for a in store.answer_rows()] == [("a", "why")]


@pytest.mark.parametrize("answer_id", [2**63, -1, 0, 10**30])
def test_undo_of_an_impossible_answer_id_is_a_client_error(api, answer_id):
    client, _ = api
    response = client.post("/api/undo", json={"answer_id": answer_id})
    assert response.status_code == 422 and response.json()["error"].startswith("answer_id: Input should be")
    assert client.post("/api/undo", json={"answer_id": 2**63 - 1}).status_code == 404  # in range, not there


@pytest.mark.parametrize("ranking, message", [
    ([0] * 12_000, "is not an ordering of the 3 response indices"),  # the store's error would quote the list
    (["0"] * 6_000, "ranking.0: Input should be a valid integer"),  # one error per element
])
def test_a_large_invalid_body_is_not_echoed_back(api, ranking, message):
    client, store = api
    body = json.dumps(answer("t2", "rank", ranking=ranking))
    assert 30_000 < len(body) < 65_536
    response = client.post("/api/answers", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and message in response.json()["error"]
    assert len(response.content) < 1_000
    assert store.answer_rows() == []


def test_page_and_openapi_need_no_network(api):
    client, _ = api
    page = client.get("/")
    assert page.status_code == 200 and "static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("index.html", "app.js", "style.css"):
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", (STATIC / name).read_text()), f"{name} names an external URL"
        assert client.get(f"/static/{name}").status_code == 200
    spec = client.get("/api/openapi.json").json()
    assert {"/api/next", "/api/answers", "/api/undo", "/api/me", "/api/health"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN


def test_serve_warns_off_loopback(tmp_path, monkeypatch, capsys):
    import tether.labeling.server as server

    served = []
    monkeypatch.setattr(server, "serve", lambda store, host, port: served.append((host, port)))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n")
    db = str(tmp_path / "l.sqlite")
    assert main(["label", "serve", "--db", db, "--tasks", str(tasks)]) == 0
    assert "warning: serving on" not in capsys.readouterr().err
    assert main(["label", "serve", "--db", db, "--host", "0.0.0.0", "--port", "9000"]) == 0
    assert "warning: serving on 0.0.0.0" in capsys.readouterr().err
    assert served == [("127.0.0.1", 8765), ("0.0.0.0", 9000)]
    assert main(["label", "serve", "--db", str(tmp_path / "empty.sqlite")]) == 2
    assert "holds no tasks" in capsys.readouterr().err


# -- a real server process -----------------------------------------------------------------
def seed(tmp_path, n_tasks, n_labelers):
    store = Store(tmp_path / "labels.sqlite", create=True)
    store.add_tasks([Task(f"t{i}", f"prompt {i}", (f"first {i}", f"second {i}")) for i in range(n_tasks)])
    tokens = [store.add_labeler(f"labeler{j}") for j in range(n_labelers)]
    return store, tokens


def post(conn: http.client.HTTPConnection, token: str, body: dict) -> tuple[int, dict]:
    # http.client rather than httpx: the client threads share 2 cores with the server under
    # test, and http.client costs a tenth of the CPU per request
    conn.request("POST", "/api/answers", body=json.dumps(body),
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def connect(url: str) -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=60)


def run_burst(tmp_path, n_clients: int, per_client: int) -> None:
    """n_clients labelers answer per_client tasks each, all at once, every 10th request sent
    twice (a client retry), while another thread exports over and over (a reader in WAL)."""
    store, tokens = seed(tmp_path, per_client, n_clients)
    server = start_server(store.path, tmp_path / "server.log")
    statuses: list[tuple[int, int]] = []  # (first send, retry or 0)
    failures: list[str] = []
    done = threading.Event()

    def client(token: str) -> None:
        conn = connect(server.url)
        try:
            for i in range(per_client):
                body = {"task_id": f"t{i}", "choice": "ab"[i % 2], "request_id": f"{token[:8]}-{i}", "reason": f"r{i}"}
                first, _ = post(conn, token, body)
                again = post(conn, token, body)[0] if i % 10 == 0 else 0
                statuses.append((first, again))
        except Exception as exc:  # noqa: BLE001 - reported below with the rest
            failures.append(repr(exc))
        finally:
            conn.close()

    def reader() -> None:
        while not done.is_set():
            try:
                export_jsonl(Store(store.path), tmp_path / "during.jsonl")
            except Exception as exc:  # noqa: BLE001
                failures.append(f"export during burst: {exc!r}")
            time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(token,)) for token in tokens]
    watcher = threading.Thread(target=reader)
    start = time.monotonic()
    try:
        watcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        done.set()
        watcher.join()
        server.stop()
    elapsed = time.monotonic() - start
    total = n_clients * per_client
    print(f"{total} answers from {n_clients} clients in {elapsed:.1f} s ({total / elapsed:.0f}/s)")
    assert failures == []
    assert "database is locked" not in server.log() and "Traceback" not in server.log()
    assert len(statuses) == total
    assert {first for first, _ in statuses} == {201}  # every answer stored
    assert {again for _, again in statuses} == {0, 200}  # every retry recognised
    rows = store.answer_rows()
    assert len(rows) == total  # 0 lost, 0 duplicated
    assert len({(a.labeler, a.task_id) for a in rows}) == total
    assert {a.request_id for a in rows} == {f"{tok[:8]}-{i}" for tok in tokens for i in range(per_client)}


def test_concurrent_clients_small_burst(tmp_path):
    run_burst(tmp_path, n_clients=8, per_client=60)


@pytest.mark.slow
def test_concurrent_clients_8x500(tmp_path):
    run_burst(tmp_path, n_clients=8, per_client=500)


def test_kill_9_during_a_burst_keeps_every_acknowledged_answer(tmp_path):
    store, tokens = seed(tmp_path, 400, 4)
    server = start_server(store.path, tmp_path / "server.log")
    acked: list[str] = []  # request ids that got a 2xx
    stop = threading.Event()

    def client(token: str) -> None:
        conn = connect(server.url)
        for i in range(400):
            if stop.is_set():
                return
            request_id = f"{token[:8]}-{i}"
            try:
                status, _ = post(conn, token, {"task_id": f"t{i}", "choice": "a", "request_id": request_id})
            except (OSError, http.client.HTTPException):
                return  # the server died mid-request: this answer was never acknowledged
            if 200 <= status < 300:
                acked.append(request_id)

    threads = [threading.Thread(target=client, args=(token,)) for token in tokens]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 120 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()  # SIGKILL while the clients are still sending
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 120

    restarted = start_server(store.path, tmp_path / "server2.log")
    try:
        stored = {a.request_id for a in Store(store.path).answer_rows()}
        assert set(acked) <= stored, f"lost {len(set(acked) - stored)} acknowledged answers"
        assert len(stored) <= len(acked) + len(tokens)  # at most the one in flight per client on top
        conn = connect(restarted.url)
        status, body = post(conn, tokens[0], {"task_id": "t399", "choice": "b", "request_id": "after-restart"})
        assert status == 201
    finally:
        restarted.stop()
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for choice, ranking in db.execute("SELECT choice, ranking FROM answers"):  # no half-written row
        assert (ranking is None) == (choice in ("tie", "skip"))
        assert ranking is None or sorted(json.loads(ranking)) == [0, 1]


def stream_chunked(url: str, path: str, headers: dict[str, str], total: int) -> tuple[int | None, int]:
    """POST ``total`` bytes to ``path`` as a chunked body (no Content-Length), stopping early
    when the server answers or closes; return (the response status or None, bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    chunk = b"x" * (256 * 1024)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", "Transfer-Encoding": "chunked",
                                                 "Content-Type": "application/json", **headers}.items())
    sent, response = 0, b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode())
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(framed)
                sent += len(chunk)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection at the limit; its answer is in the socket
        try:
            while b"\r\n" not in response and (data := sock.recv(65536)):
                response += data
        except OSError:
            pass
    status = int(response.split()[1]) if response.startswith(b"HTTP/1.1 ") else None
    return status, sent


def peak_rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak RSS from /proc")
def test_a_64_mib_chunked_body_is_refused_in_bounded_memory(tmp_path):
    store, (token,) = seed(tmp_path, 2, 1)
    server = start_server(store.path, tmp_path / "server.log")
    try:
        conn = connect(server.url)
        assert post(conn, token, {"task_id": "t0", "choice": "a", "request_id": "warm-up"})[0] == 201
        conn.close()
        before = peak_rss_bytes(server.process.pid)
        for headers, refused_with in (({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                                      ({"Authorization": f"Bearer {token}"}, 413)):
            status, sent = stream_chunked(server.url, "/api/answers", headers, 64 * 2**20)
            assert status == refused_with, (headers, status, sent)
        grown = peak_rss_bytes(server.process.pid) - before
        assert grown < 32 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB"
        conn = connect(server.url)
        assert post(conn, token, {"task_id": "t1", "choice": "b", "request_id": "after"})[0] == 201  # still serving
        conn.close()
    finally:
        server.stop()
    assert "Traceback" not in server.log()
    assert [a.request_id for a in store.answer_rows()] == ["warm-up", "after"]
