"""Paired bootstrap resampling on real replies (tests/data/first_night_replies.jsonl): its observed values are
sacrebleu's and rouge_score's corpus values, resampling is seeded and paired, sets too small are refused."""

import json

import numpy as np
import pandas as pd
import pytest
import sacrebleu
from paths import TEST_DATA

from pipeline.evaluation import metrics
from pipeline.promotion import significance

DATA = TEST_DATA


@pytest.fixture(scope="module")
def night() -> pd.DataFrame:
    return pd.DataFrame([json.loads(line) for line in (DATA / "first_night_replies.jsonl").read_text("utf-8").splitlines()])


def test_bootstrap_observed_values_are_sacrebleus_and_rouges(night):
    samples = significance.PairedSamples(night, ["candidate", "base"], "held-out")
    ones = np.ones((1, len(samples)), np.float32)
    tokens = [metrics.bleu_tokens(t, lang) for t, lang in zip(night["candidate"], night["language"], strict=True)]
    refs = [metrics.bleu_tokens(t, lang) for t, lang in zip(night["reference"], night["language"], strict=True)]
    every = samples.mask(None)
    assert significance.corpus_values(samples, "candidate", "bleu", every, ones)[0] == pytest.approx(
        sacrebleu.corpus_bleu(tokens, [refs], tokenize="none", force=True).score)
    scores = metrics.score(night["candidate"].tolist(), night["reference"].tolist(), night["language"].tolist())
    for key in ("chrf", "chrf1", "rougeL"):
        assert significance.corpus_values(samples, "candidate", key, every, ones)[0] == pytest.approx(scores[key])
    zh = samples.mask("zh")
    assert significance.corpus_values(samples, "candidate", "rougeL", zh, ones)[0] == pytest.approx(scores["rougeL_zh"])


def test_resampling_is_seeded_and_paired():
    first, again = (significance.resample_weights(50, 200, seed=7) for _ in range(2))
    assert (first == again).all() and (first.sum(axis=1) == 50).all()
    assert not (first == significance.resample_weights(50, 200, seed=8)).all()


def test_a_resample_draws_whole_conversations():
    groups = np.array([0, 0, 0, 1, 2, 2])  # three conversations of 3, 1 and 2 replies
    weights = significance.resample_weights(groups, 500, seed=3)
    assert weights.shape == (500, 6)
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 1] == weights[:, 2]).all()
    assert (weights[:, 4] == weights[:, 5]).all()
    # three draws of conversations per resample: the replies drawn are three conversations' worth
    drawn = weights[:, [0, 3, 4]]
    assert (drawn.sum(axis=1) == 3).all() and set(np.unique(weights.sum(axis=1))) <= {3, 4, 5, 6, 7, 8, 9}


def correlated_night(conversations: int = 12, replies: int = 15) -> pd.DataFrame:
    """Replies within a conversation are alike (one speaker, one topic): the candidate gets every reply of
    conversations 0-4 right and the incumbent every reply of 7-9; both get 5-6 right and 10-11 wrong."""
    rows = []
    for c in range(conversations):
        for r in range(replies):
            reference = f"topic {c} reply {r} about the weather and the news"
            rows.append({"conversation_id": f"c{c}", "language": "en", "reference": reference,
                         "candidate": reference if c <= 6 else "no idea", "incumbent": reference if 5 <= c <= 9 else "no idea"})
    return pd.DataFrame(rows)


def rouge_gain(table: pd.DataFrame, groups, threshold: float = 0.0, confidence: float = 0.95):
    """groups=False: the table without its conversation ids, each reply its own unit (the old resampling)."""
    table = table if groups else table.drop(columns="conversation_id")
    samples = significance.PairedSamples(table, ["candidate", "incumbent"], "held-out")
    weights = significance.resample_weights(samples.groups, 2000, seed=0)
    return significance.compare(samples, "rougeL", "candidate", "incumbent", threshold=threshold, rule="improves",
                                lower_is_better=False, confidence=confidence, weights=weights)


def test_correlated_replies_are_not_independent_evidence():
    """180 replies from 12 conversations: resampled one by one they look like a sure gain (p < 0.01); resampled
    by conversation, the gain of 2 conversations in 12 is noise, and the interval is several times wider."""
    table = correlated_night()
    by_reply, by_conversation = rouge_gain(table, groups=False), rouge_gain(table, groups=True)
    assert by_reply.gain == by_conversation.gain == pytest.approx(100 * 2 / 12, abs=0.5)
    assert by_reply.passed and by_reply.p_value < 0.01 and by_reply.conversations == 180
    assert not by_conversation.passed and by_conversation.p_value > 0.1 and by_conversation.conversations == 12
    assert (by_conversation.high - by_conversation.low) > 3 * (by_reply.high - by_reply.low)


def test_the_decision_and_the_p_value_agree():
    """Similarity of 160 replies in 40 conversations, each conversation's replies alike (a per-conversation effect
    plus small noise). At thresholds spanning the gain: PASS exactly when the one-sided p <= alpha, and then the
    one-sided lower bound is above the threshold. Among them a p between 0.025 and 0.05: a PASS at 95%, where a
    rule that needs the two-sided interval (its 2.5% quantile) above the threshold would have said FAIL."""
    rng = np.random.default_rng(1)
    effect = np.repeat(rng.normal(1.0, 4.0, 40), 4) + rng.normal(0, 0.5, 160)
    table = pd.DataFrame({"conversation_id": np.repeat([f"c{c}" for c in range(40)], 4), "language": "en",
                          "reference": "r", "candidate": "c", "incumbent": "i",
                          "candidate_similarity": 50 + effect, "incumbent_similarity": 50.0})
    samples = significance.PairedSamples(table, ["candidate", "incumbent"], "anchor")
    weights = significance.resample_weights(samples.groups, 2000, seed=0)
    seen_between = 0
    for threshold in np.linspace(-3, 3, 121):
        result = significance.compare(samples, "similarity", "candidate", "incumbent", threshold=float(threshold),
                                      rule="improves", lower_is_better=False, confidence=0.95, weights=weights)
        assert result.passed == (result.p_value <= 0.05), result
        assert result.passed == (result.bound > threshold), result
        if 0.025 < result.p_value <= 0.05:
            seen_between += 1
            assert result.passed and result.low <= threshold, result
    assert seen_between


def test_one_conversation_shows_nothing_however_many_replies_it_holds():
    """All 64 replies of one conversation better: every resample is that conversation, a zero-width interval (seen
    on a real night of the feed: "CI [+2.767, +2.767]", promoted). Under min_conversations: p = 1, the gain does
    not pass and a drop does not block; from min_conversations on, the bootstrap decides."""
    table = pd.DataFrame({"conversation_id": "c0", "language": "en", "reference": "r", "candidate": "c",
                          "incumbent": "i", "candidate_similarity": 60.0, "incumbent_similarity": 50.0},
                         index=range(64))
    samples = significance.PairedSamples(table, ["candidate", "incumbent"], "held-out")
    weights = significance.resample_weights(samples.groups, 500, seed=0)
    common = dict(lower_is_better=False, confidence=0.95, weights=weights)
    unguarded = significance.compare(samples, "similarity", "candidate", "incumbent", threshold=0.0,
                                     rule="improves", **common)
    assert unguarded.low == unguarded.high == pytest.approx(10.0) and unguarded.passed  # what min_conversations stops
    gain = significance.compare(samples, "similarity", "candidate", "incumbent", threshold=0.0, rule="improves",
                                min_conversations=5, **common)
    drop = significance.compare(samples, "similarity", "incumbent", "candidate", threshold=-2.0, rule="drops",
                                min_conversations=5, **common)
    assert (gain.p_value, gain.passed, gain.conversations) == (1.0, False, 1)
    assert (drop.p_value, drop.passed) == (1.0, True)
