"""LoRA policies: the reference is the policy with its adapters off (equal to the base model,
no second copy), a run saves a merged model plain transformers loads, resume restores the
adapters bit for bit, and the training state is far smaller than a full fine-tune's."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from tether.config import load_config
from tether.models.forward import build_inputs, policy_forward
from tether.models.loading import load_causal_lm
from tether.models.lora import AdapterState, is_lora
from tether.train.ppo import train_ppo
from tether.train.ppo_config import PPOConfig
from tether.train.roles import build_roles

SMALL = ["quiet=true", "overwrite=true", "device=cpu", "batch_size=4", "mini_batch_size=2", "micro_batch_size=2",
         "ppo_epochs=2", "max_new_tokens=8", "lora_r=4", "lora_alpha=8"]


pytestmark = pytest.mark.usefixtures("one_thread")


def config(tmp_path, *extra) -> PPOConfig:
    return load_config(PPOConfig, "configs/ppo-tiny.yaml", [*SMALL, f"output_dir={tmp_path}", *extra])


def test_reference_is_the_base_model_with_adapters_off(tmp_path):
    run_config = config(tmp_path)
    roles = build_roles(run_config.model_settings, run_config.reward_settings, torch.device("cpu"), uses_critic=False)
    assert roles.reference is roles.policy and is_lora(roles.policy)  # one copy of the weights
    with torch.no_grad():  # adapters initialise to B = 0 (a no-op); make them matter
        for name, p in roles.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    base = load_causal_lm("tiny-llama")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    response_mask = torch.ones(2, 3, dtype=torch.bool)
    inputs = build_inputs(ids[:, :3], prompt_mask, ids[:, 3:], response_mask)
    with torch.no_grad():
        ref = roles.reference_logprobs(inputs, ids[:, 3:], 1.0)
        expected = policy_forward(base, inputs, ids[:, 3:]).logprobs
        policy = roles.policy_outputs(inputs, ids[:, 3:], 1.0).logprobs
    torch.testing.assert_close(ref, expected, rtol=0, atol=1e-6)
    assert (policy - expected).abs().max() > 1e-3  # the adapters are on outside the context
    trainable = [n for n, p in roles.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_lora_run_saves_a_merged_model_and_resumes_exactly(tmp_path):
    from transformers import AutoModelForCausalLM

    straight = train_ppo(config(tmp_path, "run_name=straight", "total_iterations=3"))
    first = train_ppo(config(tmp_path, "run_name=resumed", "total_iterations=2", "checkpoint_every=1"))
    state = torch.load(first / "checkpoints" / "iter-000002" / "state.pt", weights_only=False)
    assert state["modules"]["policy"] and all("lora_" in k for k in state["modules"]["policy"])  # adapters only
    resumed = train_ppo(config(tmp_path, "run_name=resumed", "total_iterations=3", "checkpoint_every=1",
                               f"resume={first}"))
    rows = [[{k: v for k, v in json.loads(line).items() if not k.startswith(("time/", "rollout/tokens_per_s"))}
             for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (straight, resumed)]
    assert rows[0] == rows[1]
    a, b = load_file(str(straight / "policy" / "model.safetensors")), load_file(str(resumed / "policy" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    merged = AutoModelForCausalLM.from_pretrained(straight / "policy")  # plain transformers, no peft
    assert not any("lora" in k for k in merged.state_dict())
    base = load_causal_lm("tiny-llama")
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed and all("proj" in k for k in changed)  # only adapted (linear) weights moved
    assert (straight / "policy_adapter" / "adapter_config.json").is_file()


def test_adapter_state_round_trip(tmp_path):
    run_config = config(tmp_path)
    roles = build_roles(run_config.model_settings, run_config.reward_settings, torch.device("cpu"), uses_critic=False)
    saved = AdapterState(roles.policy).state_dict()
    with torch.no_grad():
        for name, p in roles.policy.named_parameters():
            if p.requires_grad:
                p.add_(1.0)
    AdapterState(roles.policy).load_state_dict(saved)
    now = AdapterState(roles.policy).state_dict()
    assert saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in saved)


MEMORY_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from tether.config import load_config
    from tether.train.ppo import train_ppo
    from tether.train.ppo_config import PPOConfig
    model, out, lora = sys.argv[1], sys.argv[2], sys.argv[3]
    items = ["quiet=true", "overwrite=true", "device=cpu", f"policy={model}", "algorithm=grpo", "samples_per_prompt=2",
             "batch_size=2", "mini_batch_size=4", "micro_batch_size=4", "ppo_epochs=1", "max_new_tokens=4",
             "total_iterations=2", "save_critic=false", f"output_dir={out}", f"run_name=r{lora}", f"lora_r={lora}"]
    train_ppo(load_config(PPOConfig, "configs/ppo-tiny.yaml", items))
    # VmHWM: this process image's peak RSS (ru_maxrss would carry over the forking parent's peak)
    print("PEAK_KB", [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
""")


def test_lora_peak_memory_is_well_below_the_full_fine_tune(tmp_path):
    """Peak RSS of two runs of the same GRPO config on a 9.5 M-parameter Llama (38 MB of fp32
    weights): the full fine-tune holds a reference copy, gradients and two Adam moments
    (~4 x 38 MB more); the LoRA run none of them (adapters: ~0.3 M parameters)."""
    from tether.models.tiny import build_tiny_llama, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(tokenizer, hidden_size=512, num_layers=4)
    weight_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    peaks = {}
    for lora in (0, 8):
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "model"), str(tmp_path), str(lora)],
                             capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", **_env()})
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[lora] = int(out.stdout.split("PEAK_KB")[-1]) / 1024  # kB -> MiB
    print(f"peak RSS: full {peaks[0]:.0f} MiB, LoRA {peaks[8]:.0f} MiB, weights {weight_mb:.0f} MiB")
    # full: + reference (1x) + grads (1x) + Adam (2x) = 4 x weights; ask for at least half of it
    assert peaks[0] - peaks[8] > 2 * weight_mb, peaks


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


# ---- memory savers ------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_run(tmp_path):
    """Recomputing activations in backward changes memory, not the numbers."""
    plain = train_ppo(config(tmp_path, "run_name=plain", "lora_r=0", "total_iterations=2"))
    ckpt = train_ppo(config(tmp_path, "run_name=ckpt", "lora_r=0", "total_iterations=2", "gradient_checkpointing=true"))
    a = load_file(str(plain / "policy" / "model.safetensors"))
    b = load_file(str(ckpt / "policy" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_offload_frozen_is_a_no_op_on_cpu(tmp_path):
    cfg = config(tmp_path, "lora_r=0", "offload_frozen=true")
    roles = build_roles(cfg.model_settings, cfg.reward_settings, torch.device("cpu"), uses_critic=False)
    assert not roles.offload_frozen and roles.reference is not roles.policy
    assert train_ppo(config(tmp_path, "run_name=offload", "lora_r=0", "offload_frozen=true", "total_iterations=1")).is_dir()


def test_lora_config_errors():
    from tether.errors import ConfigError

    with pytest.raises(ConfigError, match="adapters off"):
        load_config(PPOConfig, "configs/ppo-tiny.yaml", ["lora_r=4", "reference=tiny-llama"])
    with pytest.raises(ConfigError, match="strategy=ddp"):
        load_config(PPOConfig, "configs/ppo-tiny.yaml", ["lora_r=4", "strategy=fsdp2"])


def test_offload_moves_the_frozen_reference_only_for_the_scoring_phase(tmp_path, monkeypatch):
    """What a GPU run does, with the move recorded instead of made (no GPU in the tests)."""
    run_config = config(tmp_path, "lora_r=0")
    roles = build_roles(run_config.model_settings, run_config.reward_settings, torch.device("cpu"), uses_critic=False)
    moves = []
    monkeypatch.setattr(roles.reference, "to", lambda device: moves.append(str(device)) or roles.reference)
    roles.device, roles.offload_frozen = torch.device("cuda", 0), True
    with roles.frozen_on_device():
        assert moves == ["cuda:0"]
    assert moves == ["cuda:0", "cpu"]
    run_config = config(tmp_path)
    lora = build_roles(run_config.model_settings, run_config.reward_settings, torch.device("cpu"), uses_critic=False)
    lora.device, lora.offload_frozen = torch.device("cuda", 0), True
    with lora.frozen_on_device():  # the LoRA reference is the trained policy itself: never moved
        assert next(lora.policy.parameters()).device.type == "cpu"
