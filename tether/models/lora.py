"""LoRA policies through PEFT: the policy trains low-rank adapters, and the reference is the
very same model with its adapters switched off (``with model.disable_adapter():``), so no
second copy of the weights is ever held in memory.

Memory, per parameter of the base model (fp32 master weights, AdamW): a full fine-tune keeps
weights + gradient + two Adam moments for the policy (16 bytes) and a frozen copy for the
reference (4 bytes): 20 bytes. With LoRA only the base weights (4 bytes) plus the adapters'
weights, gradients and moments (r·(d_in + d_out) per adapted matrix, usually < 1 % of the
model) remain. docs/scaling.md works the numbers for 1B/7B/70B policies.

PEFT is imported lazily (architecture principle 7): only a run with ``lora_r > 0`` needs it.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from tether.errors import TetherError


def _peft():
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - peft is installed with tether
        raise TetherError(f"lora_r > 0 needs the 'peft' package: pip install peft ({exc})") from None
    return peft


def apply_lora(model: torch.nn.Module, r: int, alpha: float, dropout: float = 0.0,
               target_modules: list[str] | None = None) -> torch.nn.Module:
    """Wrap a causal LM in PEFT LoRA adapters; only the adapters require gradients.

    ``target_modules`` None adapts every linear layer but the LM head (PEFT's "all-linear",
    the QLoRA recipe). ``dropout`` should stay 0 for RL: dropout makes the old and new
    log-probs of the same policy differ (Huang et al. 2024), so ρ would not start at 1."""
    peft = _peft()
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=list(target_modules) if target_modules else "all-linear",
    )
    try:
        with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
            warnings.simplefilter("ignore", FutureWarning)
            return peft.get_peft_model(model, config)
    except ValueError as exc:  # e.g. a target module name the model does not have
        raise TetherError(f"could not add LoRA adapters: {exc}") from None


def is_lora(model: torch.nn.Module | None) -> bool:
    return model is not None and hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def adapters_disabled(model: torch.nn.Module):
    """Context in which a LoRA model computes as its base model (the reference π_ref);
    a no-op context for any other model."""
    return model.disable_adapter() if is_lora(model) else nullcontext()


class AdapterState:
    """What a checkpoint stores for a LoRA policy: the adapter weights only (the base weights
    never change, and the run's config names them). Quacks like the nn.Module parts that
    ``tether.utils.checkpoint.Checkpointer`` uses: state_dict, load_state_dict, named_parameters."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in _peft().get_peft_model_state_dict(self.model).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        result = _peft().set_peft_model_state_dict(self.model, state)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise TetherError(f"checkpoint adapter weights do not fit this LoRA policy (unexpected: {unexpected[:3]})")

    def named_parameters(self):
        return ((n, p) for n, p in self.model.named_parameters() if p.requires_grad)


def checkpoint_view(model: torch.nn.Module):
    """The object a checkpoint saves for the policy: its adapters when LoRA, else the model."""
    return AdapterState(model) if is_lora(model) else model


def merged_for_saving(model: torch.nn.Module, adapter_dir: Path | None = None) -> torch.nn.Module:
    """The model to ``save_pretrained`` at the end: a LoRA policy's adapters are saved to
    ``adapter_dir`` (when given, PEFT format), then merged into the base weights
    (``merge_and_unload``), so that plain ``AutoModelForCausalLM.from_pretrained`` loads the
    result. Any other model is returned as is. The merge is in place: call it last."""
    if not is_lora(model):
        return model
    if adapter_dir is not None:
        from tether.models.loading import quiet_transformers

        with quiet_transformers():
            model.save_pretrained(adapter_dir)
    return model.merge_and_unload()


@contextmanager
def on_device(model: torch.nn.Module, device: torch.device, offload: bool):
    """Hold a frozen role on ``device`` only for the body of the block when ``offload`` (it lives
    on the CPU otherwise); without offload, or when the device is the CPU, a no-op."""
    if not offload or device.type == "cpu":
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to("cpu")
