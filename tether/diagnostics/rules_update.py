"""Rules about the optimisation itself: update size, spikes, collapse, critic, entropy.

Each rule is ``rule(trace, t) -> Finding | None``: it reads only the metrics it needs and
returns None when they are absent (critic-free algorithms log no ``value/*``), when the run
is too short to tell, or when all is well.
"""

from __future__ import annotations

from tether.diagnostics.findings import Finding
from tether.diagnostics.thresholds import Thresholds
from tether.diagnostics.trace import RunTrace, ends, fmt, fmt_iterations, mean, median, robust_spikes, window_size

SCORE = "objective/score_mean"
APPROX_KL = "policy/approx_kl"
CLIPFRAC = "policy/clipfrac"


def score_scale(trace: RunTrace, start: int | None = None, stop: int | None = None) -> float:
    """The batch standard deviation of the score (mean over [start, stop) if given): the
    yardstick for "how big is this score change". 1.0 when not logged: tether normalises
    reward models to unit scale on reference samples."""
    std = trace.get("objective/score_std")
    if std is None:
        return 1.0
    part = std.between(start, stop) if start is not None and stop is not None else std
    value = part.mean() if len(part) else std.mean()
    return value if value > 1e-6 else 1.0


def oversized_updates(trace: RunTrace, t: Thresholds) -> list[int]:
    """Iterations whose update left PPO's trust region by the absolute thresholds (approx_kl,
    clipfrac, ratio_max): where a large KL to the reference comes from instability, not from β."""
    hits: set[int] = set()
    for key, limit in ((APPROX_KL, t.approx_kl_high), (CLIPFRAC, t.clipfrac_high), ("policy/ratio_max", t.ratio_max_high)):
        s = trace.get(key)
        if s is not None:
            hits.update(i for i, _ in s.above(limit))
    return sorted(hits)


def approx_kl_high(trace: RunTrace, t: Thresholds) -> Finding | None:
    s = trace.get(APPROX_KL)
    if s is None:
        return None
    hits = s.above(t.approx_kl_high)
    if not hits:
        return None
    worst = max(hits, key=lambda p: p[1])
    return Finding(
        rule="approx_kl_high",
        severity="warning",
        title="Policy updates far larger than PPO's trust region",
        evidence=(
            f"{APPROX_KL} exceeded {fmt(t.approx_kl_high)} nats/token at {len(hits)} iteration(s): "
            f"{fmt_iterations([i for i, _ in hits])}; worst {fmt(worst[1])} at iteration {worst[0]} "
            f"(run median {fmt(median(s.values))})"
        ),
        cause="Each iteration moves π_θ far from the π_old that sampled the batch: learning rate too "
        "high, too many PPO epochs or too small minibatches over the same batch, or advantages "
        "not whitened.",
        fix="Lower the learning rate (÷3), use fewer PPO epochs, whiten advantages, or stop the "
        "epoch loop early when approx_kl exceeds a target (Spinning Up's target_kl ≈ 0.01-0.05).",
        iterations=[i for i, _ in hits],
        metrics=(APPROX_KL,),
    )


def clipfrac_high(trace: RunTrace, t: Thresholds) -> Finding | None:
    s = trace.get(CLIPFRAC)
    if s is None:
        return None
    hits = s.above(t.clipfrac_high)
    if not hits:
        return None
    return Finding(
        rule="clipfrac_high",
        severity="warning",
        title="PPO clips a large share of tokens",
        evidence=(
            f"{CLIPFRAC} above {fmt(t.clipfrac_high)} at {len(hits)} iteration(s): "
            f"{fmt_iterations([i for i, _ in hits])}; max {fmt(max(v for _, v in hits))}"
        ),
        cause="The ratio π_θ/π_old leaves [1-ε, 1+ε] for many tokens, and a token whose clipped term "
        "is the minimum gives no gradient: the step size is too large for the clip range.",
        fix="Lower the learning rate or the number of PPO epochs; check old log-probs are recomputed "
        "with a forward pass at the sampling temperature (ρ must be exactly 1 at the first minibatch).",
        iterations=[i for i, _ in hits],
        metrics=(CLIPFRAC,),
    )


def ratio_blowup(trace: RunTrace, t: Thresholds) -> Finding | None:
    mean_s = trace.get("policy/ratio_mean")
    max_s = trace.get("policy/ratio_max")
    off = [(i, v) for i, v in zip(mean_s.iterations, mean_s.values) if abs(v - 1) > t.ratio_mean_tol] if mean_s else []
    big = max_s.above(t.ratio_max_high) if max_s else []
    if not off and not big:
        return None
    parts = []
    if off:
        parts.append(
            f"policy/ratio_mean left 1±{fmt(t.ratio_mean_tol)} at {fmt_iterations([i for i, _ in off])} "
            f"(e.g. {fmt(off[0][1])} at iteration {off[0][0]})"
        )
    if big:
        worst = max(big, key=lambda p: p[1])
        parts.append(
            f"policy/ratio_max above {fmt(t.ratio_max_high)} at {fmt_iterations([i for i, _ in big])} "
            f"(worst {fmt(worst[1])} at iteration {worst[0]})"
        )
    return Finding(
        rule="ratio_blowup",
        # a mean ratio away from 1 means the whole batch moved (or old log-probs are wrong);
        # one extreme token is a warning sign, not yet a broken run
        severity="critical" if off else "warning",
        title="Probability ratio π_θ/π_old blows up",
        evidence="; ".join(parts),
        cause="Updates between consecutive policies are too drastic, or old log-probs do not match the "
        "policy that sampled (temperature not applied, wrong padding/position ids, dropout on).",
        fix="Check that ρ = 1 exactly at the first minibatch of the first epoch; lower the learning "
        "rate; disable dropout; compute log-probs from logits / temperature (Huang et al. 2024).",
        iterations=sorted({i for i, _ in off} | {i for i, _ in big}),
        metrics=("policy/ratio_mean", "policy/ratio_max"),
    )


SPIKE_KEYS = ("losses/policy_loss", "losses/value_loss", "losses/total_loss", "optim/grad_norm")


def loss_spike(trace: RunTrace, t: Thresholds) -> Finding | None:
    found: list[str] = []
    iterations: set[int] = set()
    keys = []
    for key in SPIKE_KEYS:
        s = trace.get(key, min_points=t.spike_lookback + 1)
        if s is None:
            continue
        spikes = robust_spikes(s, t.spike_z, t.spike_lookback)
        if spikes:
            keys.append(key)
            iterations.update(i for i, _, _ in spikes)
            i, v, base = max(spikes, key=lambda p: abs(p[1] - p[2]))
            found.append(f"{key} spiked at {fmt_iterations([p[0] for p in spikes])} (worst {fmt(v)} at {i}, baseline {fmt(base)})")
    if not found:
        return None
    return Finding(
        rule="loss_spike",
        severity="warning",
        title="Loss or gradient-norm spikes",
        evidence="; ".join(found),
        cause="A batch with extreme advantages or rewards (an outlier score, an unnormalised reward), "
        "a learning rate too high for the batch size, or numerical trouble in low precision.",
        fix="Clip gradients (max_grad_norm 1.0), whiten advantages, normalise/clip rewards, lower the "
        "learning rate; inspect the samples of the spiking iterations in samples.jsonl.",
        iterations=sorted(iterations),
        metrics=tuple(keys),
    )


def score_collapse(trace: RunTrace, t: Thresholds) -> Finding | None:
    s = trace.get(SCORE, min_points=t.collapse_before + t.collapse_after)
    if s is None:
        return None
    b, a = t.collapse_before, t.collapse_after

    def drop(k: int) -> float:
        """Score drop at position k, in batch stds: mean of b points before minus a from k."""
        before, after = mean(s.values[k - b : k]), mean(s.values[k : k + a])
        return (before - after) / score_scale(trace, s.iterations[k - b], s.iterations[k])

    events = []  # (iteration, mean before, mean after)
    k = b
    while k <= len(s) - a:
        if drop(k) > t.collapse_drop:
            # the window first trips before the fall; the fall is where the drop peaks
            k = max(range(k, min(k + a, len(s) - a + 1)), key=drop)
            events.append((s.iterations[k], mean(s.values[k - b : k]), mean(s.values[k : k + a])))
            k += b + a  # one event per collapse
        else:
            k += 1
    if not events:
        return None
    # the metrics of iteration i hold the update made after sampling batch i, so a collapse
    # first seen at iteration i follows the update logged at i-1 (or i-2)
    large = _large_updates(trace, t)
    after_large = [(i, b, a) for i, b, a in events if any(i - 2 <= j < i for j in large)]
    i, before, after = (after_large or events)[0]
    cause_tail = (
        f" A large update preceded it (approx_kl/clipfrac above threshold at iteration(s) "
        f"{fmt_iterations(sorted(j for j in large if i - 2 <= j < i))}): one destabilising step "
        "outside the trust region undid the earlier progress."
        if after_large
        else " No oversized update was logged just before it: check the reward model and the samples."
    )
    return Finding(
        rule="score_collapse",
        severity="critical" if after_large else "warning",
        title="Score collapsed" + (" right after a large update" if after_large else ""),
        evidence=(
            f"{SCORE} fell from {fmt(before)} (mean of the {t.collapse_before} iterations before) to "
            f"{fmt(after)} (next {t.collapse_after}) at iteration {i}"
            + (f"; {len(events)} collapse(s) in all at {fmt_iterations([e[0] for e in events])}" if len(events) > 1 else "")
        ),
        cause="The policy took a step outside the region where its advantage estimates hold." + cause_tail,
        fix="Lower the learning rate, reduce PPO epochs, tighten the clip range (ε 0.2 → 0.1), clip "
        "gradients; resume from the checkpoint before the collapse.",
        iterations=[e[0] for e in events],
        metrics=(SCORE, APPROX_KL, CLIPFRAC),
    )


def _large_updates(trace: RunTrace, t: Thresholds) -> set[int]:
    large: set[int] = set()
    for key, limit in ((APPROX_KL, t.approx_kl_high), (CLIPFRAC, t.clipfrac_high)):
        s = trace.get(key)
        if s is None:
            continue
        typical = median(s.values)
        # "large" is absolute (above the trust-region threshold) or relative (10x the run's norm)
        large.update(i for i, v in zip(s.iterations, s.values) if v > limit or (typical > 0 and v > 10 * typical))
    return large


def critic_not_learning(trace: RunTrace, t: Thresholds) -> Finding | None:
    s = trace.get("value/explained_variance")
    if s is None:
        return None
    settled = s.between(s.iterations[0] + t.critic_warmup, s.iterations[-1] + 1)
    w = window_size(len(s), t.window)
    if len(settled) < w:
        return None
    recent = settled.tail(w)
    ev = recent.mean()
    if ev > t.ev_min:
        return None
    return Finding(
        rule="critic_not_learning",
        severity="critical" if ev < t.ev_critical else "warning",
        title="Value function is not learning",
        evidence=f"value/explained_variance averaged {fmt(ev)} over iterations {recent.span()} "
        f"(≤ {fmt(t.ev_min)} after a {t.critic_warmup}-iteration warm-up)",
        cause="The critic's predictions explain none of the returns' variance, so GAE advantages are "
        "noise. Usual causes: returns not masked past EOS, value read at the wrong "
        "position (off by one against the token it scores), value head not in the optimiser or "
        "frozen, value learning rate too low.",
        fix="Check the value head's parameters receive gradients; mask returns and values with "
        "response_mask; read V(s_t) at the position before token t; initialise the critic from the "
        "reward model; raise the value loss coefficient or learning rate.",
        iterations=list(recent.iterations),
        metrics=("value/explained_variance", "losses/value_loss"),
    )


def value_loss_growing(trace: RunTrace, t: Thresholds) -> Finding | None:
    s = trace.get("losses/value_loss")
    if s is None:
        return None
    settled = s.between(s.iterations[0] + t.critic_warmup, s.iterations[-1] + 1)
    w = window_size(len(s), t.window)
    if len(settled) < 2 * w:
        return None
    # Value loss scales with the returns' variance: when the policy improves, scores spread out
    # and the loss grows with them although the critic keeps up. Compare it relative to the
    # batch score variance when that is logged.
    # Only a growing spread excuses a growing loss; a shrinking one (saturation) never creates one.
    std = trace.get("objective/score_std")
    scale = {}
    if std is not None:
        variances = {i: v * v for i, v in zip(std.iterations, std.values)}
        base = max(mean([variances.get(i, 0.0) for i in settled.iterations[:w]]), 1e-8)
        scale = {i: max(var / base, 1.0) for i, var in variances.items()}
    values = [v / scale.get(i, 1.0) for i, v in zip(settled.iterations, settled.values)]
    # window medians: one spike (loss_spike names it) is not a loss that keeps growing
    medians = [median(values[k : k + w]) for k in range(0, len(values) - w + 1)]
    best, recent_median = min(medians), median(values[-w:])
    recent = settled.tail(w)
    if best <= 0 or recent_median <= t.value_loss_growth * best:
        return None
    relative = " relative to the score variance" if scale else ""
    return Finding(
        rule="value_loss_growing",
        severity="warning",
        title="Value loss keeps growing",
        evidence=f"losses/value_loss averaged {fmt(recent.mean())} over iterations {recent.span()}; "
        f"{relative.strip() or 'raw'}: its median {fmt(recent_median / best)}x its best {w}-iteration median",
        cause="The critic falls behind the returns: rewards drifting in scale (unnormalised reward, KL "
        "term growing), value learning rate too low, or the value clip range too tight.",
        fix="Normalise rewards, check explained variance, raise the value learning rate or loss "
        "coefficient, widen or disable value clipping.",
        iterations=list(recent.iterations),
        metrics=("losses/value_loss",),
    )


def entropy_change(trace: RunTrace, t: Thresholds) -> Finding | None:
    e = ends(trace.get("policy/entropy", min_points=t.min_iterations), t.window)
    if e is None or e.first <= 0:
        return None
    first, recent = e.first, e.recent
    if recent < t.entropy_collapse * first:
        return Finding(
            rule="entropy_collapse",
            severity="warning",
            title="Policy entropy collapsed",
            evidence=f"policy/entropy fell from {fmt(first)} (iterations {e.start.span()}) to "
            f"{fmt(recent)} (iterations {e.end.span()}), below {fmt(t.entropy_collapse)}x the start",
            cause="The policy has become near-deterministic (mode collapse): it found a narrow pattern the "
            "reward model likes; β too low or learning rate too high.",
            fix="Raise β or use an adaptive KL target, lower the learning rate, add an entropy bonus; "
            "read the latest samples for repeated templates.",
            iterations=list(e.end.iterations),
            metrics=("policy/entropy",),
        )
    if recent > t.entropy_explosion * first:
        return Finding(
            rule="entropy_explosion",
            severity="warning",
            title="Policy entropy exploded",
            evidence=f"policy/entropy rose from {fmt(first)} (iterations {e.start.span()}) to "
            f"{fmt(recent)} (iterations {e.end.span()}), above {fmt(t.entropy_explosion)}x the start",
            cause="The policy is drifting towards uniform noise: learning rate too high, log-probs computed "
            "without the sampling temperature, or a sign error in the policy loss.",
            fix="Lower the learning rate; divide logits by the sampling temperature before log_softmax; "
            "check the loss is -min(ρA, clip(ρ)A), not its negative.",
            iterations=list(e.end.iterations),
            metrics=("policy/entropy",),
        )
    return None


def non_finite(trace: RunTrace, t: Thresholds) -> Finding | None:
    if not trace.nonfinite:
        return None
    iterations = sorted({i for its in trace.nonfinite.values() for i in its})
    listed = "; ".join(f"{k} at {fmt_iterations(v, 4)}" for k, v in sorted(trace.nonfinite.items()))
    return Finding(
        rule="non_finite",
        severity="critical",
        title="NaN or infinite metrics",
        evidence=listed,
        cause="A division by a zero std (whitening one-token batches), log of zero, overflow in fp16, or "
        "an exploding update.",
        fix="Run with TETHER_DEBUG=1 and anomaly detection; use bf16/fp32; add epsilons to whitening; "
        "clip gradients; check the iteration's samples.",
        iterations=iterations,
        metrics=tuple(sorted(trace.nonfinite)),
    )


def skipped_updates(trace: RunTrace, t: Thresholds) -> Finding | None:
    s = trace.get("guard/skipped_updates")
    if s is None:
        return None
    # the counter may be cumulative or per iteration: an increase or a positive per-step value
    hits = [i for k, (i, v) in enumerate(zip(s.iterations, s.values)) if v > (s.values[k - 1] if k else 0) or (k == 0 and v > 0)]
    if not hits:
        return None
    return Finding(
        rule="skipped_updates",
        severity="warning",
        title="The loop's guard skipped updates",
        evidence=f"guard/skipped_updates rose at iteration(s) {fmt_iterations(hits)} (last value {fmt(s.values[-1])})",
        cause="A non-finite loss or gradient made the loop skip an optimiser step.",
        fix="See the skipped iterations' metrics and samples; lower the learning rate; use bf16 or fp32.",
        iterations=hits,
        metrics=("guard/skipped_updates",),
    )
