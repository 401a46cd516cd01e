"""The significance-aware gate on real replies: identical outputs never promote, a clearly better candidate does, a
candidate better only by noise does not; the bootstrap reproduces sacrebleu's corpus values; bad sets are refused.

Replies are the real first night's (SmolLM2 fine-tuned 60 steps vs the base model, 96 held-out chatterbot dialogues,
tests/data/first_night_replies.jsonl)."""

import json
from types import SimpleNamespace

import pandas as pd
import pytest
from paths import TEST_DATA

from pipeline.config import ConfigError
from pipeline.evaluation import metrics
from pipeline.promote import PromoteConfig
from pipeline.promotion import gate, significance

DATA = TEST_DATA
CONFIG = PromoteConfig(max_regression={"rougeL": 2.0, "chrf1": 2.0, "rougeL_zh": 2.0})


@pytest.fixture(scope="module")
def night() -> pd.DataFrame:
    return pd.DataFrame([json.loads(line) for line in (DATA / "first_night_replies.jsonl").read_text("utf-8").splitlines()])


def judge(table: pd.DataFrame, champion_column: str | None = None, config: PromoteConfig = CONFIG):
    """The gate's decision for `candidate` against `base` (or a champion column), as promote would run it."""
    table = table.assign(champion=table[champion_column]) if champion_column else table
    models = ["candidate", "champion" if champion_column else "base"]
    samples = significance.PairedSamples(table, models, "held-out")
    scores = {m: metrics.score(table[m].tolist(), table["reference"].tolist(), table["language"].tolist())
              for m in models}
    evidence = gate.Evidence(held_out=samples, weights={"held-out": significance.resample_weights(
        samples.groups, config.resamples, config.seed)})
    champion = SimpleNamespace(version=1, tags={}) if champion_column else None
    return gate.decide(config, scores, champion, "scheduled", evidence)


def test_the_real_first_night_is_a_significant_gain(night):
    decision = judge(night)
    assert decision.promote, decision.checks
    bleu = next(c for c in decision.comparisons if c["metric"] == "bleu")
    assert 0 < bleu["low"] < bleu["gain"] < bleu["high"] and bleu["p_value"] < 0.025
    assert "one-sided 95% lower bound of the gain " in decision.reason and "; 95% CI [" in decision.reason
    assert {c["metric"] for c in decision.comparisons} == {"bleu", "rougeL", "chrf1", "rougeL_zh"}


def test_identical_replies_are_never_promoted(night):
    decision = judge(night.assign(candidate=night["base"]))
    assert not decision.promote
    bleu = decision.comparisons[0]
    assert bleu["gain"] == 0 and bleu["low"] == 0 == bleu["high"] and bleu["p_value"] == 1.0


def test_a_gain_within_noise_is_not_promoted(night):
    """The champion's replies with one changed to its exact reference: corpus BLEU moves up, inside the noise."""
    better_by_luck = night["candidate"].copy()
    changed = next(i for i in range(len(night)) if night.at[i, "reference"] != better_by_luck[i])
    better_by_luck[changed] = night.at[changed, "reference"]  # one of 96 replies now exact
    table = night.assign(candidate=better_by_luck, incumbent=night["candidate"])
    decision = judge(table, champion_column="incumbent")
    bleu = decision.comparisons[0]
    assert bleu["gain"] > 0 and bleu["low"] <= 0 and not decision.promote
    assert decision.reason.startswith("bleu") and "does not beat champion v1" in decision.reason


def test_a_significant_drop_on_a_guard_blocks(night):
    """Better BLEU, but every Chinese reply replaced by the base model's: rougeL_zh falls far beyond its 2 points."""
    zh = night["language"] == "zh"
    table = night.assign(candidate=night["candidate"].where(~zh, night["base"]), incumbent=night["candidate"])
    config = PromoteConfig(gate_metric="rougeL_en", min_improvement=-100, max_regression={"rougeL_zh": 2.0})
    decision = judge(table, champion_column="incumbent", config=config)
    guard = next(c for c in decision.comparisons if c["metric"] == "rougeL_zh")
    assert guard["high"] < -2.0 and not guard["passed"] and not decision.promote
    assert "rougeL_zh dropped by more than its allowance 2.0" in decision.reason


def test_sets_too_small_or_metrics_unknown_are_refused(night):
    samples = significance.PairedSamples(night.head(12), ["candidate", "base"], "held-out")
    with pytest.raises(significance.BootstrapError, match=r"held-out: language 'zh' has 5 examples; .* at least 10"):
        significance.check_supported(samples, "rougeL_zh", min_examples=10)
    with pytest.raises(significance.BootstrapError, match="no per-example statistics for 'similarity'"):
        significance.check_supported(samples, "similarity", min_examples=10)
    scores = {"candidate": {"bleu": 1.0, "rougeL": 2.0}}
    with pytest.raises(ConfigError, match=r"promote.max_regression: unknown metric 'rougel'; .*: bleu, rougeL"):
        gate.check_metric_names(PromoteConfig(max_regression={"rougel": 1.0}), scores)
    with pytest.raises(ConfigError, match="promote.gate_metric: unknown metric 'blue'"):
        gate.check_metric_names(PromoteConfig(gate_metric="blue", max_regression={}), scores)


def test_older_training_data_never_moves_champion_unless_allowed():
    scores = {"candidate": {"bleu": 10.0}, "base": {"bleu": 4.0}}
    older = gate.Evidence(candidate_data_end="2026-11-01", champion_data_end="2026-11-22")
    blocked = gate.decide(PromoteConfig(max_regression={}), scores, None, "manual", older)
    assert not blocked.promote and "older training data than the champion" in blocked.reason
    assert gate.decide(PromoteConfig(max_regression={}, allow_older_data=True), scores, None, "manual", older).promote


SCORES = {"candidate": {"bleu": 10.0, "rougeL": 20.0, "chrf1": 30.0, "perplexity": 12.0},
          "base": {"bleu": 4.0, "rougeL": 10.0, "chrf1": 25.0, "perplexity": 20.0}}


GATE = PromoteConfig()


def test_first_candidate_is_judged_against_the_base_model():
    decision = gate.decide(GATE, SCORES, champion=None)
    assert decision.promote and decision.incumbent_name == "base model"
    assert decision.reason == "bleu 10.000 beats base model 4.000"
    # No per-example statistics given: the point estimate decides, and the check says so.
    assert decision.checks[0].startswith("PASS bleu: 10.000 vs base model 4.000 (gain +6.000, point estimate")


def test_champion_scored_tonight_is_the_incumbent():
    tonight = {**SCORES, "champion": {"bleu": 11.0, "rougeL": 19.0, "chrf1": 30.0}}
    champion = SimpleNamespace(version=3, tags={"metric.bleu": "1.0"})  # recorded score is stale: not used
    decision = gate.decide(GATE, tonight, champion)
    assert not decision.promote and decision.incumbent_name == "champion v3"
    assert decision.incumbent == 11.0


def test_recorded_champion_scores_are_the_fallback():
    champion = SimpleNamespace(version=3, tags={"metric.bleu": "9.5", "metric.rougeL": "20.0"})
    decision = gate.decide(GATE, SCORES, champion)
    assert decision.promote and decision.incumbent_name == "champion v3 (recorded scores)"


def test_regression_on_another_metric_blocks_promotion():
    tonight = {**SCORES, "champion": {"bleu": 9.0, "rougeL": 23.0, "chrf1": 30.5}}
    decision = gate.decide(GATE, tonight, SimpleNamespace(version=1, tags={}))
    assert not decision.promote
    assert decision.reason == "bleu 10.000 beats champion v1 9.000; blocked: rougeL dropped by more than its allowance 2.0"
    assert any(c.startswith("PASS chrf1: 30.000 vs champion v1 30.500 (gain -0.500") for c in decision.checks)


def test_per_language_regression_is_caught():
    config = PromoteConfig(max_regression={"rougeL_zh": 1.0})
    tonight = {"candidate": {"bleu": 10.0, "rougeL_zh": 5.0}, "base": {"bleu": 4.0, "rougeL_zh": 8.0}}
    decision = gate.decide(config, tonight, None)
    assert not decision.promote and decision.reason.endswith("blocked: rougeL_zh dropped by more than its allowance 1.0")


def test_margin_lower_is_better_and_ties():
    assert not gate.decide(PromoteConfig(min_improvement=6.5), SCORES, None).promote
    assert gate.decide(PromoteConfig(gate_metric="perplexity", max_regression={}), SCORES, None).promote
    tie = {"candidate": {"bleu": 4.0}, "base": {"bleu": 4.0}}
    assert not gate.decide(GATE, tie, None).promote  # a tie is not an improvement


def test_backfill_never_moves_champion_unless_allowed():
    blocked = gate.decide(GATE, SCORES, None, run_type="backfill")
    assert not blocked.promote and "blocked: backfill run" in blocked.reason
    allowed = gate.decide(PromoteConfig(allow_backfill_promotion=True), SCORES, None, "backfill")
    assert allowed.promote


def three_models(table: pd.DataFrame, config: PromoteConfig):
    models = ["candidate", "champion", "base"]
    samples = significance.PairedSamples(table, models, "held-out")
    scores = {m: metrics.score(table[m].tolist(), table["reference"].tolist(), table["language"].tolist())
              for m in models}
    evidence = gate.Evidence(held_out=samples, weights={"held-out": significance.resample_weights(
        samples.groups, config.resamples, config.seed)})
    return gate.decide(config, scores, SimpleNamespace(version=4, tags={}), "scheduled", evidence)


def test_the_base_floor_blocks_a_candidate_far_below_the_base_model_whoever_the_champion_is(night):
    """Champion v4 already lost the Chinese replies (each night within its allowance, say); the candidate beats it
    overall and equals it in Chinese, so no guard against the champion fires. The floor against the base model does.
    (The base model here answers as the real fine-tuned model did: rougeL_zh 20.7 against the candidate's 7.0.)"""
    zh = night["language"] == "zh"
    table = night.assign(base=night["candidate"], candidate=night["candidate"].where(~zh, "好"),
                         champion=night["base"].where(~zh, "好"))
    config = PromoteConfig(gate_metric="rougeL_en", max_regression={"rougeL_zh": 2.0}, base_floor={"rougeL_zh": 0.0})
    decision = three_models(table, config)
    floor = next(c for c in decision.comparisons if c["name"] == "base_floor.rougeL_zh")
    guard = next(c for c in decision.comparisons if c["name"] == "rougeL_zh")
    assert guard["passed"] and guard["against"] == "champion v4"
    assert not floor["passed"] and floor["against"] == "base model" and floor["high"] < 0
    assert not decision.promote and "rougeL_zh significantly below the base model beyond 0.0 (base_floor)" in decision.reason
    assert any(line.startswith("FAIL rougeL_zh") and "vs base model" in line for line in decision.checks)
    unguarded = three_models(table, PromoteConfig(gate_metric="rougeL_en", max_regression={"rougeL_zh": 2.0}))
    assert unguarded.promote, unguarded.checks  # the same candidate without a floor moves champion


def test_a_floor_without_base_scores_fails_closed():
    scores = {"candidate": {"bleu": 10.0, "anchor_rougeL": 9.0}, "champion": {"bleu": 4.0, "anchor_rougeL": 9.0}}
    config = PromoteConfig(max_regression={}, base_floor={"anchor_rougeL": 0.0})
    decision = gate.decide(config, scores, SimpleNamespace(version=2, tags={}), "scheduled")
    assert not decision.promote and "floor anchor_rougeL not checked" in decision.reason
    assert "FAIL floor anchor_rougeL: the base model was not scored" in decision.checks[-1]


def test_keys_of_a_set_with_nothing_to_score_tonight_are_skipped_not_typos():
    """The memory set is empty on the first night: its guard says so and does not block; a misspelt key still stops."""
    scores = {"candidate": {"bleu": 10.0, "rougeL": 9.0}, "base": {"bleu": 4.0, "rougeL": 9.0}}
    config = PromoteConfig(max_regression={"memory_rougeL": 2.0})
    gate.check_metric_names(config, scores)
    decision = gate.decide(config, scores, None, "scheduled")
    assert decision.promote and "SKIP memory_rougeL: tonight's evaluation has no memory set to score" in decision.checks
    with pytest.raises(ConfigError, match="unknown metric 'memory_rougel'"):
        gate.check_metric_names(PromoteConfig(max_regression={"memory_rougel": 2.0}), scores)
    first = gate.decide(PromoteConfig(gate_metric="memory_bleu", max_regression={}), scores, None, "scheduled")
    assert not first.promote and "no memory set to score" in first.reason
