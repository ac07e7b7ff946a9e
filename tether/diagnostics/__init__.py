"""Run doctor: reads a run's metrics (and samples), names the failure mode it sees, with the
evidence, the likely cause and the fix to try. See docs/doctor.md for the rule table."""

from tether.diagnostics.doctor import RULES, LiveDoctor, diagnose, diagnose_run, diagnose_trace
from tether.diagnostics.findings import Finding, has_critical, sort_findings
from tether.diagnostics.run import RunData, load_run
from tether.diagnostics.thresholds import DEFAULT_THRESHOLDS, Thresholds

__all__ = [
    "DEFAULT_THRESHOLDS",
    "Finding",
    "LiveDoctor",
    "RULES",
    "RunData",
    "Thresholds",
    "diagnose",
    "diagnose_run",
    "diagnose_trace",
    "has_critical",
    "load_run",
    "sort_findings",
]
