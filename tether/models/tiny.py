"""A tiny random-init Llama with a character-level tokenizer, built entirely in code.

Tests and the ``ppo-tiny`` config use it: no download, a forward pass in milliseconds, and a
tokenizer whose pad token equals its EOS token, like SmolLM2's, so the code paths that must
not confuse padding with EOS are exercised everywhere.
"""

from __future__ import annotations

import string

import torch

TINY_SPECIALS = ["<unk>", "<eos>", "<bos>"]
TINY_ALPHABET = list(string.ascii_lowercase + string.ascii_uppercase + string.digits + " .,!?'-:;()\n")


def build_tiny_tokenizer():
    """Character-level fast tokenizer (vocab ≈ 80) with pad = eos = ``<eos>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + TINY_ALPHABET)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # every character is its own pre-token; the Fuse decoder joins them back without spaces
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", bos_token="<bos>", pad_token="<eos>"
    )
    # A chat template made of characters in the vocabulary, so conversational data works too.
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return tok


def build_tiny_llama(tokenizer, seed: int = 0, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                     num_kv_heads: int = 2):
    """A 2-layer Llama (≈ 0.1 M parameters) with random weights from ``seed``. Head size is
    hidden_size / num_heads: 16 by default; vLLM's CPU kernels need one of 32, 64, ... (the
    vLLM tests build theirs with num_heads=2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model
