"""Reward sources: what a reward function may return (and the one-line errors when it returns
something else), several sources summed with weights and each logged as reward/<name>, and a
reward server over HTTP, started here in a thread."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from tether.cli import main
from tether.errors import ConfigError, TetherError
from tether.rollout import remote_reward
from tether.rollout.remote_reward import RemoteReward
from tether.rollout.rewards import FunctionReward, checked_scores, reward_specs
from tether.train.ppo_config import PPOConfig
from tether.types import Rollout

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["--config", "configs/ppo-tiny.yaml", "quiet=true", "device=cpu", "batch_size=4", "mini_batch_size=4",
        "micro_batch_size=4", "ppo_epochs=1", "max_new_tokens=8"]


def fake_rollout(responses: list[str]) -> Rollout:
    """Only what a reward function or server reads: prompts, responses, the device."""
    n = len(responses)
    return Rollout(prompts=[f"prompt {i}" for i in range(n)], prompt_ids=torch.zeros(n, 1, dtype=torch.long),
                   prompt_mask=torch.ones(n, 1, dtype=torch.bool), response_ids=torch.zeros(n, 1, dtype=torch.long),
                   response_mask=torch.ones(n, 1, dtype=torch.bool), responses=responses,
                   ended_with_eos=torch.ones(n, dtype=torch.bool))


# ---- what a reward function returns ----------------------------------------------------------

@pytest.mark.parametrize("values, expected", [
    ([True, False], "returned a boolean (True) for response 0"),
    ([0.5, np.bool_(True)], "returned a boolean (True) for response 1"),
    (["0.5", "1"], "returned str '0.5' for response 0"),
    ([1.0, 10**400], "returned an int of 401 digits for response 1: beyond the range of a float32"),
    ([float("inf"), 1.0], "returned inf for response 0: beyond the range of a float32"),
    ([1.0, 1e39], "returned 1e+39 for response 1: beyond the range"),
    ([None, 1.0], "returned NoneType None for response 0"),
    ("0.5", "must return a list of numbers, one per response; got str"),
    (None, "must return a list of numbers, one per response; got NoneType"),
    ([1.0], "returned 1 scores for 2 responses"),
])
def test_bad_scores_are_one_line_naming_the_function(values, expected):
    with pytest.raises(TetherError) as info:
        checked_scores(values, 2, "reward function m:f")
    message = str(info.value)
    assert message.startswith("reward function m:f ") and expected in message and "\n" not in message


def test_numbers_in_any_numeric_type_are_scores_and_nan_goes_to_the_guard():
    values = [1, 2.5, np.float32(0.25), np.int64(3), torch.tensor(-1.5), float("nan")]
    scores = checked_scores(values, 6, "reward function m:f")
    assert scores[:5] == [1.0, 2.5, 0.25, 3.0, -1.5] and np.isnan(scores[5])  # NaN: skipped by the loop's guard
    assert checked_scores(np.array([0.5, 1.5]), 2, "f") == [0.5, 1.5]
    assert checked_scores(torch.tensor([0.5, 1.5]), 2, "f") == [0.5, 1.5]


def exits_quietly(prompts, responses):
    raise SystemExit(0)


def test_sys_exit_in_a_reward_function_is_an_error_not_a_clean_exit():
    with pytest.raises(TetherError, match=r"reward function .*exits_quietly called sys.exit\(0\)"):
        FunctionReward(exits_quietly)(fake_rollout(["a", "b"]))


def says_yes(prompts, responses):
    return [True] * len(responses)


def exits_zero(prompts, responses):
    import sys

    sys.exit(0)


@pytest.mark.parametrize("fn, expected", [
    ("says_yes", "reward function tests.test_reward_sources:says_yes returned a boolean (True) for response 0"),
    ("exits_zero", "reward function tests.test_reward_sources:exits_zero called sys.exit(0)"),
])
def test_cli_exits_2_with_no_policy_when_the_reward_function_misbehaves(capsys, tmp_path, fn, expected):
    code = main(["ppo", *BASE, f"output_dir={tmp_path}", "run_name=bad",
                 f"reward_function=tests.test_reward_sources:{fn}"])
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last_line.startswith(f"error: {expected}")
    assert not (tmp_path / "bad" / "policy").exists()


# ---- the sources of a run --------------------------------------------------------------------

def test_sources_come_from_every_reward_field_in_order_with_names_and_weights():
    config = PPOConfig(reward_model="tiny-llama", reward_function="tether.rollout.rules:vowel_fraction",
                       rewards=["http://127.0.0.1:8000/score", "tether.rollout.rules:vowel_fraction",
                                "runs/x/reward_model"],
                       reward_weights=[1, 0.5, 2, -1, 0.25])
    specs = reward_specs(config.reward_settings)
    assert [(s.name, s.kind, s.weight) for s in specs] == [
        ("tiny-llama", "model", 1.0), ("vowel_fraction", "function", 0.5), ("127.0.0.1_8000_score", "http", 2.0),
        ("vowel_fraction_2", "function", -1.0), ("reward_model", "model", 0.25)]


def test_python_rewards_are_named_by_function_or_by_dict_key():
    def brevity(prompts, responses):
        return [0.0] * len(responses)

    assert [s.name for s in reward_specs(PPOConfig().reward_settings, [brevity, lambda p, r: r])] == ["brevity", "lambda"]
    named = reward_specs(PPOConfig(reward_weights=[1, 2]).reward_settings, {"short": brevity, "server": "http://h:1/x"})
    assert [(s.name, s.kind, s.weight) for s in named] == [("short", "function", 1.0), ("server", "http", 2.0)]


@pytest.mark.parametrize("config, python, expected", [
    (PPOConfig(), None, "no reward: set reward_model"),
    (PPOConfig(reward_function="tether.rollout.rules:vowel_fraction"), print, "the reward is given twice"),
    (PPOConfig(reward_weights=[1.0]), [print, print], 'field "reward_weights" has 1 weight(s) for 2 reward source(s)'),
    (PPOConfig(), [42], "reward= takes callables"),
])
def test_reward_source_mistakes(config, python, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        reward_specs(config.reward_settings, python)


def test_weights_must_match_the_config_sources(capsys, tmp_path):
    code = main(["ppo", *BASE, f"output_dir={tmp_path}", "rewards=[tether.rollout.rules:length_reward]",
                 "reward_weights=[1.0]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and 'field "reward_weights" has 1 weight(s) for 2 reward source(s)' in err


# ---- a reward server ---------------------------------------------------------------------------

class RewardServer:
    """A reward server on a free port: scores each response by its length / 10, replying as
    ``reply`` says: "rewards" ({"rewards": [...]}), "list", or a list of HTTP statuses to answer
    first (then "rewards"); ``delay`` seconds before each answer."""

    def __init__(self, reply="rewards", delay=0.0):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                if delay:
                    threading.Event().wait(delay)
                if isinstance(outer.reply, list) and outer.reply:
                    self.send_response(outer.reply.pop(0))
                    self.end_headers()
                    self.wfile.write(b"busy")
                    return
                scores = [len(r) / 10 for r in body["responses"]]
                payload = scores if outer.reply == "list" else {"rewards": scores}
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.reply = reply
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/score"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(remote_reward, "FIRST_BACKOFF_S", 0.0)


@pytest.mark.parametrize("reply", ["rewards", "list"])
def test_reward_server_scores_in_both_reply_shapes(reply):
    with RewardServer(reply) as server:
        scores = RemoteReward(server.url)(fake_rollout(["abc", "", "abcdefghij"]))
    assert scores.tolist() == pytest.approx([0.3, 0.0, 1.0])
    assert server.requests == [{"prompts": ["prompt 0", "prompt 1", "prompt 2"], "responses": ["abc", "", "abcdefghij"]}]


def test_reward_server_overloaded_is_retried(no_backoff):
    with RewardServer([503, 429]) as server:
        scores = RemoteReward(server.url, retries=2)(fake_rollout(["ab"]))
    assert scores.tolist() == pytest.approx([0.2]) and len(server.requests) == 3


def test_reward_server_client_error_is_not_retried(no_backoff):
    with RewardServer([400]) as server:
        with pytest.raises(TetherError, match=r"reward server http://127.0.0.1:\d+/score answered HTTP 400 .*: busy"):
            RemoteReward(server.url, retries=3)(fake_rollout(["ab"]))
    assert len(server.requests) == 1


def test_reward_server_down_or_slow_is_one_line_after_the_retries(no_backoff):
    with RewardServer() as server:
        url = server.url
    with pytest.raises(TetherError, match="failed 2 time.* is it running"):
        RemoteReward(url, retries=1)(fake_rollout(["ab"]))
    with RewardServer(delay=1.0) as server:
        with pytest.raises(TetherError, match="failed 1 time.*no answer within reward_timeout"):
            RemoteReward(server.url, timeout=0.2, retries=0)(fake_rollout(["ab"]))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ppo_sums_a_server_a_function_and_a_model_and_logs_each(tmp_path):
    """Two iterations against a reward server (started here), a function and a reward model
    (the tiny model with a fresh head): each source's mean is a reward/<name> row, and the
    score the policy is trained on is their weighted sum."""
    with RewardServer() as server:
        code = main(["ppo", *BASE, f"output_dir={tmp_path}", "run_name=mixed", "total_iterations=2",
                     "missing_eos_penalty=null", "reward_function=null",
                     f"rewards=[{server.url}, tether.rollout.rules:vowel_fraction, tiny-llama]",
                     "reward_weights=[1.0, 0.5, 0.25]"])
        served = len(server.requests)
    assert code == 0 and served == 2
    port = server.server.server_port
    rows = read_jsonl(tmp_path / "mixed" / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [1, 2]
    for row in rows:
        parts = row[f"reward/127.0.0.1_{port}_score"], row["reward/vowel_fraction"], row["reward/tiny-llama"]
        assert row["objective/score_mean"] == pytest.approx(parts[0] + 0.5 * parts[1] + 0.25 * parts[2], abs=1e-5)
        assert parts[0] > 0  # the server's length / 10
    samples = read_jsonl(tmp_path / "mixed" / "samples.jsonl")
    first = samples[0]
    assert first["rewards"][f"127.0.0.1_{port}_score"] == pytest.approx(len(first["response"]) / 10)
    weighted = sum(w * v for w, v in zip([1.0, 0.5, 0.25], first["rewards"].values()))
    assert first["score"] == pytest.approx(weighted, abs=1e-5)
    assert (tmp_path / "mixed" / "policy" / "config.json").exists()
