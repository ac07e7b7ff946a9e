"""Shared fixtures. Models come from the tether cache (built in code or converted from the
packaged GGUF on first use), never from a hub."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_path():
    from tether.models.registry import resolve_model

    return str(resolve_model("tiny-llama"))


@pytest.fixture(scope="session")
def smollm2_path():
    from tether.models.registry import resolve_model

    return str(resolve_model("smollm2"))
