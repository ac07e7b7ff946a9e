"""The online alternatives (A2C, GRPO, Dr. GRPO, RLOO, REINFORCE++) run the PPO loop with another
row of the algorithm table and each one learns the tiny vowel rule; the table is the one list of
algorithms (config choices, CLI commands, checks), and a new row added in one place (a GSPO-style
sequence-ratio loss) runs; whitening is the row's rule, global over ranks, and a request it
cannot honour is refused; gradient accumulation over micro-batches gives the same update for
every loss aggregation; ``tether compare`` overlays a PPO and a GRPO run."""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import pytest
import torch

from tether.cli import build_parser
from tether.cli import main as tether_main
from tether.config import load_config
from tether.errors import ConfigError
from tether.models.loading import resolve_device
from tether.ops.advantages import gae
from tether.rollout.generation import SamplingSettings, generate_rollout
from tether.rollout.prompts import PromptStream, resolve_prompts
from tether.train import algorithms
from tether.train.algorithms import AlgorithmSpec, AdvantageInputs
from tether.train.iteration import estimate_advantages
from tether.train.ppo import train_ppo
from tether.train.ppo_cli import commands
from tether.train.ppo_config import Algorithm, PPOConfig
from tether.train.rl_phases import run_updates, score_rollout, shape_rewards
from tether.train.roles import build_roles
from tether.train.optim import make_scheduler
from tether.types import TrainBatch
from tether.utils.distributed import DistContext
from tether.utils.seeding import seed_everything


pytestmark = pytest.mark.usefixtures("one_thread")


def config(tmp_path, file: str, **overrides) -> PPOConfig:
    items = [f"output_dir={tmp_path}", "quiet=true", "overwrite=true"] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config(PPOConfig, file, items)


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def first_last(metrics, n=5):
    scores = [m["objective/score_mean"] for m in metrics]
    return sum(scores[:n]) / n, sum(scores[-n:]) / n


# Each method's tiny setup: the config file plus overrides (16 responses per iteration throughout).
SETUPS = {
    "grpo": ("configs/grpo-tiny.yaml", {}),
    "rloo": ("configs/rloo-tiny.yaml", {}),
    "reinforce_pp": ("configs/ppo-tiny.yaml", {"algorithm": "reinforce_pp", "learning_rate": 3e-3}),
    # Dr. GRPO's un-normalised advantages are ~10x smaller than GRPO's on this reward, so the
    # default β·KL in the loss would dominate; the paper's setting (β = 0, no length
    # normalisation) learns as fast as GRPO.
    "dr_grpo": ("configs/grpo-tiny.yaml", {"algorithm": "dr_grpo", "kl_coef": 0.0,
                                           "loss_aggregation": "seq-mean-token-sum"}),
    # one unclipped step per batch instead of 4 epochs of minibatches: twice the iterations
    "a2c": ("configs/ppo-tiny.yaml", {"algorithm": "a2c", "total_iterations": 60, "learning_rate": 3e-3}),
}


def test_the_table_is_the_one_list_of_algorithms_and_commands():
    table = algorithms.ALGORITHMS
    assert typing.get_args(Algorithm) == tuple(table)  # the config's choices
    assert commands() == {spec.command: name for name, spec in table.items()}
    assert set(commands()) == {"ppo", "a2c", "grpo", "dr-grpo", "rloo", "reinforce-pp"}
    for name, spec in table.items():
        assert spec.name == name
        # every command runs its row, whatever the config file says
        assert build_parser().parse_args([spec.command, "x=1"]).algorithm == name
    assert [n for n, s in table.items() if s.needs_critic] == ["ppo", "a2c"]
    assert [n for n, s in table.items() if s.needs_groups] == ["grpo", "dr_grpo", "rloo"]
    assert [n for n, s in table.items() if s.single_step] == ["a2c"]


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_group_methods_keep_the_kl_penalty_when_it_is_in_the_reward(name):
    # 2 prompts x 2 samples, equal scores in each group: only the KL term tells them apart
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    scores = torch.tensor([1.0, 1.0, 0.0, 0.0])
    kl = torch.tensor([[0.1, 0.1, 0.0], [0.5, 0.5, 0.5], [0.2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    lengths = mask.sum(1)
    score_at_end = torch.zeros(4, 3).scatter(1, (lengths - 1)[:, None], scores[:, None])

    def advantages(token_rewards):
        x = algorithms.AdvantageInputs(scores, token_rewards * mask, None, mask, 2, 1.0, 0.95)
        return algorithms.ALGORITHMS[name].advantages(x)[0]

    in_loss = advantages(score_at_end)  # KL in the loss: the rewards are the scores alone
    assert torch.equal(in_loss, torch.zeros(4, 3))
    in_reward = advantages(score_at_end - 1.0 * kl)  # β = 1 in the reward
    assert in_reward[0, 0] > 0 > in_reward[1, 0]  # the lower-KL response of a tie wins
    assert in_reward[3, 0] > 0 > in_reward[2, 0]
    assert torch.equal(in_reward == 0, ~mask)


@pytest.mark.parametrize("name", [
    "grpo",
    "rloo",
    "reinforce_pp",
    pytest.param("dr_grpo", marks=pytest.mark.slow),
    pytest.param("a2c", marks=pytest.mark.slow),
])
def test_each_online_method_learns_the_rule(tmp_path, name):
    file, overrides = SETUPS[name]
    cfg = config(tmp_path, file, run_name=name, **overrides)
    assert cfg.algorithm == name
    run_dir = train_ppo(cfg)
    metrics = read_metrics(run_dir)
    assert len(metrics) == cfg.total_iterations
    first, last = first_last(metrics)
    # random characters are ~6% vowels; each method must clearly raise the score
    assert first < 0.25
    assert last > first + 0.3, (name, first, last)
    spec = algorithms.ALGORITHMS[name]
    assert ("losses/value_loss" in metrics[-1]) == spec.needs_critic
    assert (run_dir / "critic").exists() == spec.needs_critic
    kl_in_loss = spec.default_kl_penalty == "loss"
    assert ("losses/kl_loss" in metrics[-1]) == kl_in_loss
    if spec.single_step:
        assert all(m["policy/clipfrac"] == 0.0 for m in metrics)
    assert (run_dir / "policy" / "config.json").exists()


def test_cli_commands_pick_their_row(tmp_path, capsys):
    code = tether_main(["rloo", "--config", "configs/rloo-tiny.yaml", f"output_dir={tmp_path}", "run_name=cli",
                        "quiet=true", "total_iterations=1"])
    assert code == 0
    assert "algorithm: rloo" in (tmp_path / "cli" / "config.yaml").read_text()
    # the command names the algorithm even with another method's config file
    code = tether_main(["reinforce-pp", "--config", "configs/grpo-tiny.yaml", f"output_dir={tmp_path}",
                        "run_name=cli2", "quiet=true", "total_iterations=1"])
    assert code == 0
    assert "algorithm: reinforce_pp" in (tmp_path / "cli2" / "config.yaml").read_text()


# ----- whitening: the row's rule, over the global batch ----------------------------------------


def test_reinforce_pp_whitens_its_discounted_returns():
    # γ = 0.5, per-token rewards [1, 0, 2]: returns G = [1 + 0.5·1, 0 + 0.5·2, 2] = [1.5, 1, 2];
    # whitened over the batch's real tokens: mean 1.5, unbiased std 0.5 -> [0, -1, 1], padding 0
    rewards = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    x = AdvantageInputs(torch.tensor([3.0]), rewards, None, mask, 1, 0.5, 0.95)
    advantages, returns = estimate_advantages(algorithms.ALGORITHMS["reinforce_pp"], x, None, DistContext())
    assert advantages.tolist()[0] == pytest.approx([0.0, -1.0, 1.0, 0.0], abs=1e-5)
    assert returns is None


def test_ppo_honours_whiten_advantages_false():
    # one response, V = 0, rewards [0, 1], γ = 1, λ = 0.95: δ1 = 1, A1 = 1; δ0 = 0, A0 = 0.95·A1
    # = 0.95: raw advantages [0.95, 1]
    mask = torch.ones(1, 2, dtype=torch.bool)
    x = AdvantageInputs(torch.tensor([1.0]), torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), mask, 1, 1.0, 0.95)
    ppo = algorithms.ALGORITHMS["ppo"]
    raw, _ = estimate_advantages(ppo, x, False, DistContext())
    assert raw.tolist()[0] == pytest.approx([0.95, 1.0])
    assert torch.equal(raw, gae(x.token_rewards, x.values, mask, 1.0, 0.95)[0])
    whitened, _ = estimate_advantages(ppo, x, None, DistContext())  # unset: PPO whitens
    # mean 0.975, unbiased std 0.035355 -> [-0.7071, 0.7071]
    assert whitened.tolist()[0] == pytest.approx([-0.70711, 0.70711], abs=1e-4)


@pytest.mark.parametrize("command, file, value, says", [
    ("grpo", "configs/grpo-tiny.yaml", "true", "within each prompt's group"),
    ("rloo", "configs/rloo-tiny.yaml", "true", "within each prompt's group"),
    ("reinforce-pp", "configs/ppo-tiny.yaml", "false", "the baseline that replaces a critic"),
])
def test_a_whitening_request_the_algorithm_cannot_honour_is_one_line_and_exit_2(tmp_path, capsys, command, file,
                                                                                 value, says):
    code = tether_main([command, "--config", file, f"output_dir={tmp_path}", "quiet=true",
                        f"whiten_advantages={value}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert 'field "whiten_advantages"' in err and says in err and "leave it unset" in err
    assert not any(tmp_path.iterdir())  # refused before any run directory or model


# ----- a new algorithm is one row ------------------------------------------------------------------


def gspo_loss(logprobs, old_logprobs, advantages, response_mask, clip_eps=0.2, clip_eps_high=None,
              aggregation="token-mean", num_tokens=None, num_sequences=None):
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): one importance ratio per
    response, the geometric mean of its tokens' ratios s = exp(mean_t log ρ_t), clipped like PPO's
    and weighted by the response's (group) advantage; a mean over the minibatch's responses."""
    mask = response_mask.to(logprobs.dtype)
    log_ratio = ((logprobs - old_logprobs.detach()) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    ratio = log_ratio.exp()
    advantage = advantages[:, 0]  # the response's advantage sits on each of its tokens
    high = clip_eps if clip_eps_high is None else clip_eps_high
    per_response = -torch.min(ratio * advantage, ratio.clamp(1 - clip_eps, 1 + high) * advantage)
    loss = per_response.sum() / (num_sequences or len(per_response))
    return loss, {"seq_ratio_max": ratio.max().detach(), "seq_clipfrac": ((ratio - 1).abs() > clip_eps).float().mean()}


GSPO = AlgorithmSpec(name="gspo", command="gspo", summary="GSPO: sequence-level ratio, group advantages",
                     needs_critic=False, needs_groups=True, advantages=algorithms.group_advantages,
                     whitening="never", default_kl_penalty="loss", policy_loss=gspo_loss)


@pytest.fixture
def gspo_row(monkeypatch):
    """The whole of adding an algorithm: its row in the table."""
    monkeypatch.setitem(algorithms.ALGORITHMS, GSPO.name, GSPO)
    return GSPO


def test_a_row_added_in_one_place_runs_an_iteration(tmp_path, gspo_row):
    base = config(tmp_path, "configs/grpo-tiny.yaml", run_name="gspo", total_iterations=1, batch_size=2,
                  mini_batch_size=8, micro_batch_size=4, ppo_epochs=1, max_new_tokens=8)
    with pytest.raises(ConfigError, match="gspo compares samples of one prompt"):  # the row's own check
        dataclasses.replace(base, algorithm="gspo", samples_per_prompt=1, batch_size=8)
    run_dir = train_ppo(dataclasses.replace(base, algorithm="gspo"))
    (row,) = read_metrics(run_dir)
    # one optimizer step on fresh samples: every sequence ratio is exactly 1, nothing clipped
    assert row["policy/seq_ratio_max"] == 1.0 and row["policy/seq_clipfrac"] == 0.0
    assert "losses/kl_loss" in row and "losses/value_loss" not in row  # the row's KL placement, no critic
    assert row["optim/grad_norm"] > 0  # its loss drove the step
    assert "algorithm: gspo" in (run_dir / "config.yaml").read_text()


# ----- gradient accumulation in the loop's update ---------------------------------------------


@pytest.fixture(scope="module")
def one_batch(tmp_path_factory):
    """Roles and one scored, shaped batch of 8 responses (2 prompts x 4 samples), built once."""
    cfg = config(tmp_path_factory.mktemp("acc"), "configs/ppo-tiny.yaml", batch_size=2, samples_per_prompt=4,
                 mini_batch_size=8, micro_batch_size=8, ppo_epochs=1, max_new_tokens=12)
    device = resolve_device("cpu")
    seed_everything(0)
    roles = build_roles(cfg.model_settings, cfg.reward_settings, device, uses_critic=True)
    stream = PromptStream(resolve_prompts(cfg.prompts), roles.tokenizer, cfg.chat_template, cfg.max_prompt_tokens, 0)
    prompts, ids = stream.next_batch(cfg.batch_size, cfg.samples_per_prompt)
    rollout = generate_rollout(roles.policy, roles.tokenizer, prompts, ids, SamplingSettings(12), cfg.samples_per_prompt)
    assert rollout.response_lengths.min() < rollout.response_lengths.max()  # ragged: padding matters
    scored = score_rollout(roles, rollout, cfg, device)
    rewards, _ = shape_rewards(scored, cfg.kl_coef, True, "k1")
    # an advantage per token that is neither constant nor zero-mean, so that every weighting shows
    advantages = torch.randn(rewards.shape, generator=torch.Generator().manual_seed(1)) * rollout.response_mask
    returns = (rewards + 0.5) * rollout.response_mask
    batch = TrainBatch(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask,
                       scored.old_logprobs, scored.ref_logprobs, advantages, returns, scored.old_values)
    return cfg, roles, batch


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_micro_batches_give_the_same_update_as_one_minibatch(one_batch, aggregation):
    cfg, roles, batch = one_batch
    modules = [roles.policy, roles.critic]
    start = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    spec = algorithms.ALGORITHMS["ppo"]

    def update(micro: int) -> list[dict[str, torch.Tensor]]:
        for m, state in zip(modules, start):
            m.load_state_dict(state)
        c = dataclasses.replace(cfg, micro_batch_size=micro, loss_aggregation=aggregation, max_grad_norm=1e9)
        policy_params, critic_params = roles.trainable_groups()
        # plain SGD: the parameter change is the gradient itself (Adam's first step is ~sign(g),
        # which would hide a wrong scale)
        optimizer = torch.optim.SGD([{"params": policy_params}, {"params": critic_params}], lr=1.0)
        stats = run_updates(roles, batch, spec, c, optimizer, make_scheduler(optimizer, "constant", 0, 1),
                            kl_coef=0.1, kl_in_loss=True, device=torch.device("cpu"),
                            generator=torch.Generator().manual_seed(0))
        assert stats.steps == 1 and stats.skipped == 0
        return [{k: (m.state_dict()[k] - state[k]) for k in state} for m, state in zip(modules, start)]

    whole = update(8)
    for micro in (4, 2, 1):
        parts = update(micro)
        for ref_delta, delta in zip(whole, parts):
            moved = 0
            for name in ref_delta:
                assert torch.allclose(delta[name], ref_delta[name], atol=1e-6, rtol=1e-4), (aggregation, micro, name)
                moved += int(ref_delta[name].abs().max() > 0)
            assert moved > 0  # the update is not trivially zero
    for m, state in zip(modules, start):
        m.load_state_dict(state)


def test_critic_warm_up_weighs_every_term_but_the_value_loss_zero(one_batch):
    """With a shared critic the warm-up runs the policy's forward (the value head reads its
    hidden states), but only the value loss may move the backbone: the KL term in the loss too
    is weighed 0, so the total is exactly vf_coef times the value loss."""
    cfg, _, batch = one_batch
    shared = dataclasses.replace(cfg, critic="shared", max_grad_norm=1e9)
    roles = build_roles(shared.model_settings, shared.reward_settings, torch.device("cpu"), uses_critic=True)
    with torch.no_grad():  # a policy away from the reference, so that the KL term is not 0
        for p in roles.policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    policy_params, critic_params = roles.trainable_groups()
    optimizer = torch.optim.SGD([{"params": policy_params}, {"params": critic_params}], lr=0.0)
    stats = run_updates(roles, batch, algorithms.ALGORITHMS["ppo"], shared, optimizer,
                        make_scheduler(optimizer, "constant", 0, 1), kl_coef=0.5, kl_in_loss=True,
                        device=torch.device("cpu"), generator=torch.Generator().manual_seed(0), critic_only=True)
    means = stats.means()
    assert means["losses/kl_loss"] > 1e-4 and means["losses/policy_loss"] != 0.0
    assert means["losses/total_loss"] == pytest.approx(shared.vf_coef * means["losses/value_loss"], rel=1e-6)


def _update_stats(cfg, roles, batch, spec) -> dict[str, float]:
    """One update at learning rate 0 (the weights stay put): the mean of each logged term."""
    policy_params, critic_params = roles.trainable_groups()
    optimizer = torch.optim.SGD([{"params": policy_params}, {"params": critic_params}], lr=0.0)
    stats = run_updates(roles, batch, spec, cfg, optimizer, make_scheduler(optimizer, "constant", 0, 1), kl_coef=0.1,
                        kl_in_loss=True, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    return stats.means()


def test_the_entropy_bonus_is_one_loss_term(one_batch):
    """entropy_coef = c adds exactly -c·H̄ (the policy's token-mean entropy) to the loss; at 0 the
    term is absent and the loss is bitwise that of the row's other terms."""
    cfg, roles, batch = one_batch
    spec = algorithms.ALGORITHMS["ppo"]
    assert algorithms.entropy_term in spec.loss_terms  # every row has it: no row to edit
    without = dataclasses.replace(spec, loss_terms=tuple(t for t in spec.loss_terms if t is not algorithms.entropy_term))
    off = _update_stats(cfg, roles, batch, spec)
    assert "losses/entropy" not in off  # not computed at 0
    assert off["losses/total_loss"] == _update_stats(cfg, roles, batch, without)["losses/total_loss"]
    with pytest.raises(ConfigError, match="entropy_coef"):
        dataclasses.replace(cfg, entropy_coef=-0.1)
    on = _update_stats(dataclasses.replace(cfg, entropy_coef=0.5), roles, batch, spec)
    assert 0.1 < on["losses/entropy"] < math.log(len(roles.tokenizer))  # nats, below uniform's
    assert on["losses/total_loss"] == pytest.approx(off["losses/total_loss"] - 0.5 * on["losses/entropy"], abs=1e-6)
    assert on["losses/policy_loss"] == off["losses/policy_loss"]  # the other terms are untouched
    assert on["optim/grad_norm"] != off["optim/grad_norm"]  # and its gradient reaches the policy


# ----- tether compare ---------------------------------------------------------------------------


def test_compare_overlays_a_ppo_and_a_grpo_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    ppo = train_ppo(config(tmp_path, "configs/ppo-tiny.yaml", run_name="ppo", total_iterations=4))
    grpo = train_ppo(config(tmp_path, "configs/grpo-tiny.yaml", run_name="grpo", total_iterations=4))
    out = tmp_path / "compare.png"
    assert tether_main(["compare", str(ppo), str(grpo), "--out", str(out), "--labels", "PPO", "GRPO"]) == 0
    assert out.exists() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
