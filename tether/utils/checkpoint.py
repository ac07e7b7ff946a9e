"""Full-state checkpoints, written so that a crash at any instant leaves a loadable one.

Layout inside a run directory::

    checkpoints/iter-000003/state.pt    modules, optimizer, scheduler, KL controller, data
                                        position, RNG states, counters, metrics so far
    checkpoints/iter-000003/meta.json   written last inside the folder: its presence = complete
    checkpoints/latest                  name of the newest complete checkpoint (updated last)

A checkpoint is written into ``checkpoints/.tmp-iter-000003``, every file fsync'ed, then the
folder is renamed into place (an atomic rename on POSIX) and the parent folder fsync'ed; only
then is ``latest`` replaced and the oldest checkpoints beyond ``keep`` removed. A process killed
anywhere in between leaves either the old set or the new one, never a torn checkpoint that
``latest`` points at. ``find_latest`` also ignores ``latest`` when it is stale or damaged and
falls back to the newest folder that has its ``meta.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tether.errors import TetherError
from tether.utils.seeding import rng_state, set_rng_state

CHECKPOINTS = "checkpoints"
PAUSE_ENV = "TETHER_TEST_CHECKPOINT_PAUSE"  # tests only: "ITERATION:SECONDS" sleeps mid-write


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _test_pause(iteration: int) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if spec:
        at, seconds = spec.split(":")
        if int(at) == iteration:
            time.sleep(float(seconds))


def assert_finite(modules: dict[str, torch.nn.Module | None]) -> None:
    """Guard: never write NaN/inf weights (a checkpoint is what a crash falls back to)."""
    for name, module in modules.items():
        if module is None:
            continue
        for pname, p in module.named_parameters():
            if not torch.isfinite(p).all():
                raise TetherError(f"{name} parameter {pname} is not finite; not saving it "
                                  "(resume from the previous checkpoint with a lower learning_rate)")


def write_checkpoint(run_path: Path, iteration: int, state: dict, keep: int) -> Path:
    """Write ``state`` (a dict torch.save can store) as checkpoint ``iteration``; returns its folder."""
    root = Path(run_path) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"iter-{iteration:06d}"
    tmp, final = root / f".tmp-{name}", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(state, tmp / "state.pt")  # then fsync: torch.save does not
    with open(tmp / "state.pt", "rb+") as f:
        os.fsync(f.fileno())
    _test_pause(iteration)
    _write_file(tmp / "meta.json", json.dumps({"iteration": iteration, "time": time.time()}).encode())
    _fsync_dir(tmp)
    if final.exists():  # re-checkpointing the same iteration (e.g. resume of a finished run)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    _write_file(root / ".latest.tmp", name.encode())
    os.replace(root / ".latest.tmp", root / "latest")
    _fsync_dir(root)
    for old in complete_checkpoints(run_path)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(run_path: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (temporary and torn ones are skipped)."""
    root = Path(run_path) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("iter-*") if (p / "meta.json").is_file() and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: p.name)


def find_latest(run_path: Path) -> Path | None:
    """The newest complete checkpoint: the one ``latest`` names when it is complete, else the
    newest complete folder (a crash between the rename and the pointer update)."""
    root = Path(run_path) / CHECKPOINTS
    complete = complete_checkpoints(run_path)
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named in complete and named == complete[-1]:
            return named
    return complete[-1] if complete else None


def read_checkpoint(path: Path) -> dict:
    try:
        # Our own file (holds Python/NumPy RNG states, which weights_only refuses).
        return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one user-facing message
        raise TetherError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); "
                          f"delete that folder to resume from the one before") from None


@dataclass
class Checkpointer:
    """What a training loop must save to continue bit for bit, gathered once:

    modules     name -> nn.Module (None allowed): weights
    stateful    name -> object with state_dict/load_state_dict (optimizer, scheduler, KL
                controller, prompt stream)
    generators  name -> torch.Generator (e.g. the minibatch shuffle)
    plus, at save time, the global RNG states (Python, NumPy, torch CPU/CUDA; generation
    samples from torch's global RNG), the loop's counters and its metrics history.
    """

    run_path: Path
    every: int  # iterations between checkpoints; 0 = only on interrupt
    keep: int  # newest checkpoints kept
    last: int  # the run's final iteration (checkpointed when every > 0)
    modules: dict = field(default_factory=dict)
    stateful: dict = field(default_factory=dict)
    generators: dict = field(default_factory=dict)
    last_saved: int | None = None

    def end_of_iteration(self, iteration: int, counters: dict, history: list, stop_requested) -> bool:
        """Checkpoint when due (every N, the last iteration, or a stop was requested); returns
        whether the loop should stop now."""
        # With every = 0 only an interrupt checkpoints: the final policy is saved anyway, and a full
        # state of SmolLM2 with a separate critic is ~3 GB of disk nobody asked for.
        if stop_requested or (self.every > 0 and (iteration == self.last or iteration % self.every == 0)):
            self.save(iteration, counters, history)
        return bool(stop_requested)

    def save(self, iteration: int, counters: dict, history: list) -> Path:
        assert_finite(self.modules)
        state = {
            "iteration": iteration,
            "modules": {k: m.state_dict() for k, m in self.modules.items() if m is not None},
            "stateful": {k: o.state_dict() for k, o in self.stateful.items()},
            "generators": {k: g.get_state() for k, g in self.generators.items()},
            "rng": rng_state(),
            "counters": dict(counters),
            "history": list(history),
        }
        path = write_checkpoint(self.run_path, iteration, state, self.keep)
        self.last_saved = iteration
        return path

    def restore(self, state: dict) -> tuple[int, dict]:
        """Load every part of a ``read_checkpoint`` state in place; returns (iteration, counters).
        Call after every module, optimizer and stream is built (building draws random numbers;
        the RNG states are restored last)."""
        for k, m in self.modules.items():
            if m is not None:
                m.load_state_dict(state["modules"][k])
        for k, o in self.stateful.items():
            o.load_state_dict(state["stateful"][k])
        for k, g in self.generators.items():
            g.set_state(state["generators"][k])
        set_rng_state(state["rng"])
        self.last_saved = state["iteration"]
        return state["iteration"], dict(state["counters"])
