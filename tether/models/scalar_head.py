"""One scalar-head model for both the reward model and the critic.

It is a Hugging Face ``AutoModelForSequenceClassification`` with ``num_labels=1`` (so it saves
and loads with plain transformers), but tether never calls its own forward: HF reads the score
at the last token that is not ``pad_token_id``, which is wrong when pad == EOS (SmolLM2) and
the response ends in EOS. tether runs the backbone and reads the head where it chooses:
at the last real token for a reward, at every response state for a critic.

Reward normalisation (gain, bias) lives in the saved config (``tether_score_gain``,
``tether_score_bias``) so every later load scores normalised.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tether.errors import TetherError
from tether.models.forward import SequenceInputs, decoder_blocks, hidden_states_from
from tether.models.loading import prepare_loaded, quiet_transformers
from tether.models.registry import resolve_model

GAIN_KEY, BIAS_KEY = "tether_score_gain", "tether_score_bias"


class ScalarHeadModel(torch.nn.Module):
    """Backbone + linear head giving one scalar per position. Used as r_φ and as V_ω."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf_model = hf_model
        self.backbone = getattr(hf_model, hf_model.base_model_prefix)
        self.head = _find_head(hf_model)

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
        fresh_head: bool = False,
    ) -> "ScalarHeadModel":
        """Load a scalar-head checkpoint, or any causal LM / encoder checkpoint with a new head.

        A new head (missing from the checkpoint, or ``fresh_head=True``) is drawn from
        N(0, 1/(d+1)) as in Stiennon et al. 2020, so initial scores have unit-order scale.
        """
        from transformers import AutoModelForSequenceClassification

        path = resolve_model(str(name_or_path))
        try:
            with quiet_transformers():
                hf_model, info = AutoModelForSequenceClassification.from_pretrained(
                    path, num_labels=1, dtype=dtype, output_loading_info=True
                )
        except (OSError, ValueError) as exc:
            raise TetherError(f"could not load a scalar-head model from {path}: {exc}") from None
        prepare_loaded(hf_model)
        model = cls(hf_model)
        head_missing = any(k.split(".")[0] in ("score", "classifier") for k in info.get("missing_keys", []))
        if fresh_head or head_missing:
            model.reset_head()
            model.set_normalization(1.0, 0.0)
        if hf_model.config.pad_token_id is None:
            hf_model.config.pad_token_id = hf_model.config.eos_token_id
        return model.to(device)

    def reset_head(self) -> None:
        d = self.head.in_features
        with torch.no_grad():
            torch.nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(d + 1))
            if self.head.bias is not None:
                self.head.bias.zero_()

    def train_top_layers(self, n: int) -> int:
        """Freeze the embeddings and every decoder block but the top ``n``; the final norm and
        the head stay trainable (``n = 0``: those two only, close to a linear probe). Few-pair
        reward models overfit when the whole backbone moves (InstructGPT trains its reward
        models for one epoch for that reason, Ouyang et al. 2022); freezing the lower blocks
        is a cheaper regulariser, and backward stops at the lowest trainable block. Returns
        the number of trainable tensors."""
        blocks = decoder_blocks(self.backbone)
        if not blocks:
            raise TypeError(f"{type(self.backbone).__name__}: no stack of transformer blocks (ModuleList) found")
        if not 0 <= n <= len(blocks):
            raise TetherError(f"trainable_layers={n}: the model has {len(blocks)} decoder blocks")
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        for block in blocks[len(blocks) - n:]:
            for p in block.parameters():
                p.requires_grad_(True)
        for name, module in self.backbone.named_children():  # the final norm (norm, ln_f, final_layer_norm)
            if "norm" in name or name.startswith("ln_"):
                for p in module.parameters():
                    p.requires_grad_(True)
        return sum(1 for p in self.parameters() if p.requires_grad)

    # ----- forward ------------------------------------------------------------------------------
    def forward(self, inputs: SequenceInputs, start: int = 0) -> torch.Tensor:
        """Raw head output at columns ``start:``: (B, L - start) float32."""
        return self.head(hidden_states_from(self.backbone, inputs, start)).squeeze(-1).float()

    def response_values(self, inputs: SequenceInputs, response_width: int) -> torch.Tensor:
        """Critic use: V(s_t) for response tokens t = 0..R-1, read at column P-1+t. (B, R)."""
        return self.forward(inputs, inputs.prompt_width - 1)[:, :response_width]

    def sequence_scores(self, inputs: SequenceInputs, last_index: torch.Tensor) -> torch.Tensor:
        """Reward use: normalised score at each row's last real token. last_index: (B,) -> (B,)."""
        start = inputs.prompt_width - 1  # the last index is never left of the last prompt token
        raw = self.forward(inputs, start).gather(1, (last_index - start)[:, None]).squeeze(1)
        return raw * self.gain + self.bias

    # ----- normalisation and saving -------------------------------------------------------------
    @property
    def gain(self) -> float:
        return float(getattr(self.hf_model.config, GAIN_KEY, 1.0))

    @property
    def bias(self) -> float:
        return float(getattr(self.hf_model.config, BIAS_KEY, 0.0))

    def set_normalization(self, gain: float, bias: float) -> None:
        setattr(self.hf_model.config, GAIN_KEY, float(gain))
        setattr(self.hf_model.config, BIAS_KEY, float(bias))

    def save_pretrained(self, path: str | Path, **kwargs) -> None:
        self.hf_model.save_pretrained(path, **kwargs)

    @property
    def config(self):
        return self.hf_model.config


def _find_head(hf_model) -> torch.nn.Linear:
    for name in ("score", "classifier"):
        head = getattr(hf_model, name, None)
        if isinstance(head, torch.nn.Linear):
            return head
        if head is not None and isinstance(getattr(head, "out_proj", None), torch.nn.Linear):
            return head.out_proj
    raise TypeError(f"{type(hf_model).__name__} has no linear scalar head named score or classifier")


class ValueHead(torch.nn.Module):
    """A value head on the policy's own backbone (``critic: shared``): one forward pass gives
    log-probs and values. Zero-initialised, so the first values are 0 rather than noise."""

    def __init__(self, hidden_size: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1, dtype=dtype)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden)
