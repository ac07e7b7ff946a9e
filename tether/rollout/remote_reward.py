"""A reward served over HTTP (OpenRLHF's remote reward model, ``--remote_rm_url``): a reward
model too large for the training machine, a judge behind an API, a sandbox that runs code.

Wire format (docs/rewards.md): one JSON POST per scoring call,
``{"prompts": [str, ...], "responses": [str, ...]}``, answered with ``{"rewards": [float, ...]}``
(OpenRLHF's reply key) or a bare list, one number per response, in order. Prompts are text
(the last user message for chats), as a reward function gets them.

Failures a retry can mend (connection refused or reset, a timeout, HTTP 5xx, 429) are retried
with exponential back-off; anything else (HTTP 4xx, a reply that is not JSON or not one number
per response) is a one-line error naming the URL at once. Only the standard library is used,
so a reward server needs no extra install on the training side.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import torch

from tether.data.templates import prompt_text
from tether.errors import TetherError
from tether.rollout.reward_values import checked_scores
from tether.types import Rollout

RETRY_STATUS = {429, 500, 502, 503, 504}  # overloaded or restarting: worth another try
FIRST_BACKOFF_S = 0.5  # then 1, 2, 4 ... seconds between tries


class RemoteReward:
    """Scores from a reward server at ``url``: ``timeout`` seconds per request, ``retries``
    further tries after a failure that may pass."""

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 2):
        self.url = url
        self.timeout = timeout
        self.retries = retries

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        payload = {"prompts": [prompt_text(p) for p in rollout.prompts], "responses": list(rollout.responses)}
        reply = self._post(json.dumps(payload).encode("utf-8"))
        if isinstance(reply, dict):
            if "rewards" not in reply:
                raise TetherError(f"reward server {self.url} replied with keys {sorted(reply)[:5]}; expected "
                                  '{"rewards": [...]} or a JSON list')
            reply = reply["rewards"]
        scores = checked_scores(reply, len(rollout), f"reward server {self.url}")
        return torch.tensor(scores, dtype=torch.float32, device=rollout.response_ids.device)

    def _post(self, body: bytes):
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    text = response.read()
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:200].decode("utf-8", "replace").strip()
                why = f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
                if exc.code not in RETRY_STATUS:
                    raise TetherError(f"reward server {self.url} answered {why}") from None
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as exc:
                reason = getattr(exc, "reason", exc)
                timed_out = isinstance(reason, (socket.timeout, TimeoutError))
                why = "no answer within reward_timeout" if timed_out else str(reason)
            if attempt == self.retries:
                raise TetherError(f"reward server {self.url} failed {self.retries + 1} time(s), last: {why}; "
                                  "is it running? (reward_timeout, reward_retries)")
            time.sleep(FIRST_BACKOFF_S * 2**attempt)
        try:
            return json.loads(text)
        except ValueError:
            start = text[:80].decode("utf-8", "replace")
            raise TetherError(f"reward server {self.url} replied with something that is not JSON: {start!r}") from None
