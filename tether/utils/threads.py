"""``TETHER_THREADS=N``: pin torch's intra-op thread count for a long command (the demo, rounds,
the taste suite), e.g. to run two of them side by side without oversubscribing the cores."""

from __future__ import annotations

import os

from tether.errors import ConfigError

__all__ = ["threads_from_env"]


def threads_from_env() -> int | None:
    """Apply ``TETHER_THREADS`` if set; returns the count applied, or None."""
    raw = os.environ.get("TETHER_THREADS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"TETHER_THREADS must be a whole number >= 1, got {raw!r}")
    import torch

    torch.set_num_threads(int(raw))
    return int(raw)
