"""One scalar-head model for both the reward model and the critic.

It is a Hugging Face ``AutoModelForSequenceClassification`` with ``num_labels=1`` (so it saves
and loads with plain transformers), but tether never calls its own forward: HF reads the score
at the last token that is not ``pad_token_id``, which is wrong when pad == EOS (SmolLM2) and
the response ends in EOS. tether runs the backbone and reads the head where it chooses:
at the last real token for a reward, at every response state for a critic.

Reward normalisation (gain, bias) lives in the config (``tether_score_gain``,
``tether_score_bias``) so every later load scores normalised. ``export_reward_model`` folds it
into the weights before saving, and saves a pad token that is not EOS, so that a plain
``AutoModelForSequenceClassification`` load (TRL, vLLM's reward serving) computes the same
normalised score at the same token. The gain always folds into the head's weight; the bias
folds into the head's bias or the final LayerNorm's bias where the architecture has one.
Llama-family models have neither (bias-free head after an RMSNorm, so no weight can add a
constant): their bias stays in ``tether_score_bias``, which a plain load must add.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tether.errors import TetherError
from tether.models.forward import SequenceInputs, hidden_states_from
from tether.models.loading import prepare_loaded, quiet_transformers
from tether.models.registry import resolve_model
from tether.utils.blocks import decoder_blocks

GAIN_KEY, BIAS_KEY = "tether_score_gain", "tether_score_bias"


class ScalarHeadModel(torch.nn.Module):
    """Backbone + linear head giving one scalar per position. Used as r_φ and as V_ω."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf_model = hf_model
        self.backbone = getattr(hf_model, hf_model.base_model_prefix)
        self.head = _find_head(hf_model)
        self.head_is_new = False  # drawn at load time rather than read from the checkpoint

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
        fresh_head: bool = False, new_head: str = "normal",
    ) -> "ScalarHeadModel":
        """Load a scalar-head checkpoint, or any causal LM / encoder checkpoint with a new head.

        A new head (missing from the checkpoint, or ``fresh_head=True``) is drawn from
        N(0, 1/(d+1)) as in Stiennon et al. 2020 (``new_head="normal"``), or set to zero
        (``new_head="zero"``): see ``reset_head``.
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
        model.head_is_new = fresh_head or head_missing
        if model.head_is_new:
            model.reset_head(new_head)
            model.set_normalization(1.0, 0.0)
        if hf_model.config.pad_token_id is None:
            hf_model.config.pad_token_id = hf_model.config.eos_token_id
        return model.to(device)

    def reset_head(self, kind: str = "normal") -> None:
        """``normal``: N(0, 1/(d+1)) (Stiennon et al. 2020), which gives unit-order scores when the
        final hidden state has unit-order coordinates. Where it does not (SmolLM2's has a norm
        near 46 over 576 coordinates), a random head starts with score differences of std ~2: a
        strong random preference the training must first undo. ``zero``: every score starts
        equal (Bradley-Terry loss ln 2), and the backbone gets no gradient until the head has
        learned a direction, so training begins as a linear probe of the pretrained features
        (LP-FT, Kumar et al. 2022)."""
        if kind not in ("normal", "zero"):
            raise ValueError(f"new head kind must be 'normal' or 'zero', got {kind!r}")
        d = self.head.in_features
        with torch.no_grad():
            torch.nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(d + 1))
            if kind == "zero":
                self.head.weight.zero_()
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

    def fold_normalization(self) -> None:
        """Move gain and bias into the weights: the head's output becomes the normalised score
        (raw · gain + bias), and the stored gain and bias become 1 and what could not be folded.
        The bias goes to the head's bias, else to the final LayerNorm's bias b_n as
        b_n += bias · w / |w|² (then w · (h + Δ) = w · h + bias); else it stays in the config."""
        gain, bias = self.gain, self.bias
        with torch.no_grad():
            self.head.weight.mul_(gain)
            if self.head.bias is not None:
                self.head.bias.mul_(gain).add_(bias)
                bias = 0.0
            elif (norm_bias := _final_norm_bias(self.backbone)) is not None and bias != 0.0:
                w = self.head.weight[0].to(norm_bias.dtype)
                norm_bias.add_(bias * w / w.dot(w))
                bias = 0.0
        self.set_normalization(1.0, bias)

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


def _final_norm_bias(backbone: torch.nn.Module) -> torch.nn.Parameter | None:
    """The bias of the norm the head reads (GPT-2 ``ln_f``, OPT ``final_layer_norm``), if any."""
    for name, module in backbone.named_children():
        if ("norm" in name or name.startswith("ln_")) and isinstance(getattr(module, "bias", None), torch.nn.Parameter):
            return module.bias
    return None


def distinct_pad_token(tokenizer) -> int | None:
    """An existing special token other than EOS to pad with (unk, else bos, else any other), so
    that a reader that looks for the last non-pad token finds EOS. None when there is none."""
    eos = tokenizer.eos_token_id
    candidates = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id, *tokenizer.all_special_ids]
    return next((i for i in candidates if i is not None and i != eos), None)


def export_reward_model(model: ScalarHeadModel, tokenizer) -> None:
    """Prepare a normalised reward model for saving so that plain transformers scores it as
    tether does: fold the normalisation into the weights, and pad with a token that is not EOS
    (``AutoModelForSequenceClassification`` reads the last token that is not ``pad_token_id``;
    with pad == EOS it would read the token before EOS). tether's own scores do not change: it
    reads the head where the mask says and ignores the pad id."""
    model.fold_normalization()
    pad = distinct_pad_token(tokenizer)
    if pad is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
        model.config.pad_token_id = pad


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
