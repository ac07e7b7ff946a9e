"""The doctor's rules on synthetic metric traces: each failure mode is a healthy trace with one
signal broken, and each must be named, with the iterations in its evidence; the healthy trace
(with or without a critic, short or long) must give no finding at all."""

from __future__ import annotations

import pytest

from tether.diagnostics import LiveDoctor, Thresholds, diagnose
from tether.diagnostics.rules_reward import repetition_rate
from tether.diagnostics.synthetic import drop_metrics, healthy_metrics, healthy_samples, set_metric, unstable_metrics

N = 60


def rules_of(findings):
    return {f.rule: f for f in findings}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [12, 60, 200])
@pytest.mark.parametrize("critic", [True, False])
def test_healthy_trace_has_no_finding(seed, n, critic):
    rows, samples = healthy_metrics(n, seed=seed, critic=critic), healthy_samples(n, seed=seed)
    assert diagnose(rows, samples, cleared=False) == []
    # nor did the live doctor warn on the way (no finding cleared since). Not asked of the
    # 200-iteration trace: its shapes stretch with the run, so its first 20 iterations are a far
    # slower start (KL 0.5 nats at iteration 19, the critic still warming up at 13) than real runs
    if n <= 60:
        assert diagnose(rows, samples) == []


def test_rules_skip_silently_when_metrics_are_absent():
    # a run that logs only a score (a custom loop) and an empty run: no rule may raise
    only_score = [{"iteration": i, "objective/score_mean": 0.1 * i} for i in range(30)]
    assert diagnose(only_score) == []
    assert diagnose([]) == []
    assert diagnose([{"iteration": 0}]) == []


def test_dpo_trace_gives_no_ppo_findings():
    rows = [
        {"iteration": i, "rewards/accuracy": 0.5 + 0.4 * i / 39, "rewards/margin": 0.1 * i,
         "rewards/chosen": 0.05 * i, "rewards/rejected": -0.05 * i, "logps/chosen": -80 - 0.02 * i,
         "logps/rejected": -82 - 0.2 * i, "losses/total_loss": 0.69 - 0.01 * i}
        for i in range(40)
    ]  # fmt: skip
    assert diagnose(rows) == []


def broken(key, value, iterations=None, *, n=N, critic=True):
    return set_metric(healthy_metrics(n, critic=critic), key, value, iterations)


def both(rows, *edits):
    for key, value, iterations in edits:
        rows = set_metric(rows, key, value, iterations)
    return rows


# (case id, metrics rows, expected rule, expected severity, an iteration the evidence must cite)
CASES = [
    # RLHF objective exercise: β set very high -> coherent, safe, barely improved, mediocre scores
    ("beta_too_high",
     both(healthy_metrics(N), ("objective/kl_k3", lambda i, v: 0.05, None), ("objective/kl_k1", lambda i, v: 0.04, None),
          ("objective/score_mean", lambda i, v: 0.02 + 0.001 * i, None), ("objective/kl_coef", lambda i, v: 1.0, None)),
     "beta_too_high", "warning", "59"),
    ("approx_kl_high", broken("policy/approx_kl", lambda i, v: 0.5, range(20, 23)), "approx_kl_high", "warning", "20"),
    ("clipfrac_high", broken("policy/clipfrac", lambda i, v: 0.45, range(30, 40)), "clipfrac_high", "warning", "30"),
    ("ratio_mean_off", broken("policy/ratio_mean", lambda i, v: 1.6, range(25, 27)), "ratio_blowup", "critical", "25"),
    ("ratio_max_high", broken("policy/ratio_max", lambda i, v: 50.0, range(25, 26)), "ratio_blowup", "warning", "25"),
    ("value_loss_spike", broken("losses/value_loss", lambda i, v: v * 50, range(30, 31)), "loss_spike", "warning", "30"),
    ("grad_norm_spike", broken("optim/grad_norm", lambda i, v: 40.0, range(41, 42)), "loss_spike", "warning", "41"),
    # PPO objective exercise: "after a few successful updates, a single large update ... degrade significantly"
    ("collapse_after_large_update",
     both(healthy_metrics(N), ("objective/score_mean", lambda i, v: v - 2.5, range(35, N)),
          ("policy/approx_kl", lambda i, v: 0.4, range(34, 35))),
     "score_collapse", "critical", "35"),
    ("collapse_alone", broken("objective/score_mean", lambda i, v: v - 2.5, range(35, N)), "score_collapse", "warning", "35"),
    # PPO objective exercise: reward hacking: the proxy climbs while the gold score falls
    ("reward_hacking",
     broken("eval/gold_score_mean", lambda i, v: ... if v is None else v if i <= 30 else 0.7 - 0.02 * (i - 30), None),
     "reward_hacking", "critical", "30"),
    ("length_explosion", broken("rollout/response_length", lambda i, v: 40 + 3 * i), "length_explosion", "warning", "59"),
    ("kl_runaway", both(healthy_metrics(N), ("objective/kl_k3", lambda i, v: 0.5 * i, None)), "kl_runaway", "warning", "59"),
    ("kl_fast", both(healthy_metrics(N), ("objective/kl_k3", lambda i, v: v if i < 50 else 14.0, None)), "kl_runaway", "warning", "50"),
    # RLHF-with-PPO process exercise: the value function's predictions consistently inaccurate
    ("critic_not_learning", broken("value/explained_variance", lambda i, v: -0.3 + 0.01 * (i % 3)), "critic_not_learning", "warning", "59"),
    ("critic_wired_wrong", broken("value/explained_variance", lambda i, v: -2.0), "critic_not_learning", "critical", "59"),
    ("value_loss_growing", broken("losses/value_loss", lambda i, v: 0.1 + 0.03 * i), "value_loss_growing", "warning", "59"),
    ("entropy_collapse", broken("policy/entropy", lambda i, v: max(0.05, 2.0 - 0.04 * i)), "entropy_collapse", "warning", "59"),
    ("entropy_explosion", broken("policy/entropy", lambda i, v: 2.0 + 0.1 * i), "entropy_explosion", "warning", "59"),
    ("negative_kl", broken("objective/kl_k1", lambda i, v: -0.5, range(20, 30)), "negative_kl", "warning", "20"),
    ("missing_eos", broken("rollout/eos_fraction", lambda i, v: 0.3), "missing_eos", "warning", "59"),
    ("score_saturation", broken("objective/score_std", lambda i, v: v if i < 30 else 0.01), "score_saturation", "warning", "59"),
    ("non_finite", broken("losses/value_loss", lambda i, v: None, range(12, 13)), "non_finite", "critical", "12"),
    ("skipped_updates", broken("guard/skipped_updates", lambda i, v: 0 if i < 44 else 1), "skipped_updates", "warning", "44"),
    ("dpo_no_progress", [{"iteration": i, "rewards/accuracy": 0.5} for i in range(30)], "dpo_no_progress", "warning", "29"),
    ("dpo_chosen_falling", [{"iteration": i, "logps/chosen": -80 - 0.5 * i, "rewards/accuracy": 0.8} for i in range(30)],
     "dpo_chosen_falling", "info", "29"),
]  # fmt: skip


ALSO_EXPECTED = {"collapse_after_large_update": {"approx_kl_high"}}


@pytest.mark.parametrize("case, rows, rule, severity, iteration", CASES, ids=[c[0] for c in CASES])
def test_each_failure_mode_is_named(case, rows, rule, severity, iteration):
    found = rules_of(diagnose(rows))
    assert rule in found, f"{case}: got {sorted(found)}"
    # one broken signal, one diagnosis: no cascade of unrelated findings
    assert set(found) <= {rule, *ALSO_EXPECTED.get(case, ())}, f"{case}: got {sorted(found)}"
    finding = found[rule]
    assert finding.severity == severity
    assert iteration in finding.evidence and int(iteration) in finding.iterations
    assert finding.cause and finding.fix and finding.title


def test_beta_too_high_says_when_the_optimiser_is_not_moving_either():
    rows = both(CASES[0][1], ("policy/approx_kl", lambda i, v: 0.0, None))
    finding = rules_of(diagnose(rows))["beta_too_high"]
    assert "learning rate" in finding.cause


def test_critic_rules_skip_for_critic_free_runs():
    # GRPO/RLOO runs log no value/* keys: the critic rules must not fire nor fail
    rows = drop_metrics(broken("value/explained_variance", lambda i, v: -2.0), "value/")
    assert "critic_not_learning" not in rules_of(diagnose(rows))


def test_repetition_from_samples():
    samples = healthy_samples(N)
    for row in samples:
        if row["iteration"] >= 50:
            row["response"] = "great answer " * 20
    found = rules_of(diagnose(healthy_metrics(N), samples))
    assert "repetition" in found and "50" in found["repetition"].evidence
    # 3-grams of "a b a b a": (a b a), (b a b), (a b a) -> one repeat in three
    assert repetition_rate("a b a b a") == pytest.approx(1 / 3)


def test_missing_eos_falls_back_to_samples():
    rows = drop_metrics(healthy_metrics(N), "rollout/eos_fraction")
    samples = [{**row, "ended_with_eos": row["iteration"] < 20} for row in healthy_samples(N)]
    assert "missing_eos" in rules_of(diagnose(rows, samples))


def test_thresholds_are_tunable():
    rows = broken("policy/clipfrac", lambda i, v: 0.25, range(30, 40))
    assert "clipfrac_high" not in rules_of(diagnose(rows))
    assert "clipfrac_high" in rules_of(diagnose(rows, thresholds=Thresholds(clipfrac_high=0.2)))


def test_findings_are_sorted_worst_first():
    rows = both(healthy_metrics(N), ("policy/clipfrac", lambda i, v: 0.45, range(30, 40)),
                ("losses/value_loss", lambda i, v: None, range(50, 51)))  # fmt: skip
    severities = [f.severity for f in diagnose(rows)]
    assert severities == sorted(severities, key=["critical", "warning", "info"].index)


def test_an_unstable_run_is_a_kl_runaway_not_beta_too_high():
    # one update far outside the trust region (approx_kl 6 nats/token at iteration 1) throws
    # the policy 56 nats from π_ref; the score spread collapses to 0, so β·KL = 0.03 × 56 = 1.7
    # "dwarfs" it, but the policy has plainly left the reference: not β's doing
    found = rules_of(diagnose(unstable_metrics(kl=56.0, dip=0.3), cleared=False))
    assert "beta_too_high" not in found, found["beta_too_high"].evidence
    runaway = found["kl_runaway"]
    assert "trust region" in runaway.title and "learning rate" in runaway.fix.lower()
    assert 1 in runaway.iterations and "55.7" in runaway.evidence  # the jump, and the latest level
    assert {"approx_kl_high", "ratio_blowup"} <= set(found)


def test_kl_runaway_is_not_fooled_by_a_small_dip():
    # a KL far above the ceiling whose last window is 0.3 nats lower than the one before is not
    # "coming back down"; one that fell by a third is
    def kl_level(last_window):
        return both(healthy_metrics(N), ("objective/kl_k3", lambda i, v: last_window if i >= N - 10 else 30.0, None))
    assert "kl_runaway" in rules_of(diagnose(kl_level(29.7), cleared=False))
    assert "kl_runaway" not in rules_of(diagnose(kl_level(20.0), cleared=False))


def test_beta_too_high_never_fires_when_the_kl_is_large():
    # the beta_too_high case (β = 1, flat score) with the KL at 12 nats, above the advisory
    # ceiling: β·KL still "dominates" the score, yet the policy is far from the reference
    rows = set_metric(CASES[0][1], "objective/kl_k3", lambda i, v: 12.0)
    assert "beta_too_high" not in rules_of(diagnose(rows, cleared=False))
    # and with no update outside the trust region, kl_runaway names it
    assert "kl_runaway" in rules_of(diagnose(rows, cleared=False))


def test_the_offline_doctor_accounts_for_every_live_warning():
    # the live doctor judges the iterations seen so far: responses that learn to end with EOS
    # after iteration 15 and a critic that catches up after 25 make it warn early; on the whole
    # run both rules are quiet. The offline diagnosis must still name both, as cleared.
    rows = both(healthy_metrics(N), ("rollout/eos_fraction", lambda i, v: 0.3 if i < 15 else 1.0, None),
                ("value/explained_variance", lambda i, v: -0.5 if i < 25 else v, None))
    live = LiveDoctor()
    reported = {(f.rule, i) for i, row in enumerate(rows) for f in live.update(i, row)}
    assert {rule for rule, _ in reported} == {"missing_eos", "critic_not_learning"}
    assert diagnose(rows, cleared=False) == []
    found = rules_of(diagnose(rows))
    for rule, iteration in reported:
        assert found[rule].severity == "info"
        assert "Cleared by the end" in found[rule].title and f"at iteration {iteration}" in found[rule].title
