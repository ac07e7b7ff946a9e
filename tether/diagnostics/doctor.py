"""The doctor: runs every rule over a run's metrics and names what it sees.

Offline: ``diagnose(rows, samples)`` or ``diagnose_run(run_dir)``. Live, inside a training
loop: ``LiveDoctor.update(iteration, metrics)`` returns only findings not reported before,
so the loop can show them in the progress bar and stop on a critical one.

The two judge the same rules on the same windows, but at different moments: the live doctor
on the iterations seen so far, the offline one on the whole run. A warning the progress bar
showed can therefore clear by the end (responses learn to end with EOS, the critic catches
up). So the offline diagnosis replays the run through a LiveDoctor and adds, as an ``info``
finding, each warning it would have raised that no longer holds (``cleared_findings``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from tether.diagnostics import rules_reward as rr
from tether.diagnostics import rules_update as ru
from tether.diagnostics.findings import SEVERITY_RANK, Finding, has_critical, sort_findings
from tether.diagnostics.run import load_run
from tether.diagnostics.thresholds import DEFAULT_THRESHOLDS, Thresholds
from tether.diagnostics.trace import RunTrace, build_trace

Rule = Callable[[RunTrace, Thresholds], "Finding | None"]

# The rule table: name -> function. docs/doctor.md describes each row; order is only the
# order they run in (findings are sorted by severity afterwards).
RULES: dict[str, Rule] = {
    "non_finite": ru.non_finite,
    "skipped_updates": ru.skipped_updates,
    "beta_too_high": rr.beta_too_high,
    "approx_kl_high": ru.approx_kl_high,
    "clipfrac_high": ru.clipfrac_high,
    "ratio_blowup": ru.ratio_blowup,
    "loss_spike": ru.loss_spike,
    "score_collapse": ru.score_collapse,
    "reward_hacking": rr.reward_hacking_gold,
    "length_explosion": rr.length_explosion,
    "repetition": rr.repetition,
    "kl_runaway": rr.kl_runaway,
    "critic_not_learning": ru.critic_not_learning,
    "value_loss_growing": ru.value_loss_growing,
    "entropy_change": ru.entropy_change,  # names its finding entropy_collapse or entropy_explosion
    "negative_kl": rr.negative_kl,
    "missing_eos": rr.missing_eos,
    "score_saturation": rr.score_saturation,
    "dpo_no_progress": rr.dpo_no_progress,
    "dpo_chosen_falling": rr.dpo_chosen_falling,
    "reward_model_at_chance": rr.reward_model_at_chance,
}


# A replay diagnoses at most this many prefixes of a run: every iteration of a shorter run (what
# the training loop's LiveDoctor did), every ceil(n / REPLAY_CHECKS)-th of a longer one.
REPLAY_CHECKS = 100


def diagnose_trace(
    trace: RunTrace, thresholds: Thresholds = DEFAULT_THRESHOLDS, *, cleared: bool = True
) -> list[Finding]:
    """Findings for the whole run, worst first; with ``cleared``, also the live doctor's
    warnings that no longer hold, as ``info`` findings (see ``cleared_findings``)."""
    findings = _rules(trace, thresholds)
    if cleared:
        findings += cleared_findings(trace, findings, thresholds)
    return sort_findings(findings)


def _rules(trace: RunTrace, thresholds: Thresholds) -> list[Finding]:
    return [f for rule in RULES.values() if (f := rule(trace, thresholds)) is not None]


def diagnose(
    metrics: Iterable[Mapping[str, Any]],
    samples: Iterable[Mapping[str, Any]] = (),
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    *,
    cleared: bool = True,
) -> list[Finding]:
    """Findings for metrics.jsonl rows (and samples.jsonl rows), worst first."""
    return diagnose_trace(build_trace(metrics, samples), thresholds, cleared=cleared)


def live_reports(trace: RunTrace, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[tuple[int, Finding]]:
    """(iteration, finding) for each finding a LiveDoctor fed this run row by row reports, when
    it reports it: the same rules on the same windows as during training. Runs longer than
    REPLAY_CHECKS iterations are checked every ceil(n / REPLAY_CHECKS) iterations, so a finding
    that held only between two checks is not seen."""
    rows: dict[int, dict[str, Any]] = {}
    for key, s in trace.series.items():
        for i, v in zip(s.iterations, s.values):
            rows.setdefault(i, {})[key] = v
    for key, its in trace.nonfinite.items():
        for i in its:
            rows.setdefault(i, {})[key] = None
    samples: dict[int, list[dict[str, Any]]] = {}
    for row in trace.samples:
        if isinstance(row.get("iteration"), int):
            samples.setdefault(row["iteration"], []).append(row)
    doctor = LiveDoctor(thresholds, every=max(1, math.ceil(len(rows) / REPLAY_CHECKS)))
    return [(i, f) for i in sorted(rows) for f in doctor.update(i, rows[i], samples=samples.get(i))]


def cleared_findings(
    trace: RunTrace, current: list[Finding], thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> list[Finding]:
    """One ``info`` finding per rule the live doctor reported during the run (the warnings a
    training progress bar showed) that is not among ``current``, the findings on the whole run;
    it quotes the evidence as it stood when first reported at its worst severity."""
    named_now = {f.rule for f in current}
    first: dict[str, tuple[int, Finding]] = {}
    for iteration, f in live_reports(trace, thresholds):
        seen = first.get(f.rule)
        if f.rule not in named_now and (seen is None or SEVERITY_RANK[f.severity] < SEVERITY_RANK[seen[1].severity]):
            first[f.rule] = (iteration, f)
    return [
        Finding(
            rule=f.rule,
            severity="info",
            title=f"Cleared by the end: {f.title} (reported live as a {f.severity} at iteration {iteration})",
            evidence=f"on the iterations up to {iteration}: {f.evidence}. On the whole run the rule no longer "
            "fires: its latest window is within the thresholds.",
            cause=f.cause,
            fix="Nothing, if the latest samples look right: the run recovered. If it comes back: " + f.fix[:1].lower() + f.fix[1:],
            iterations=f.iterations,
            metrics=f.metrics,
        )
        for iteration, f in first.values()
    ]


def diagnose_run(run_dir: str | Path, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Finding]:
    run = load_run(run_dir)
    return diagnose(run.metrics, run.samples, thresholds)


class LiveDoctor:
    """The doctor inside a training loop.

        doctor = LiveDoctor()
        for iteration in range(n):
            ...
            for finding in doctor.update(iteration, metrics, samples=rows):
                bar.advance(0, warning=finding.title)
            if stop_on_critical and doctor.should_stop:
                break

    Each rule is reported once per severity (a warning that turns critical is reported again);
    ``findings`` holds the latest full diagnosis. Cost stays flat on long runs: the rules see
    the first ``head`` iterations (the baselines "initial" levels come from) and the latest
    ``history``; ``every`` > 1 runs the rules only every that many updates.
    """

    def __init__(
        self,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
        *,
        history: int = 500,
        every: int = 1,
        max_sample_iterations: int = 20,
    ):
        self.thresholds = thresholds
        self.history = history
        self.every = max(1, every)
        self.head = thresholds.window
        self.max_sample_iterations = max_sample_iterations
        self._rows: list[dict[str, Any]] = []
        self._samples: dict[int, list[dict[str, Any]]] = {}
        self._reported: set[tuple[str, str]] = set()
        self._updates = 0
        self.findings: list[Finding] = []

    def update(
        self, iteration: int, metrics: Mapping[str, Any], samples: Iterable[Mapping[str, Any]] | None = None
    ) -> list[Finding]:
        """Add one iteration's metrics (and optionally its sample rows); return new findings."""
        self._rows.append({**metrics, "iteration": int(iteration)})
        if samples is not None:
            self._add_samples(int(iteration), samples)
        self._updates += 1
        if self._updates % self.every:
            return []
        rows = self._rows
        if len(rows) > self.head + self.history:
            rows = rows[: self.head] + rows[-self.history :]
        sample_rows = [row for rows_ in self._samples.values() for row in rows_]
        self.findings = sort_findings(_rules(build_trace(rows, sample_rows), self.thresholds))
        new = [f for f in self.findings if (f.rule, f.severity) not in self._reported]
        self._reported.update((f.rule, f.severity) for f in new)
        return new

    @property
    def should_stop(self) -> bool:
        """True when the latest diagnosis has a critical finding."""
        return has_critical(self.findings)

    def _add_samples(self, iteration: int, samples: Iterable[Mapping[str, Any]]) -> None:
        self._samples[iteration] = [{**row, "iteration": iteration} for row in samples]
        # keep the first iteration (the baseline) and the latest ones
        keys = sorted(self._samples)
        for old in keys[1 : max(1, len(keys) - self.max_sample_iterations + 1)]:
            del self._samples[old]
