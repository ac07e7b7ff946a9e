"""Shared fixtures. Models come from the tether cache (built in code or converted from the
packaged GGUF on first use), never from a hub."""

from __future__ import annotations

import os

import pytest

from tests.chromium import CHROMIUM, CHROMIUM_ARGS

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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on 2 shared cores run ~10x faster on one thread than on two contending ones;
    modules of tiny-model tests opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def browser():
    """A headless Debian Chromium, or a skip that says why."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (`make browser`); tests never download a browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install tether[dev])")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
