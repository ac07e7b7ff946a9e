"""Data parallelism on CPU with gloo: ``tether ppo`` under ``torchrun --nproc_per_node 2``
completes (DDP and FSDP2), both strategies give the same losses and weights, and a 2-rank
update on the shards of a global batch equals the 1-rank update on the whole batch
(global whitening, global loss counts, gradient sums).

The workers run as ``python -m torch.distributed.run ... -m tests.test_distributed WORKER``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tether.errors import ConfigError
from tether.ops.masking import masked_whiten
from tether.utils.distributed import DistContext, whiten

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", "configs/ppo-tiny.yaml", "quiet=true", "device=cpu", "total_iterations=2", "batch_size=4",
        "mini_batch_size=4", "micro_batch_size=2", "ppo_epochs=2", "max_new_tokens=8", "overwrite=true"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    return env


def torchrun(nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def read_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {f"{sub}.{k}": v for sub in ("policy", "critic")
            for k, v in load_file(str(run / sub / "model.safetensors")).items()}


# ---- unit: global whitening --------------------------------------------------------------------


def test_whiten_without_a_process_group_is_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    for shift in (True, False):
        torch.testing.assert_close(whiten(x, mask, DistContext(), shift_mean=shift), masked_whiten(x, mask, shift))


def test_global_sizes_must_split_over_ranks():
    from tether.config import load_config
    from tether.train.ppo_config import PPOConfig, check_world_size

    config = load_config(PPOConfig, "configs/ppo-tiny.yaml", ["batch_size=6", "mini_batch_size=6", "micro_batch_size=2"])
    check_world_size(config, 1)
    with pytest.raises(ConfigError, match="multiple of 2 x micro_batch_size"):
        check_world_size(config, 2)


# ---- end to end: torchrun, the CLI unchanged -----------------------------------------------------


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    runs = {}
    for strategy in ("ddp", "fsdp2"):
        torchrun(2, "-m", "tether.cli", "ppo", *TINY, f"output_dir={out}", f"run_name={strategy}", f"strategy={strategy}",
                 "checkpoint_every=1", f"kl_target={KL_TARGET}", f"kl_horizon={KL_HORIZON}")
        runs[strategy] = out / strategy
    return runs


KL_TARGET, KL_HORIZON = 1.0, 8  # adaptive β in the two-rank runs, with a horizon short enough to see one step


def test_adaptive_beta_counts_the_samples_of_all_ranks(two_rank_runs):
    # Iteration 1 measures KL 0 exactly (π_old = π_ref before any update), so Ziegler's error
    # clip(0/1 - 1, ±0.2) = -0.2 and β(2) = 0.03 · (1 - 0.2 · n/8) with n the samples behind the
    # KL, which is averaged over both ranks: the global batch's 4 -> 0.027 (a rank's own 2 -> 0.0285)
    for run in two_rank_runs.values():
        first, second = read_rows(run)
        assert first["objective/kl_k1"] == pytest.approx(0.0, abs=1e-6)
        assert first["objective/kl_coef"] == pytest.approx(0.03)
        assert second["objective/kl_coef"] == pytest.approx(0.027)


def test_torchrun_two_ranks_completes_and_only_rank_zero_writes(two_rank_runs):
    for run in two_rank_runs.values():
        rows = read_rows(run)
        assert [r["iteration"] for r in rows] == [1, 2]  # one line per iteration, not one per rank
        # samples are rank 0's: min(log_samples=4, its 2 of the 4 responses) per iteration
        assert len((run / "samples.jsonl").read_text().splitlines()) == 2 * 2
        assert (run / "policy" / "model.safetensors").is_file() and (run / "critic" / "model.safetensors").is_file()


def test_ddp_and_fsdp2_give_the_same_losses_and_weights(two_rank_runs):
    ddp, fsdp = (read_rows(two_rank_runs[s]) for s in ("ddp", "fsdp2"))
    for a, b in zip(ddp, fsdp):
        for key in ("losses/policy_loss", "losses/value_loss", "objective/score_mean", "optim/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    wa, wb = weights(two_rank_runs["ddp"]), weights(two_rank_runs["fsdp2"])
    assert wa.keys() == wb.keys()
    checksum_a, checksum_b = (sum(v.double().sum().item() for v in w.values()) for w in (wa, wb))
    assert checksum_a == pytest.approx(checksum_b, rel=1e-7)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_ddp_and_fsdp2_checkpoints_resume_to_the_same_next_iteration(two_rank_runs, tmp_path):
    """Both strategies' checkpoints (FSDP2: gathered full state dicts, re-sharded on restore)
    resume to the same third iteration: weights and Adam moments came back."""
    import shutil

    resumed = {}
    for strategy, run in two_rank_runs.items():
        resumed[strategy] = shutil.copytree(run, tmp_path / strategy)
        torchrun(2, "-m", "tether.cli", "ppo", "--resume", str(resumed[strategy]), "total_iterations=3")
    ddp, fsdp = (read_rows(resumed[s]) for s in ("ddp", "fsdp2"))
    assert [r["iteration"] for r in ddp] == [r["iteration"] for r in fsdp] == [1, 2, 3]
    for key in ("losses/policy_loss", "losses/value_loss", "objective/score_mean", "optim/grad_norm"):
        assert ddp[2][key] == pytest.approx(fsdp[2][key], rel=1e-4, abs=1e-6), key
    wa, wb = weights(resumed["ddp"]), weights(resumed["fsdp2"])
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_lora_with_checkpointing_under_ddp_checkpoints_and_resumes(tmp_path):
    """LoRA + gradient checkpointing on 2 ranks; rank 0 writes the checkpoint (adapters only),
    and ``--resume`` under torchrun continues it to the end."""
    common = [*TINY, f"output_dir={tmp_path}", "run_name=lora", "lora_r=4", "gradient_checkpointing=true",
              "checkpoint_every=1"]
    torchrun(2, "-m", "tether.cli", "ppo", *common)
    run = tmp_path / "lora"
    assert (run / "policy_adapter" / "adapter_model.safetensors").is_file() and (run / "policy" / "config.json").is_file()
    state = torch.load(run / "checkpoints" / "iter-000002" / "state.pt", weights_only=False)
    assert all("lora_" in k for k in state["modules"]["policy"])
    torchrun(2, "-m", "tether.cli", "ppo", "--resume", str(run), "total_iterations=3")
    assert [r["iteration"] for r in read_rows(run)] == [1, 2, 3]


# ---- the first update: 2 ranks x half the batch == 1 rank x the whole batch ----------------------


def first_update(out: str, strategy: str) -> None:
    """Worker: one PPO update (score -> shape -> GAE -> global whitening -> 1 epoch) on this
    rank's rows of a fixed global rollout of 8 responses; rank 0 saves metrics and weights."""
    from tether.config import load_config
    from tether.train.algorithms import ALGORITHMS, AdvantageInputs
    from tether.train.ppo_config import PPOConfig
    from tether.train.rl_phases import run_updates, score_rollout, shape_rewards
    from tether.train.roles import build_roles
    from tether.train.optim import make_adamw, make_scheduler
    from tether.types import Rollout, TrainBatch
    from tether.utils.distributed import full_state_dicts, init_distributed, shutdown_distributed, wrap_trained

    torch.set_num_threads(1)
    config = load_config(PPOConfig, ROOT / "configs/ppo-tiny.yaml", [
        "device=cpu", "batch_size=8", "mini_batch_size=8", f"micro_batch_size={os.environ.get('MICRO', 2)}", "ppo_epochs=1",
        f"strategy={strategy}"])
    dist, _ = init_distributed(config.strategy, "cpu")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    roles = build_roles(config.model_settings, config.reward_settings, cpu, uses_critic=True)
    roles.actor = wrap_trained(roles.actor, dist, cpu)
    roles.critic_forward = wrap_trained(roles.critic_forward, dist, cpu)

    g = torch.Generator().manual_seed(1)  # the same global rollout on every rank
    B, P, R = 8, 5, 6
    prompt_ids = torch.randint(3, 70, (B, P), generator=g)
    prompt_mask = torch.arange(P)[None, :] >= torch.randint(0, 3, (B,), generator=g)[:, None]
    lengths = torch.randint(1, R + 1, (B,), generator=g)
    response_mask = torch.arange(R)[None, :] < lengths[:, None]
    response_ids = torch.randint(3, 70, (B, R), generator=g).masked_fill(~response_mask, roles.tokenizer.pad_token_id)
    texts = [roles.tokenizer.decode(ids[m]) for ids, m in zip(response_ids, response_mask)]
    n = B // dist.world_size
    rows = slice(dist.rank * n, (dist.rank + 1) * n)
    rollout = Rollout(prompt_ids[rows], prompt_mask[rows], response_ids[rows], response_mask[rows], lengths[rows] < R,
                      ["p"] * n, texts[rows], 1)

    scored = score_rollout(roles, rollout, config, cpu)
    rewards, _ = shape_rewards(scored, config.kl_coef, True, config.kl_estimator)
    ppo = ALGORITHMS["ppo"]
    advantages, returns = ppo.advantages(AdvantageInputs(scored.scores, rewards, scored.old_values,
                                                         rollout.response_mask, 1, config.gamma, config.lam))
    from tether.utils.distributed import whiten

    advantages = whiten(advantages, rollout.response_mask, dist)
    batch = TrainBatch(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask,
                       scored.old_logprobs, scored.ref_logprobs, advantages, returns, scored.old_values)
    policy_params, critic_params = roles.trainable_groups()
    optimizer = make_adamw([{"params": policy_params, "lr": 1e-3}, {"params": critic_params, "lr": 3e-3}], cpu)
    scheduler = make_scheduler(optimizer, "constant", 0, 1)
    stats = run_updates(roles, batch, ppo, config, optimizer, scheduler, config.kl_coef, False, cpu,
                        torch.Generator().manual_seed(0), dist=dist)
    metrics = dist.mean_metrics(stats.means())
    states = full_state_dicts(roles, dist) or {"policy": roles.policy.state_dict(), "critic": roles.critic.hf_model.state_dict()}
    if dist.is_main:
        torch.save({"metrics": metrics, "states": {r: {k: v.detach().clone() for k, v in sd.items()}
                                                   for r, sd in states.items()}}, out)
    shutdown_distributed(dist)


def test_two_ranks_first_update_equals_one_rank_with_the_same_global_batch(tmp_path):
    one = tmp_path / "one.pt"
    out = subprocess.run([sys.executable, "-m", "tests.test_distributed", "first_update", str(one), "none"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    reference = torch.load(one, weights_only=False)
    for strategy in ("ddp", "fsdp2"):
        two = tmp_path / f"{strategy}.pt"
        torchrun(2, "-m", "tests.test_distributed", "first_update", str(two), strategy)
        result = torch.load(two, weights_only=False)
        for key, value in reference["metrics"].items():
            assert result["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (strategy, key)
        for role, state in reference["states"].items():
            # Adam's first step moves each weight by ~lr (1e-3) times g / (|g| + eps): for gradient
            # entries near eps, the summation-order noise of accumulating micro-batches on one rank
            # vs all-reducing across two shows up as a few 1e-6 (measured 6e-6): 2e-5 is 2% of a step
            for k, v in state.items():
                torch.testing.assert_close(result["states"][role][k], v, rtol=1e-4, atol=2e-5, msg=f"{strategy} {role}.{k}")
        # the update moved the weights: the comparison is not of two untouched models
    base = torch.load(tmp_path / "one.pt", weights_only=False)["states"]["policy"]
    from tether.models.loading import load_causal_lm

    start = load_causal_lm("tiny-llama").state_dict()
    assert any(not torch.equal(base[k], start[k]) for k in start)


# ---- REINFORCE++: its batch whitening is global too ---------------------------------------------


def _reinforce_pp_batch():
    """A fixed global batch of 4 ragged responses' per-token rewards (the same on every rank)."""
    g = torch.Generator().manual_seed(3)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 2, 4, 1])[:, None]
    return torch.randn(4, 5, generator=g) * mask, mask


def reinforce_pp_advantages(out: str) -> None:
    """Worker: this rank's half of the batch through the loop's advantage phase; each rank saves its rows."""
    from tether.train.algorithms import ALGORITHMS, AdvantageInputs
    from tether.train.iteration import estimate_advantages
    from tether.utils.distributed import init_distributed, shutdown_distributed

    dist, _ = init_distributed("ddp", "cpu")
    rewards, mask = _reinforce_pp_batch()
    rows = slice(2 * dist.rank, 2 * dist.rank + 2)
    x = AdvantageInputs(rewards[rows].sum(1), rewards[rows], None, mask[rows], 1, 0.9, 0.95)
    advantages, _ = estimate_advantages(ALGORITHMS["reinforce_pp"], x, None, dist)
    torch.save(advantages, f"{out}.{dist.rank}")
    shutdown_distributed(dist)


def test_reinforce_pp_whitens_over_the_global_batch(tmp_path):
    """2 ranks x 2 responses give the advantages of 1 process x 4: the mean and variance of the
    whitening are the whole batch's, not each rank's (its real tokens: 5 + 2 on rank 0, 4 + 1 on 1)."""
    from tether.train.algorithms import ALGORITHMS, AdvantageInputs
    from tether.train.iteration import estimate_advantages

    rewards, mask = _reinforce_pp_batch()
    one, _ = estimate_advantages(ALGORITHMS["reinforce_pp"], AdvantageInputs(rewards.sum(1), rewards, None, mask, 1,
                                                                              0.9, 0.95), None, DistContext())
    torchrun(2, "-m", "tests.test_distributed", "reinforce_pp_advantages", str(tmp_path / "adv"))
    two = torch.cat([torch.load(tmp_path / f"adv.{rank}") for rank in (0, 1)])
    torch.testing.assert_close(two, one, rtol=1e-6, atol=1e-6)
    # a rank's own whitening would give each half mean 0: the global one does not
    assert abs(one[:2][mask[:2]].mean().item()) > 0.05


if __name__ == "__main__":
    if sys.argv[1] == "first_update":
        first_update(sys.argv[2], sys.argv[3])
    if sys.argv[1] == "reinforce_pp_advantages":
        reinforce_pp_advantages(sys.argv[2])
