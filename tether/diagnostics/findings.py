"""What the doctor says: one ``Finding`` per failure mode it recognises in a run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["info", "warning", "critical"]

# critical first: the order findings are printed in, and the order `worst()` ranks by
SEVERITY_RANK: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    """One diagnosis. ``evidence`` quotes the iterations and values that triggered it, so a
    reader can check the claim against the plots; ``cause`` and ``fix`` say what usually
    produces this signature and what to try first."""

    rule: str  # the rule's name, e.g. "beta_too_high"; stable, usable in scripts
    severity: Severity  # "critical" findings may stop a live run (LiveDoctor.should_stop)
    title: str  # one line for a progress bar or a table row
    evidence: str  # iterations and values, e.g. "objective/kl_k3 averaged 0.03 over 40-59"
    cause: str
    fix: str
    iterations: list[int] = field(default_factory=list)  # where it shows; plots mark these
    metrics: tuple[str, ...] = ()  # the metric keys the evidence is about; plots mark these

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["metrics"] = list(self.metrics)
        return data


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Critical first, then by where the problem starts."""
    return sorted(findings, key=lambda f: (SEVERITY_RANK[f.severity], min(f.iterations, default=0), f.rule))


def has_critical(findings: list[Finding]) -> bool:
    return any(f.severity == "critical" for f in findings)
