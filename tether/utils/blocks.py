"""Finding the stack of transformer blocks in any model, by structure alone: FSDP2 shards
block by block, and reward-model training freezes all but the top blocks."""

from __future__ import annotations

import torch


def decoder_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of any model: its largest ``ModuleList`` by parameter count
    (``layers`` in Llama/Qwen/Mistral, ``h`` in GPT-2, ``encoder.layer`` in BERT). Empty when
    there is none."""
    lists = [m for m in module.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=lambda l: sum(p.numel() for p in l.parameters()))) if lists else []
