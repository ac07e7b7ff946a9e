"""The doctor on real runs of the tiny model with a failure induced on purpose: it names the
right failure in each, and nothing alarming on the default config."""

import pytest

from tether.config import load_config
from tether.diagnostics import diagnose_run
from tether.train.ppo import train_ppo
from tether.train.ppo_config import PPOConfig

pytestmark = pytest.mark.slow

INDUCED = {
    "default": ([], set()),
    "beta_10": (["kl_coef=10"], {"beta_too_high"}),
    # a step far outside the trust region shows in all three update-size rules from the first
    # update on (approx_kl ≈ 1.9 nats/token, clipfrac ≈ 0.4, ρ up to ≈ 11 at iteration 1)
    "lr_x100": (["learning_rate=0.1"], {"approx_kl_high", "clipfrac_high", "ratio_blowup"}),
    "value_lr_0": (["critic_learning_rate=0"], {"critic_not_learning"}),
    # (the tiny config scores cut-off responses 0, which would undo the length hack: switched off)
    "pays_for_length": (["reward_function=tether.rollout.rules:length_reward", "missing_eos_penalty=null"],
                        {"length_explosion"}),
}


@pytest.mark.parametrize("name", list(INDUCED))
def test_doctor_names_the_induced_failure(tmp_path, name):
    overrides, expected = INDUCED[name]
    config = load_config(PPOConfig, "configs/ppo-tiny.yaml",
                         [f"output_dir={tmp_path}", "quiet=true", f"run_name={name}", *overrides])
    findings = diagnose_run(train_ppo(config))
    rules = {f.rule for f in findings}
    if not expected:
        assert not [f for f in findings if f.severity in ("warning", "critical")], findings
    else:
        assert expected <= rules, (name, rules)  # every rule the failure is named by fires
    if name == "lr_x100":
        first_flagged = {f.rule: f.iterations[0] for f in findings}
        assert all(first_flagged[rule] == 1 for rule in expected), first_flagged
