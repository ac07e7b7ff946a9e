"""The speed paths of benchmarks/NOTES.md must not change results: size-aware attention equals
SDPA, frozen bf16 linears equal autocast over fp32 weights, and the host-allocator setting
does what it says (fewer page faults), nothing more."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from tether.models.attention import NAME, _use_matmuls, short_sequence_attention
from tether.models.forward import build_inputs, policy_forward
from tether.models.loading import freeze, load_causal_lm
from tether.utils.precision import autocast, frozen_linears_to

pytestmark = pytest.mark.usefixtures("one_thread")


class _Attn(torch.nn.Module):
    is_causal = True
    training = False


def test_short_sequence_attention_by_hand():
    # 2 query heads sharing 1 key/value head (GQA), 2 positions, head size 1, scaling 1, causal.
    # keys k = [1, -1], values v = [10, 20]; head 0 queries [1, 2], head 1 queries [0, 1].
    # Position 0 sees key 0 only: output 10 in both heads.
    # Head 0, position 1: scores [2, -2] -> softmax [e^2, e^-2] / (e^2 + e^-2) = [0.98201, 0.01799]
    #   -> 10 * 0.98201 + 20 * 0.01799 = 10.17986
    # Head 1, position 1: scores [1, -1] -> [0.880797, 0.119203] -> 11.19203
    q = torch.tensor([[1.0], [2.0], [0.0], [1.0]]).view(1, 2, 2, 1)
    k = torch.tensor([[1.0], [-1.0]]).view(1, 1, 2, 1)
    v = torch.tensor([[10.0], [20.0]]).view(1, 1, 2, 1)
    out, _ = short_sequence_attention(_Attn(), q, k, v, None, scaling=1.0)  # (B, Q, H, D)
    w0 = math.exp(2) / (math.exp(2) + math.exp(-2))
    w1 = math.exp(1) / (math.exp(1) + math.exp(-1))
    expected = torch.tensor([[10.0, 10.0], [10 * w0 + 20 * (1 - w0), 10 * w1 + 20 * (1 - w1)]]).view(1, 2, 2, 1)
    torch.testing.assert_close(out, expected)
    assert abs(expected[0, 1, 0, 0].item() - 10.17986) < 1e-4 and abs(expected[0, 1, 1, 0].item() - 11.19203) < 1e-4

    # A boolean padding mask (key 0 hidden from position 1) moves all weight to key 1: 20.
    mask = torch.tensor([[True, False], [False, True]]).view(1, 1, 2, 2)
    out, _ = short_sequence_attention(_Attn(), q, k, v, mask, scaling=1.0)
    assert out[0, 1, :, 0].tolist() == [20.0, 20.0]


def test_dispatch_rules():
    def shapes(q_len, kv_len, device="cpu"):
        return torch.empty(1, 2, q_len, 4, device=device), torch.empty(1, 1, kv_len, 4, device=device)

    mask = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    assert _use_matmuls(*shapes(128, 128), mask, {})  # 16k scores: matmuls
    assert not _use_matmuls(*shapes(300, 300), mask, {})  # 90k scores: SDPA's kernel
    assert _use_matmuls(*shapes(1, 5000), None, {})  # decoding steps always
    assert not _use_matmuls(*shapes(4, 10), None, {})  # causal prefill into a longer cache: SDPA
    assert not _use_matmuls(*shapes(8, 8), mask, {"sliding_window": 4})  # features it lacks: SDPA
    assert not _use_matmuls(*shapes(8, 8, device="meta"), mask, {})  # accelerators: SDPA


def _padded_batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, vocab, (3, 7), generator=g)
    prompt_mask = torch.ones(3, 7, dtype=torch.long)
    prompt_mask[0, :3] = 0  # left padding
    response_ids = torch.randint(3, vocab, (3, 6), generator=g)
    response_mask = torch.ones(3, 6, dtype=torch.long)
    response_mask[1, 4:] = 0  # right padding
    return build_inputs(prompt_ids, prompt_mask, response_ids, response_mask), response_ids, response_mask.bool()


def test_loaded_models_use_it_and_match_sdpa(tiny_model_path):
    model = load_causal_lm(tiny_model_path)
    assert model.config._attn_implementation == NAME
    inputs, response_ids, mask = _padded_batch(model.config.vocab_size)

    def logprobs_and_grads(impl):
        model.set_attn_implementation(impl)
        model.zero_grad(set_to_none=True)
        logprobs = policy_forward(model, inputs, response_ids).logprobs
        (logprobs * mask).sum().backward()
        return logprobs.detach(), [p.grad.clone() for p in model.parameters()]

    ours, our_grads = logprobs_and_grads(NAME)
    reference, reference_grads = logprobs_and_grads("sdpa")
    torch.testing.assert_close(ours[mask], reference[mask], atol=1e-5, rtol=1e-5)
    for a, b in zip(our_grads, reference_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)

    # generation (prefill + one-query decoding steps with a padded batch): the same tokens
    prompt = inputs.input_ids[:, :7]
    attention = inputs.attention_mask[:, :7]
    outs = {}
    for impl in (NAME, "sdpa"):
        model.set_attn_implementation(impl)
        outs[impl] = model.generate(input_ids=prompt, attention_mask=attention, max_new_tokens=8, do_sample=False,
                                    pad_token_id=0)
    assert torch.equal(outs[NAME], outs["sdpa"])


def test_scalar_head_models_use_it_and_match_sdpa(tiny_model_path):
    from tether.models.scalar_head import ScalarHeadModel

    critic = ScalarHeadModel.from_pretrained(tiny_model_path, fresh_head=True)
    assert critic.hf_model.config._attn_implementation == NAME
    inputs, response_ids, mask = _padded_batch(critic.hf_model.config.vocab_size, seed=2)
    values = {}
    for impl in (NAME, "sdpa"):
        critic.hf_model.set_attn_implementation(impl)
        values[impl] = critic.response_values(inputs, response_ids.shape[1]).detach()
    torch.testing.assert_close(values[NAME][mask], values["sdpa"][mask], atol=1e-5, rtol=1e-5)


def test_frozen_bf16_linears_are_bit_identical_under_autocast(tiny_model_path):
    model = freeze(load_causal_lm(tiny_model_path))
    inputs, response_ids, _ = _padded_batch(model.config.vocab_size, seed=1)
    cpu = torch.device("cpu")
    with torch.no_grad(), autocast(cpu, "bf16"):
        before = policy_forward(model, inputs, response_ids).logprobs
        frozen_linears_to(model, "bf16")
        after = policy_forward(model, inputs, response_ids).logprobs
    assert torch.equal(before, after)
    assert model.lm_head.weight.dtype == torch.bfloat16
    embedding = model.get_input_embeddings().weight
    assert embedding.dtype == torch.float32 and embedding is not model.lm_head.weight  # untied, not cast
    assert all(p.dtype == torch.bfloat16 for m in model.modules() if isinstance(m, torch.nn.Linear)
               for p in m.parameters())

    untouched = freeze(load_causal_lm(tiny_model_path))
    frozen_linears_to(untouched, "fp32")
    assert all(p.dtype == torch.float32 for p in untouched.parameters())
    with pytest.raises(ValueError, match="frozen"):
        frozen_linears_to(load_causal_lm(tiny_model_path), "bf16")  # trainable weights stay fp32


_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from tether.utils.host_memory import keep_freed_host_memory
    print(keep_freed_host_memory(), file=sys.stderr)
    sizes = [28 * 2**20, 2**20, 2**20, 4 * 2**20, 2**18, 2**20, 8 * 2**20]  # floats: 112 MB ... 1 MB

    def step():  # the pattern of a training step: buffers allocated during it, all freed at its end
        held = [torch.zeros(n) for n in sizes]
        del held

    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_host_allocator_keeps_freed_memory():
    def run(setting):
        env = {"TETHER_HOST_MALLOC": setting, "PATH": "/usr/bin:/bin"}
        done = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env, check=True)
        return done.stderr.strip().splitlines()[-1], int(done.stdout.strip())

    applied, tuned_faults = run("")
    not_applied, default_faults = run("default")
    assert applied == "True" and not_applied == "False"
    # default glibc maps the 112 MB and 32 MB buffers afresh every step: 10 steps x ~36k pages.
    # Tuned, the heap keeps them; what faults remain is a one-time settling of the heap (measured
    # 13-29k pages whether 5, 20 or 60 steps follow), not a per-step cost.
    assert default_faults >= 10 * 30_000
    assert tuned_faults * 5 < default_faults
