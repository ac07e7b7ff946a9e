"""A run directory: resolved config, metrics, samples, progress display and the final models.

Layout::

    runs/<name>/config.yaml      the resolved config (every field, defaults included)
    runs/<name>/metrics.jsonl    one JSON object per iteration
    runs/<name>/samples.jsonl    sample generations per iteration
    runs/<name>/policy/          final policy (save_pretrained; AutoModelForCausalLM loads it)
    runs/<name>/critic/          final critic (AutoModelForSequenceClassification), if any
    runs/<name>/checkpoints/     full-state checkpoints for resume (tether.utils.checkpoint)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass
from typing import NoReturn, Protocol

import torch
import yaml

from tether.errors import RunStopped, TetherError
from tether.reporting.sinks import NullLogger, RunLogger, _jsonable
from tether.utils.checkpoint import assert_finite, find_latest, read_checkpoint


@torch.no_grad()
def weights_finite(params) -> bool:
    """Whether every parameter is finite: one fused max-abs per tensor (NaN/inf exactly when
    a weight is; a sum of squares could overflow) and one host sync. FSDP2 shards are checked
    locally; the caller agrees across ranks."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in params]
    local = [t.detach() for t in local if t.numel()]  # an FSDP2 rank can hold an empty shard (no max over nothing)
    if not local:
        return True
    return bool(torch.isfinite(torch.stack([n.float() for n in torch._foreach_norm(local, float("inf"))])).all())


def nonfinite_weights_error(modules: dict[str, torch.nn.Module | None], step: int | None = None,
                            fix: str = "lower learning_rate") -> TetherError:
    """The one-line error for weights an optimizer step made NaN/inf, naming the first one."""
    found = next((f"{role} weight {name}" for role, module in modules.items() if module is not None
                  for name, p in module.named_parameters() if not torch.isfinite(p.detach()).all()), "a weight")
    at = f"step {step}: " if step is not None else ""
    return TetherError(f"{at}the optimizer step made {found} non-finite (NaN/inf) from finite gradients; "
                       f"stopped without saving it: {fix}")


def _truncate_jsonl(path: Path, last_iteration: int) -> None:
    """Keep the rows of iterations <= last_iteration (and drop a torn last line)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("iteration", 0) <= last_iteration:
                keep.append(line + "\n")
        except ValueError:
            continue
    write_atomic(path, "".join(keep))


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_pretrained_atomic(model, path: Path, tokenizer=None, state_dict: dict | None = None) -> None:
    """save_pretrained into a temporary folder, then rename: a crash never leaves half a model.
    ``state_dict``: the full weights to write instead of the model's own (FSDP2-sharded models)."""
    if state_dict is None:
        assert_finite({path.name: model})  # never write NaN/inf weights
    elif not all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point()):
        raise TetherError(f"{path.name} has non-finite weights; not saving it")
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    from tether.models.loading import quiet_transformers

    with quiet_transformers():
        model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunSettings:
    """The run-directory section of every training config (its ``run_settings``): where the run
    lives, and what happens to a run already there."""

    output_dir: str
    run_name: str | None  # None: <prefix>-<timestamp>
    prefix: str  # the command's run-name prefix: sft, rm, dpo, ppo, grpo, ...
    resume: str | None = None  # "auto": continue <output_dir>/<run_name>; or a run directory
    overwrite: bool = False  # replace a run of the same name (the commands without the field never do)


class RunConfig(Protocol):
    """A config a run directory writes: a dataclass with the metric-sink fields and its run section."""

    metric_sinks: list[str] | None

    @property
    def run_settings(self) -> RunSettings: ...


def run_path(run: RunSettings) -> Path:
    """``<output_dir>/<run_name>``, or the run being resumed when ``resume`` names a folder."""
    if run.resume not in (None, "auto"):
        return Path(run.resume)
    name = run.run_name or f"{run.prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(run.output_dir) / name


def resume_checkpoint(config: RunConfig) -> dict | None:
    """The state to continue from: ``resume: auto`` takes the run's newest complete checkpoint
    when there is one (else starts afresh), ``resume: RUN_DIR`` requires one."""
    run = config.run_settings
    if run.resume is None:
        return None
    path = run_path(run)
    latest = find_latest(path)
    if latest is None:
        if run.resume == "auto":
            return None
        raise TetherError(f"{path} has no complete checkpoint to resume from; start it again without resume "
                          "(set checkpoint_every to checkpoint during a run)")
    print(f"resuming from {latest}", file=sys.stderr)
    return read_checkpoint(latest)


# the folders a run writes when it finishes (policy: sft, ppo, dpo; reward_model: train-rm)
FINAL_MODELS = ("policy", "reward_model")


class _NoProgress:
    def advance(self, *args, **kwargs) -> None:
        pass

    warn = log = show = advance


class RunDirectory:
    def __init__(self, path: Path, logger: RunLogger, quiet: bool):
        self.path = path
        self.logger = logger
        self.quiet = quiet
        self.silent = False  # no progress display at all (ranks other than 0)
        self.history: list[tuple[int, dict]] = []  # (iteration, metrics) so far: saved in checkpoints
        from tether.diagnostics import LiveDoctor

        # The run doctor, live: new findings show as warnings on the progress bar (tether doctor
        # RUN_DIR gives the full diagnosis with evidence, cause and fix).
        self.doctor = LiveDoctor()

    @classmethod
    def create(cls, config: RunConfig, quiet: bool = False, resume_history: list | None = None,
               write: bool = True) -> "RunDirectory":
        """A new run directory; with ``resume_history`` (from a checkpoint) the existing one,
        its metrics.jsonl rewritten from that history and samples.jsonl cut at the same
        iteration, so that no iteration is logged twice. ``write=False`` (ranks other than 0
        under torchrun): the same object, keeping the history, but no file is touched."""
        settings = config.run_settings
        path = run_path(settings)
        if not write:
            run = cls(path, NullLogger(), quiet=True)
            run.silent = True
            run.history = [(it, dict(m)) for it, m in (resume_history or [])]
            return run
        if resume_history is not None:
            last = resume_history[-1][0] if resume_history else 0
            _truncate_jsonl(path / "samples.jsonl", last)
            write_atomic(path / "metrics.jsonl", "".join(
                json.dumps({k: _jsonable(v) for k, v in {"iteration": it, **m}.items()}, ensure_ascii=False) + "\n" for it, m in resume_history))
        elif (path / "metrics.jsonl").exists():
            if not settings.overwrite and settings.resume == "auto":
                finished = next((name for name in FINAL_MODELS if (path / name).exists()), None)
                if finished is not None:  # finished with checkpoint_every=0: a restart would replace its model
                    raise TetherError(f"run directory {path} holds a finished run ({finished}/) and no checkpoint "
                                      "to continue from; pass overwrite=true to train it again")
                # stopped (a crash, kill -9) before its first checkpoint: nothing to lose by restarting
                print(f"note: {path} holds a run that stopped before its first checkpoint; "
                      "starting it again from the beginning", file=sys.stderr)
            elif not settings.overwrite:
                raise TetherError(
                    f"run directory {path} already holds a run; choose another run_name, pass overwrite=true "
                    f"to replace it, or resume=auto to continue it from its last checkpoint"
                )
            for stale in ("metrics.jsonl", "samples.jsonl"):
                (path / stale).unlink(missing_ok=True)
            shutil.rmtree(path / "checkpoints", ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        write_atomic(path / "config.yaml", yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
        extra = []
        if config.metric_sinks:
            from tether.reporting.sinks import make_sinks

            extra = make_sinks(config.metric_sinks, path, dataclasses.asdict(config))
        run = cls(path, RunLogger(path, extra), quiet)
        run.history = [(it, dict(m)) for it, m in (resume_history or [])]
        return run

    @contextmanager
    def progress(self, total: int, name: str = "training"):
        from tether.reporting.progress import phase_progress

        if self.silent:
            yield _NoProgress()
            return
        with phase_progress(name, total=total, quiet=self.quiet) as bar:
            yield bar

    def log(self, iteration: int, metrics: dict[str, float], progress=None) -> None:
        self.logger.log(iteration, metrics)
        self.history.append((iteration, dict(metrics)))
        findings = self.doctor.update(iteration, metrics)
        if progress is not None:
            for finding in findings:
                progress.warn(f"doctor ({finding.severity}): {finding.title}; see `tether doctor {self.path}`")
            fields = {}
            if "objective/score_mean" in metrics:
                fields["score"] = metrics["objective/score_mean"]
            if "objective/kl_k1" in metrics:
                fields["kl"] = metrics["objective/kl_k1"]
            progress.advance(1, **fields)

    def log_samples(self, iteration: int, rows: list[dict]) -> None:
        self.logger.log_samples(iteration, rows)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    @property
    def doctor_says_stop(self) -> bool:
        """A critical finding (NaN metrics, a critic wired wrong, ...): with stop_on_critical the
        loop checkpoints and stops instead of burning compute on a broken run."""
        return self.doctor.should_stop

    def stopped(self, signal_name: str, iteration: int | None, resume_command: str) -> NoReturn:
        """After SIGINT/SIGTERM (or another early stop): close the logs, say that what is saved
        is a partial run and how to continue it, and raise RunStopped, so that neither the
        caller nor a pipeline reading the exit code takes it for a finished model."""
        self.close()
        saved = (f"its checkpoint (iteration {iteration}) is in {self.path / 'checkpoints'}" if iteration is not None
                 else "no checkpoint was written")
        message = (f"stopped by {signal_name}: the run is partial and no final model was written; {saved}. "
                   f"Continue with: {resume_command}")
        print(message, file=sys.stderr)
        number = signal.Signals.__members__.get(signal_name)  # None: a doctor finding, another rank's signal
        raise RunStopped(message, self.path, 128 + number if number is not None else 1)

    def save_final(self, roles, save_critic: bool, full_states: dict | None = None) -> None:
        """Final models. A LoRA policy: adapters to ``policy_adapter/`` (PEFT format), then merged
        into the base weights and saved to ``policy/`` like any other (the merge is in place).
        ``full_states`` (FSDP2): role name -> gathered full state dict, written instead of the
        sharded modules' own (tether.utils.distributed.full_state_dicts)."""
        from tether.models.lora import is_lora, merged_for_saving

        states = full_states or {}
        adapter_dir = self.path / "policy_adapter" if is_lora(roles.policy) else None
        save_pretrained_atomic(merged_for_saving(roles.policy, adapter_dir), self.path / "policy", roles.tokenizer,
                               states.get("policy"))
        if save_critic:
            if roles.critic is not None:
                save_pretrained_atomic(roles.critic, self.path / "critic", state_dict=states.get("critic"))
            elif roles.value_head is not None:
                from safetensors.torch import save_file

                head = states.get("value_head") or roles.value_head.state_dict()
                save_file(head, str(self.path / "policy" / "value_head.safetensors"))

    def close(self) -> None:
        self.logger.close()
