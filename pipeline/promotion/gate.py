"""The promotion gate: does tonight's candidate beat the incumbent by more than noise, without losing elsewhere?

Rules, each one a line in `Decision.checks` (PASS / FAIL / SKIP):
1. The gate metric's gain over the incumbent is significant: with a paired bootstrap over the evaluation
   conversations (significance.py), the one-sided p-value of "the gain is not above `min_improvement`" is at most
   alpha = 1 - confidence (equivalently: the one-sided lower bound of the gain lies above `min_improvement`).
2. No guarded metric (`max_regression`) drops significantly beyond its allowance: a check fails when the one-sided
   p-value of "the gain is not below -allowance" is at most alpha. (A drop within noise, or within the allowance,
   does not block.)
   Metrics without per-example statistics (perplexity) and champions known only by their recorded scores are
   compared on the point estimate, and the check says so.
3. The floor: on each `base_floor` metric the candidate is not significantly worse than the base model by more than
   its allowance, whoever the incumbent is (the same test as a guard, against the base model's replies). Without the
   base model's replies the floor cannot be checked, and the candidate is not promoted.
4. Backfill runs do not move champion (unless allowed), and neither does a model whose training data ends before the
   champion's (unless allowed), whatever the run type: a manual run for a past date or a cleared old night.
The incumbent is the champion scored tonight on the same examples; else its recorded scores; else the base model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pipeline.config import ConfigError
from pipeline.promotion import significance

LOWER_IS_BETTER = {"perplexity"}


@dataclass(frozen=True)
class Decision:
    promote: bool
    metric: str
    candidate: float
    incumbent: float
    incumbent_name: str  # "champion v3", "base model"
    reason: str
    checks: list[str]  # one line per rule, passed or failed
    comparisons: list[dict] = field(default_factory=list)  # bootstrap results: key, gain, low, high, p_value, rule


@dataclass(frozen=True)
class Evidence:
    """What the gate may look at besides the corpus scores: per-example statistics and the data each model saw."""

    held_out: significance.PairedSamples | None = None
    anchor: significance.PairedSamples | None = None
    memory: significance.PairedSamples | None = None  # earlier nights' held-out replies (evaluation/memory_set.py)
    weights: dict = field(default_factory=dict)  # set name -> resample weights, drawn once per set
    candidate_data_end: str | None = None  # last partition date the candidate was trained on
    champion_data_end: str | None = None


def check_metric_names(config, scores: dict[str, dict[str, float]]) -> None:
    """gate_metric and max_regression keys must name metrics the evaluation produced: a typo is not 'no check'."""
    known = set(scores["candidate"])
    keys = [("gate_metric", config.gate_metric), *[("max_regression", k) for k in config.max_regression],
            *[("base_floor", k) for k in getattr(config, "base_floor", {})]]
    for where, key in keys:
        if key not in known and not _set_not_scored(key, known):
            raise ConfigError(f"promote.{where}: unknown metric {key!r}; the evaluation produced: {', '.join(sorted(known))}")


def _set_not_scored(key: str, known: set[str]) -> bool:
    """A key of a set that had nothing to score tonight (the memory set on the first night): not a typo."""
    prefix = significance.split_key(key)[2]
    return bool(prefix) and key.removeprefix(f"{prefix}_") in known and not any(k.startswith(f"{prefix}_") for k in known)


def decide(config, scores: dict[str, dict[str, float]], champion, run_type: str = "manual",
           evidence: Evidence | None = None) -> Decision:
    evidence = evidence or Evidence()
    metric, candidate = config.gate_metric, scores["candidate"]
    incumbent_name, incumbent, model = _incumbent(scores, champion)
    if metric not in candidate:  # a gate metric of a set with nothing to score tonight: no evidence, no promotion
        return Decision(False, metric, float("nan"), float("nan"), incumbent_name,
                        f"{metric}: tonight's evaluation has no {significance.split_key(metric)[2]} set to score", [])
    if incumbent is None:
        return Decision(False, metric, candidate[metric], float("nan"), "none",
                        "no champion and no base score to compare with", [])
    checks, failed, comparisons = [], [], []

    def check(key: str, rule: str, threshold: float, against=(incumbent_name, incumbent, model),
              label: str | None = None) -> bool | None:
        """True = passed, False = failed, None = nothing to compare with."""
        name, values, column = against
        if key not in candidate:
            checks.append(f"SKIP {key}: tonight's evaluation has no {significance.split_key(key)[2]} set to score")
            return None
        if key not in values:
            checks.append(f"SKIP {key}: no value for {name}")
            return None
        samples = _samples_for(evidence, key, column)
        if samples is None:
            return _point_check(checks, key, rule, threshold, candidate[key], values[key], name)
        weights = evidence.weights[samples.name]
        result = significance.compare(samples, key, "candidate", column, threshold=threshold, rule=rule,
                                      lower_is_better=significance.split_key(key)[0] in LOWER_IS_BETTER,
                                      confidence=config.confidence, weights=weights,
                                      min_conversations=config.min_conversations)
        ok, alpha = result.passed, 1 - config.confidence
        comparisons.append({**asdict(result), "rule": rule, "threshold": threshold, "set": samples.name,
                            "name": label or key, "against": name})
        side, relation = ("lower", "above") if rule == "improves" else ("upper", "not below")
        checks.append(f"{'PASS' if ok else 'FAIL'} {key}: {result.candidate:.3f} vs {name} "
                      f"{result.incumbent:.3f} ({result.interval()} at {config.confidence:.0%}, {side} bound "
                      f"{result.bound:+.3f}; required: gain {relation} {threshold:+g} at one-sided p <= {alpha:.3g}; "
                      f"{result.conversations} conversations resampled"
                      f"{'' if result.conversations >= config.min_conversations else ', fewer than promote.min_conversations: p = 1'})")
        return ok

    gate_ok = check(metric, "improves", config.min_improvement) is True
    for other, allowance in sorted(config.max_regression.items()):
        if check(other, "drops", -allowance) is False:
            failed.append(f"{other} dropped by more than its allowance {allowance}")
    for key, allowance in sorted(getattr(config, "base_floor", {}).items()):
        if "base" not in scores:
            checks.append(f"FAIL floor {key}: the base model was not scored (evaluate.evaluate_base), so the floor "
                          "cannot be checked")
            failed.append(f"floor {key} not checked")
        elif check(key, "drops", -allowance, ("base model", scores["base"], "base"), f"base_floor.{key}") is False:
            failed.append(f"{key} significantly below the base model beyond {allowance} (base_floor)")
    for check_line, reason in order_blocks(config, run_type, evidence.candidate_data_end, evidence.champion_data_end):
        checks.append(check_line)
        failed.append(reason)
    promote = gate_ok and not failed
    verdict = "beats" if gate_ok else "does not beat"
    reason = f"{metric} {candidate[metric]:.3f} {verdict} {incumbent_name} {incumbent[metric]:.3f}"
    gate_test = next((c for c in comparisons if c["name"] == metric), None)
    if gate_test is not None:
        # the decision is the one-sided test: its bound and p, then the two-sided interval for the size of the gain
        reason += (f" (one-sided {config.confidence:.0%} lower bound of the gain {gate_test['bound']:+.3f}, "
                   f"p={gate_test['p_value']:.3f}; {config.confidence:.0%} CI [{gate_test['low']:+.3f}, "
                   f"{gate_test['high']:+.3f}])")
    if gate_ok and failed:
        reason += "; blocked: " + "; ".join(failed)
    return Decision(promote, metric, candidate[metric], incumbent[metric], incumbent_name, reason, checks, comparisons)


def _samples_for(evidence: Evidence, key: str, model: str | None):
    metric, _, prefix = significance.split_key(key)
    samples = getattr(evidence, prefix) if prefix else evidence.held_out
    if model is None or samples is None or model not in samples.models or not samples.has(metric):
        return None
    return samples


def _point_check(checks, key, rule, threshold, candidate, incumbent, incumbent_name) -> bool:
    gain = (incumbent - candidate) if significance.split_key(key)[0] in LOWER_IS_BETTER else (candidate - incumbent)
    ok = gain > threshold if rule == "improves" else gain >= threshold
    checks.append(f"{'PASS' if ok else 'FAIL'} {key}: {candidate:.3f} vs {incumbent_name} {incumbent:.3f} "
                  f"(gain {gain:+.3f}, point estimate, no interval; required: {'>' if rule == 'improves' else '>='} "
                  f"{threshold:+g})")
    return ok


def order_blocks(config, run_type: str, candidate_data_end: str | None,
                 champion_data_end: str | None) -> list[tuple[str, str]]:
    """The rules of order in time that keep a run from moving champion whatever its scores, as (check line, reason):
    a backfill (unless allow_backfill_promotion), a model trained on older data than the champion's (unless
    allow_older_data). Empty: the run may move champion if it wins."""
    blocks = []
    if run_type == "backfill" and not config.allow_backfill_promotion:
        blocks.append(("FAIL run type: backfill runs do not move champion (allow_backfill_promotion=false)",
                       "backfill run"))
    older = bool(candidate_data_end and champion_data_end and candidate_data_end < champion_data_end)
    if older and not config.allow_older_data:
        blocks.append((f"FAIL data: trained on data up to {candidate_data_end}, the champion on {champion_data_end} "
                       "(allow_older_data=false)", "older training data than the champion"))
    return blocks


def _incumbent(scores: dict, champion) -> tuple[str, dict | None, str | None]:
    """(name, scores, column of its replies in the samples or None)."""
    if "champion" in scores:  # scored tonight, on the same examples: the fair comparison
        return f"champion v{champion.version if champion else '?'}", scores["champion"], "champion"
    if champion is not None and any(k.startswith("metric.") for k in champion.tags):
        recorded = {k.removeprefix("metric."): float(v) for k, v in champion.tags.items() if k.startswith("metric.")}
        return f"champion v{champion.version} (recorded scores)", recorded, None
    if "base" in scores:
        return "base model", scores["base"], "base"
    return "none", None, None


def continues_lineage(decision: Decision, run_type: str, awaiting: bool) -> tuple[bool, str]:
    """May the next night train on from this candidate (`train.init: lineage`)? Yes when it was promoted, or when
    the gate metric's significance was the only rule it failed and its point gain is not below 0: no guard, floor
    or rule of order failed, so it is the champion plus a night whose gain was within noise. Never a backfill's, nor
    one still waiting for a person."""
    if run_type == "backfill" or awaiting:
        return False, "a backfill's candidate" if run_type == "backfill" else "waiting for approval"
    if decision.promote:
        return True, "promoted"
    failed = [line for line in decision.checks if line.startswith("FAIL")]
    others = [line for line in failed if not line.startswith(f"FAIL {decision.metric}:")]
    gain = decision.candidate - decision.incumbent
    gain = -gain if significance.split_key(decision.metric)[0] in LOWER_IS_BETTER else gain
    if others:
        return False, f"failed {len(others)} other rule(s): {others[0][5:80]}"
    if not gain >= 0:  # NaN (nothing to compare) is not a gain either
        return False, f"{decision.metric} gain {gain:+.3f} below 0"
    return True, f"{decision.metric} gain {gain:+.3f} within noise, every other rule passed"
