"""Metric sinks, progress display and run reports."""
