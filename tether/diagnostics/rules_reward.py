"""Rules about what the policy is optimising: KL to the reference, the score, reward hacking,
the shape of the responses, and DPO's implicit rewards. Same contract as rules_update.py."""

from __future__ import annotations

from tether.diagnostics.findings import Finding
from tether.diagnostics.rules_update import SCORE, oversized_updates, score_scale
from tether.diagnostics.thresholds import Thresholds
from tether.diagnostics.trace import RunTrace, Series, ends, fmt, fmt_iterations, mean, window_size

# k3 first: non-negative and lower-variance (Schulman, "Approximating KL divergence")
KL_KEYS = ("objective/kl_k3", "objective/kl_k1")
GOLD_KEYS = ("eval/gold_score_mean", "eval/score_mean")


def beta_too_high(trace: RunTrace, t: Thresholds) -> Finding | None:
    kl = trace.get(*KL_KEYS, min_points=t.beta_min_iterations)
    score = trace.get(SCORE, min_points=t.beta_min_iterations)
    if kl is None or score is None:
        return None
    w = window_size(len(score), t.window)
    recent_kl = kl.tail(w).mean()
    if recent_kl >= t.kl_high:  # far from π_ref: whatever is wrong, β is not holding the policy back
        return None
    first, recent = score.head(w), score.tail(w)
    scale = score_scale(trace)
    gain = recent.mean() - first.mean()
    beta = trace.get("objective/kl_coef")
    recent_beta = beta.tail(w).mean() if beta is not None else None
    # The policy may drift a little under a huge β (noisy advantages), so "KL ≈ 0" is one sign;
    # the other is a penalty β·KL that dwarfs anything the reward can pay. Not when an update left
    # the trust region: then the KL was thrown there by instability (kl_runaway, approx_kl_high
    # and ratio_blowup name it), and a collapsed score spread makes any penalty look dominant.
    penalty_dominates = (recent_beta is not None and recent_beta * recent_kl > t.penalty_dominance * scale
                         and not oversized_updates(trace, t))
    if (recent_kl >= t.kl_floor and not penalty_dominates) or gain >= t.flat_score_gain * scale:
        return None
    approx = trace.get("policy/approx_kl")
    moving = approx is not None and approx.mean() > 1e-4
    kl_clause = (f"< {fmt(t.kl_floor)}" if recent_kl < t.kl_floor else
                 f"penalty β·KL = {fmt(recent_beta * recent_kl)} > {fmt(t.penalty_dominance)} × score std {fmt(scale)}")
    evidence = (
        f"{trace.key(*KL_KEYS)} averaged {fmt(recent_kl)} nats over iterations {kl.tail(w).span()} "
        f"({kl_clause}); {SCORE} went {fmt(first.mean())} → {fmt(recent.mean())} "
        f"(gain {fmt(gain)} < {fmt(t.flat_score_gain)} × batch std {fmt(scale)})"
    )
    if beta is not None:
        evidence += f"; β (objective/kl_coef) = {fmt(beta.tail(w).mean())}"
    if approx is not None:
        evidence += f"; policy/approx_kl mean {fmt(approx.mean())}"
    cause = (
        "The KL penalty dominates the objective: every step away from π_ref costs more than the reward "
        "it buys, so the policy stays coherent and safe but barely improves, with mediocre scores: "
        "the classic sign of β set too high."
    )
    if not moving and approx is not None:
        cause += " policy/approx_kl is ≈ 0 as well, so the optimiser barely moves the policy at all: " "check the learning rate and that the policy's parameters receive gradients."
    return Finding(
        rule="beta_too_high",
        severity="warning",
        title="β too high: the policy is not leaving the reference",
        evidence=evidence,
        cause=cause,
        fix="Lower β (kl_coef) by 5-10x, or use the adaptive KL controller with a target KL (e.g. 6 "
        "nats, Ziegler et al. 2019); check the reward model is normalised, since a reward with a tiny "
        "scale makes any β too high.",
        iterations=list(recent.iterations),
        metrics=(trace.key(*KL_KEYS) or KL_KEYS[0], SCORE, "objective/kl_coef"),
    )


def reward_hacking_gold(trace: RunTrace, t: Thresholds) -> Finding | None:
    gold = trace.get(*GOLD_KEYS, min_points=3)
    score = trace.get(SCORE, min_points=t.min_iterations)
    if gold is None or score is None:
        return None
    best_k = max(range(len(gold)), key=lambda k: gold.values[k])
    if len(gold) - best_k < 3:  # need two evaluations after the best to call it a decline
        return None
    best_it, best = gold.iterations[best_k], gold.values[best_k]
    latest_it, latest = gold.iterations[-1], gold.values[-1]
    scale = score_scale(trace)
    w = window_size(len(score), t.window)
    at_best = score.between(best_it - w // 2, best_it + w // 2 + 1).mean()
    proxy_now = score.tail(w).mean()
    if best - latest < t.gold_drop * scale or proxy_now - at_best < t.proxy_rise * scale:
        return None
    key = trace.key(*GOLD_KEYS)
    return Finding(
        rule="reward_hacking",
        severity="critical",
        title="Reward hacking: the proxy score rises while the held-out score falls",
        evidence=(
            f"{key} peaked at {fmt(best)} (iteration {best_it}) and fell to {fmt(latest)} (iteration "
            f"{latest_it}); over the same span {SCORE} rose {fmt(at_best)} → {fmt(proxy_now)}"
        ),
        cause="The policy exploits the reward model's blind spots (over-optimisation, Gao et al. 2022): "
        "β too low for this reward model, or the reward model trained on too little or too narrow data.",
        fix=f"Take the checkpoint near iteration {best_it}; raise β or set a KL target; retrain the "
        "reward model with samples from the current policy; add a length penalty if responses grew.",
        iterations=[i for i in gold.iterations if i >= best_it],
        metrics=(key or GOLD_KEYS[0], SCORE),
    )


def length_explosion(trace: RunTrace, t: Thresholds) -> Finding | None:
    e = ends(trace.get("rollout/response_length", min_points=t.min_iterations), t.window)
    if e is None:
        return None
    w, first, recent = e.width, e.first, e.recent
    eos = trace.get("rollout/eos_fraction", min_points=t.min_iterations)
    # Length cannot double when max_new_tokens caps it: then the sign is that responses grew and
    # now all run into the cap (EOS fraction collapsed).
    pinned = eos is not None and eos.tail(w).mean() < t.capped_eos_fraction <= eos.head(3).mean() + 1e-9
    if pinned:
        first = e.series.head(3).mean()  # the rise to the cap is fast: compare with the very start
    if first <= 0 or recent < (t.capped_length_growth if pinned else t.length_growth) * first:
        return None
    evidence = (f"rollout/response_length grew from {fmt(first)} tokens (iterations {e.start.span()}) "
                f"to {fmt(recent)} (iterations {e.end.span()}), {fmt(recent / first)}x")
    if pinned:
        evidence += f"; rollout/eos_fraction fell to {fmt(eos.tail(w).mean())}: responses now run into max_new_tokens"
    return Finding(
        rule="length_explosion",
        severity="warning",
        title="Responses are getting much longer",
        evidence=evidence,
        cause="Reward models trained on human preferences often favour longer answers; the policy "
        "exploits it (a common form of reward hacking, Singhal et al. 2023).",
        fix="Raise β, add a length penalty or length-normalise the score, cap max_new_tokens, and read "
        "the latest samples to check the extra length carries content.",
        iterations=list(e.end.iterations),
        metrics=("rollout/response_length",),
    )


def repetition_rate(text: str, n: int = 3) -> float:
    """Fraction of word n-grams that repeat an earlier one in the same response."""
    words = str(text).split()
    grams = [tuple(words[k : k + n]) for k in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def repetition(trace: RunTrace, t: Thresholds) -> Finding | None:
    by_iteration: dict[int, list[float]] = {}
    for row in trace.samples:
        if "response" in row and isinstance(row.get("iteration"), int):
            by_iteration.setdefault(row["iteration"], []).append(repetition_rate(row["response"]))
    if len(by_iteration) < 2:
        return None
    its = sorted(by_iteration)
    w = window_size(len(its), t.window)
    first = mean(by_iteration[its[0]])
    recent_its = its[-w:]
    recent = mean(v for i in recent_its for v in by_iteration[i])
    if recent < t.repetition_high or recent - first < t.repetition_rise:
        return None
    return Finding(
        rule="repetition",
        severity="warning",
        title="Responses are turning repetitive",
        evidence=f"repeated word 3-grams in samples: {fmt(first)} at iteration {its[0]} → {fmt(recent)} "
        f"over iterations {recent_its[0]}-{recent_its[-1]}",
        cause="The policy found that repeating a phrase the reward model likes raises the score: reward "
        "hacking, repetitive or nonsensical text that exploits a flaw of the reward model.",
        fix="Raise β, lower the learning rate, retrain the reward model with these degenerate samples "
        "labelled as losers, or add a repetition penalty to the score.",
        iterations=recent_its,
        metrics=(),  # a property of samples.jsonl, not of a logged metric
    )


def kl_runaway(trace: RunTrace, t: Thresholds) -> Finding | None:
    e = ends(trace.get(*KL_KEYS, min_points=t.min_iterations), t.window)
    if e is None:
        return None
    kl, w, recent = e.series, e.width, e.end
    previous = Series(kl.iterations[-2 * w : -w], kl.values[-2 * w : -w])
    now, before = recent.mean(), previous.mean() if len(previous) else float("nan")
    # "coming back down" is a fall of kl_recovery of the previous level: a dip of a few tenths of a
    # nat between windows of a KL of tens of nats is noise, not a recovery
    falling = now < (1 - t.kl_recovery) * before
    too_high = now > t.kl_high and not falling
    too_fast = now > t.kl_fast_floor and before > 0 and now > t.kl_fast_growth * before
    if not (too_high or too_fast):
        return None
    key = trace.key(*KL_KEYS)
    jumps = oversized_updates(trace, t)
    evidence = (f"{key} averaged {fmt(now)} nats over iterations {recent.span()} (previous {len(previous)}: "
                f"{fmt(before)}; lowest window of the run {fmt(min_window_mean(kl, w))}; advisory ceiling {fmt(t.kl_high)})")
    cause = ("The policy drifts far from π_ref, where the reward model's scores stop meaning much: β too "
             "low for this reward model or learning rate too high; the drift opens the way to reward hacking.")
    fix = ("Raise β or switch to the adaptive KL controller with a target of a few nats; compare "
           "samples with the reference's; watch eval/gold scores for a decline.")
    if jumps:  # the KL was thrown there by updates outside the trust region: an unstable run
        evidence += f"; updates left the trust region (approx_kl, clipfrac or ratio_max) at iteration(s) {fmt_iterations(jumps)}"
        cause = ("Unstable optimisation: updates far outside PPO's trust region threw the policy away from "
                 "π_ref, and no β can pull it back from there. The learning rate (or the number of PPO "
                 "epochs) is too high for this run.")
        fix = "Lower the learning rate (10x or more for a jump like this), use fewer PPO epochs, clip gradients; then " + fix[0].lower() + fix[1:]
    return Finding(
        rule="kl_runaway",
        severity="warning",
        title=("KL to the reference ran away" if too_high else "KL to the reference is growing fast")
        + (" after updates outside the trust region" if jumps else ""),
        evidence=evidence,
        cause=cause,
        fix=fix,
        iterations=sorted(set(recent.iterations) | set(jumps)),
        metrics=(key or KL_KEYS[0], "objective/kl_coef", "policy/approx_kl"),
    )


def min_window_mean(s: Series, w: int) -> float:
    """The lowest mean of ``w`` consecutive points: the run's KL floor, for evidence strings."""
    return min(mean(s.values[k : k + w]) for k in range(len(s) - w + 1))


def negative_kl(trace: RunTrace, t: Thresholds) -> Finding | None:
    s = trace.get("objective/kl_k1", min_points=t.kl_negative_window)
    if s is None:
        return None
    n = t.kl_negative_window
    bad: set[int] = set()
    worst = 0.0
    for k in range(len(s) - n + 1):
        m = mean(s.values[k : k + n])
        if m < -t.kl_negative_tol:
            bad.update(i for i, v in zip(s.iterations[k : k + n], s.values[k : k + n]) if v < 0)
            worst = min(worst, m)
    if not bad:
        return None
    return Finding(
        rule="negative_kl",
        severity="warning",
        title="Sample-based KL (k1) is negative",
        evidence=f"objective/kl_k1 averaged as low as {fmt(worst)} over {n} iterations; negative at "
        f"{fmt_iterations(sorted(bad))}",
        cause="A true KL is never negative; a persistently negative k1 means the responses were not "
        "sampled from the policy whose log-probs are scored: generation settings that reshape the "
        "distribution (top-k/top-p, min_new_tokens suppressing EOS, repetition penalty), a temperature "
        "mismatch, or misaligned masks. The KL penalty then *rewards* drifting (TRL training FAQ).",
        fix="Sample with plain temperature sampling (top_k=0, top_p=1, no min length); compute log-probs "
        "from logits / temperature; check the response mask; report k3 beside k1.",
        iterations=sorted(bad),
        metrics=("objective/kl_k1",),
    )


def missing_eos(trace: RunTrace, t: Thresholds) -> Finding | None:
    s = trace.get("rollout/eos_fraction") or _eos_from_samples(trace)
    if s is None or not len(s):
        return None
    e = ends(s, t.window)
    recent = e.end
    if recent.mean() >= t.eos_min:
        return None
    return Finding(
        rule="missing_eos",
        severity="warning",
        title="Many responses do not end with EOS",
        evidence=f"fraction ending in EOS averaged {fmt(recent.mean())} over iterations {recent.span()} "
        f"(< {fmt(t.eos_min)}; first iterations {fmt(e.first)})",
        cause="max_new_tokens too small for the task, a wrong eos_token_id or chat template, or the "
        "policy learned to ramble (length hacking). Truncated responses get scored mid-sentence.",
        fix="Raise max_new_tokens, check the tokenizer's EOS id and the chat template, and penalise "
        "responses without EOS with a fixed negative score (Huang et al. 2024).",
        iterations=list(recent.iterations),
        metrics=("rollout/eos_fraction",),
    )


def _eos_from_samples(trace: RunTrace) -> Series | None:
    by_it: dict[int, list[float]] = {}
    for row in trace.samples:
        if isinstance(row.get("ended_with_eos"), bool) and isinstance(row.get("iteration"), int):
            by_it.setdefault(row["iteration"], []).append(float(row["ended_with_eos"]))
    if not by_it:
        return None
    its = sorted(by_it)
    return Series(tuple(its), tuple(mean(by_it[i]) for i in its))


def score_saturation(trace: RunTrace, t: Thresholds) -> Finding | None:
    e = ends(trace.get("objective/score_std", min_points=t.min_iterations), t.window)
    if e is None or e.first <= 0 or e.recent >= t.saturation_std * e.first:
        return None
    return Finding(
        rule="score_saturation",
        severity="warning",
        title="Scores saturated: every response gets the same score",
        evidence=f"objective/score_std fell from {fmt(e.first)} to {fmt(e.recent)} over iterations "
        f"{e.end.span()}",
        cause="The reward model gives (nearly) the same score to every response, so advantages carry "
        "no signal: a bounded reward (a probability near 1) at its ceiling, or a policy collapsed onto "
        "one answer.",
        fix="Use the reward model's logit rather than a probability, harder prompts, or stop: there is "
        "nothing left to learn from this reward.",
        iterations=list(e.end.iterations),
        metrics=("objective/score_std", SCORE),
    )


def dpo_no_progress(trace: RunTrace, t: Thresholds) -> Finding | None:
    e = ends(trace.get("rewards/accuracy", min_points=t.min_iterations), t.window)
    if e is None or e.recent > t.dpo_accuracy_min:
        return None
    recent = e.end
    return Finding(
        rule="dpo_no_progress",
        severity="warning",
        title="DPO preference accuracy stays at chance",
        evidence=f"rewards/accuracy averaged {fmt(recent.mean())} over iterations {recent.span()}",
        cause="The implicit reward does not separate chosen from rejected: learning rate too low, β too "
        "high, labels swapped, or chosen/rejected log-probs computed over the prompt too.",
        fix="Check a few pairs by hand (chosen really preferred?), mask the prompt tokens, raise the "
        "learning rate, lower β (0.1 is the usual default).",
        iterations=list(recent.iterations),
        metrics=("rewards/accuracy", "rewards/margin"),
    )


def dpo_chosen_falling(trace: RunTrace, t: Thresholds) -> Finding | None:
    e = ends(trace.get("logps/chosen", min_points=t.min_iterations), t.window)
    if e is None or e.first - e.recent < t.dpo_chosen_drop:
        return None
    return Finding(
        rule="dpo_chosen_falling",
        severity="info",
        title="DPO lowers the likelihood of the chosen responses too",
        evidence=f"logps/chosen fell from {fmt(e.first)} to {fmt(e.recent)} nats (iterations {e.end.span()})",
        cause="DPO only widens the margin; it can do so by pushing both responses down (likelihood "
        "displacement, Razin et al. 2024), which drifts probability mass to unseen outputs.",
        fix="Lower the learning rate or train fewer epochs; add an SFT term on the chosen responses "
        "(RPO / DPOP); check samples for drift.",
        iterations=list(e.end.iterations),
        metrics=("logps/chosen", "logps/rejected"),
    )


def reward_model_at_chance(trace: RunTrace, t: Thresholds) -> Finding | None:
    """A reward-model run (train-rm) whose held-out accuracy is not above chance: the 95%
    interval over held-out prompts, logged once at the end, reaches 50%."""
    learned, low = trace.get("eval/rm_learned"), trace.get("eval/accuracy_ci_low")
    if learned is None or low is None or learned.values[-1] > 0:
        return None
    accuracy = trace.get("eval/final_accuracy")
    high = trace.get("eval/accuracy_ci_high")
    shown = fmt(accuracy.values[-1]) if accuracy is not None else "?"
    return Finding(
        rule="reward_model_at_chance",
        severity="warning",
        title="the reward model's held-out accuracy is not above chance",
        evidence=f"held-out accuracy {shown}, 95% interval over held-out prompts [{fmt(low.values[-1])}, "
        f"{fmt(high.values[-1]) if high is not None else '?'}]: not wholly above 0.5 (or from too few "
        "held-out prompts to tell)",
        cause="Too few comparisons, too many ties (they order nothing and are left out), labels that "
        "contradict each other, or a taste the backbone cannot see in the text.",
        fix="Label more prompts (several responses per prompt give several comparisons each), make the "
        "labeler decide more pairs, check a few labels by hand, or train longer (epochs, learning_rate); "
        "do not run PPO on this reward model: it would steer the policy by noise.",
        iterations=list(low.iterations),
        metrics=("eval/final_accuracy", "eval/accuracy_ci_low"),
    )
