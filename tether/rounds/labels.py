"""Stage 2 of a round: its tasks answered, by a simulated labeler or by people on the page.

People: the command serves the labeling page (or uses ``label_server``, a ``tether label
serve`` already running on the same store), prints the address and each new labeler's token,
and waits with a progress bar of answered/total until every task of the round has
``answers_per_task`` live answers or ``label_deadline_s`` passes. The store is one SQLite file
read per request, so tasks added here show on a running page at once (the page looks for new
tasks while it shows "All done").
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from tether.errors import TetherError
from tether.labeling.export import export_jsonl, export_records
from tether.labeling.store import Store
from tether.labeling.tasks import load_tasks
from tether.reporting.progress import phase_progress
from tether.rounds.config import RoundsConfig
from tether.train.run_dir import write_atomic


@dataclass(frozen=True)
class RoundLabels:
    """How a round's labeling went: ``<run>/round_<r>/labels.json``, written last (the stage's
    complete marker)."""

    round: int
    tasks: int
    answered: int  # tasks with answers_per_task live answers
    preferences: int  # the round's answers that order responses (its pairs and rankings)
    ties: int
    skips: int
    labels_so_far: int  # preferences of rounds 1..r: what the round's reward model trains on
    deadline_passed: bool  # the round went on with what it had at label_deadline_s

    def describe(self) -> str:
        cut = f", deadline passed with {self.answered} of {self.tasks} tasks answered" if self.deadline_passed else ""
        return (f"round {self.round}: {self.preferences} preferences ({self.ties} ties, {self.skips} skips) "
                f"on {self.tasks} tasks{cut}; {self.labels_so_far} preferences so far")

    @classmethod
    def read(cls, path: Path) -> "RoundLabels":
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def simulated_name(spec: str) -> str:
    """The store's labeler id of a simulated labeler, as ``tether demo`` names it."""
    return "sim-" + spec.rpartition(":")[2].replace("_", "-")


def collect_round_labels(config: RoundsConfig, store: Store, round_: int, tasks_file: Path, preferences: Path,
                         marker: Path, labeler: Callable | None) -> RoundLabels:
    """Add the round's tasks to the store, get them answered, export every label of rounds
    1..r to ``preferences`` and write ``marker``. Tasks already in the store (a resumed round)
    are kept with their answers, and only what is missing is asked for."""
    from tether.labeling.simulated import simulate

    store.add_tasks(load_tasks(tasks_file))
    deadline_passed = False
    if labeler is not None:
        summary = simulate(store, labeler, simulated_name(config.labeler), spec=config.labeler)
        if summary.tie_warning():
            print(f"[rlhf] warning: {summary.tie_warning()}", file=sys.stderr, flush=True)
    else:
        deadline_passed = wait_for_answers(config, store, round_)
    _, this_round = export_records((a, t) for a, t in store.live_answers() if t.round == round_)
    so_far = export_jsonl(store, preferences, keep=lambda task: task.round is not None and task.round <= round_,
                          ties=config.rm_ties)
    progress = store.round_progress(round_, config.answers_per_task)
    labels = RoundLabels(round_, progress.total, progress.answered, this_round.pairs + this_round.rankings,
                         this_round.ties, this_round.skips, so_far.pairs + so_far.rankings, deadline_passed)
    if labels.preferences < config.min_round_preferences:
        raise TetherError(
            f"{labels.describe()}: fewer than min_round_preferences={config.min_round_preferences}, too few to "
            "retrain the reward model on. Get more of the round's tasks answered, then continue with "
            f"`tether rlhf --resume {marker.parent.parent}` (the answers given so far are kept)")
    write_atomic(marker, json.dumps(asdict(labels), indent=2) + "\n")
    print(f"[rlhf] {labels.describe()}", flush=True)
    return labels


def wait_for_answers(config: RoundsConfig, store: Store, round_: int) -> bool:
    """Block until every task of the round has ``answers_per_task`` live answers (True) or
    ``label_deadline_s`` passes first (False), showing answered/total."""
    started = time.monotonic()
    shown = 0
    total = store.round_progress(round_, config.answers_per_task).total
    with phase_progress(f"round {round_}: labels", total=total, quiet=True if config.quiet else None) as bar:
        while True:
            answered = store.round_progress(round_, config.answers_per_task).answered
            if answered != shown:  # an undo can take one back
                bar.advance(answered - shown)
                shown = answered
            if answered >= total:
                return False
            waited = time.monotonic() - started
            if config.label_deadline_s is not None and waited >= config.label_deadline_s:
                bar.warn(f"deadline of {config.label_deadline_s:g} s passed with {answered} of {total} tasks "
                         "answered: going on with the answers there are")
                return True
            left = float("inf") if config.label_deadline_s is None else config.label_deadline_s - waited
            time.sleep(min(config.poll_interval_s, max(left, 0.0)))


@contextmanager
def labeling_page(config: RoundsConfig, store: Store) -> Iterator[str | None]:
    """The page people label on while the block runs (its URL), or None with a simulated
    labeler. New labelers of ``labelers`` are created and their tokens printed once."""
    if config.labeler is not None:
        yield None
        return
    try:
        from tether.labeling.server import is_loopback, serving
    except ImportError as exc:
        raise TetherError(f"the labeling page needs the label extra ({exc.name} is missing): "
                          "pip install 'tether[label]'") from None
    if config.label_server is not None:  # before any token is made: one that is never shown is lost
        _check_running(config.label_server.rstrip("/") + "/", store.path)
    tokens = {name: store.add_labeler(name) for name in config.labelers if store.labeler(name) is None}
    if not store.labelers():
        raise TetherError(f"{store.path} has no labelers, and no simulated labeler is set: name the people in "
                          "labelers (e.g. labelers=[alice,bob]; each gets a token) or set labeler=module:function")
    if config.label_server is not None:
        url = config.label_server.rstrip("/") + "/"
        _announce(url, tokens, store)
        yield url
        return
    if not is_loopback(config.host):
        print(f"[rlhf] warning: serving on {config.host}: anyone who can reach port {config.port} can load the page, "
              "and tokens and answers cross the network unencrypted (docs/labeling.md, Security)", file=sys.stderr)
    with serving(store, config.host, config.port) as url:
        _announce(url, tokens, store)
        yield url


def _check_running(url: str, db: Path) -> None:
    import httpx

    try:
        httpx.get(url + "api/health", timeout=5.0).raise_for_status()
    except httpx.HTTPError as exc:
        raise TetherError(f"label_server {url} does not answer ({exc}); start it with `tether label serve --db "
                          f"{db}`, or leave label_server unset to serve the page here") from None


def _announce(url: str, tokens: dict[str, str], store: Store) -> None:
    lines = [f"[rlhf] labeling page: {url} (each round's tasks appear there; this run waits for their answers)"]
    for labeler in store.labelers():
        if labeler.name in tokens:
            lines.append(f"[rlhf]   {labeler.name}: {url}?token={tokens[labeler.name]}  (new token, shown once: "
                         "share it privately)")
        else:
            lines.append(f"[rlhf]   {labeler.name}: has a token already (a lost one: `tether label add-labeler "
                         f"{labeler.name} --db {store.path} --new-token`)")
    print("\n".join(lines), flush=True)
