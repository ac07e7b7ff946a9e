"""Loading causal LMs and tokenizers for the four RLHF roles, on any device and dtype."""

from __future__ import annotations

from pathlib import Path

import torch

from tether.errors import TetherError
from tether.models.attention import use_size_aware_attention
from tether.models.quiet import quiet_transformers
from tether.models.registry import resolve_model
from tether.utils.precision import frozen_linears_to

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, then Apple MPS, else CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TetherError(f"device '{device}' requested but CUDA is not available; use device=cpu or device=auto")
    return dev


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise TetherError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def same_vocabulary(tokenizer, other) -> bool:
    """Whether two tokenizers map every token to the same id: a model of one then reads the
    other's token ids as they are."""
    return tokenizer.get_vocab() == other.get_vocab()


def load_tokenizer(name_or_path: str | Path):
    """Tokenizer with a pad token guaranteed. When pad == EOS (SmolLM2), masks are built from
    lengths everywhere in tether, never from ``ids != pad_id``."""
    from transformers import AutoTokenizer

    path = resolve_model(str(name_or_path))
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token_id is None:
        raise TetherError(f"tokenizer of {path} has no EOS token; responses could never end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """Any Hugging Face causal LM by folder, ``.gguf`` file or alias, with dropout disabled
    (RLHF detail: dropout makes old and new log-probs of the same policy differ; Huang et al. 2024)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(str(name_or_path))
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise TetherError(f"could not load a causal LM from {path}: {exc}") from None
    prepare_loaded(model)
    return model.to(device)


def prepare_loaded(model: torch.nn.Module) -> None:
    """What every model tether loads gets: dropout off, and on CPU the attention kernel that is
    fast at RLHF's sequence lengths (tether/models/attention.py)."""
    disable_dropout(model)
    use_size_aware_attention(model)


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if config is not None and isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)


def freeze(model: torch.nn.Module, precision: str = "fp32") -> torch.nn.Module:
    """A frozen role (reference, reward model): eval mode, no gradients, dropout off. With
    ``precision="bf16"`` its linear weights are stored in bf16 once (``frozen_linears_to``):
    only for a model whose forwards all run under ``autocast(device, "bf16")``."""
    disable_dropout(model)
    model.eval()
    model.requires_grad_(False)
    return frozen_linears_to(model, precision)
