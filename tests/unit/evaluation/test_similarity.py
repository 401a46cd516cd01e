"""Embedding similarity (all-MiniLM-L6-v2 from its wheel, offline): same meaning scores high, unrelated text low."""

import pytest

from pipeline.evaluation import similarity


def test_identical_text_scores_about_100():
    (value,) = similarity.cosines(["I am fine, thanks for asking."], ["I am fine, thanks for asking."])
    assert value == pytest.approx(100, abs=0.01)


def test_paraphrase_scores_above_unrelated_text():
    reference = "I am fine, thanks."
    paraphrase, unrelated = similarity.cosines(
        ["I'm doing well, thank you!", "The stock market fell sharply today."], [reference, reference])
    assert unrelated < 30 and paraphrase > unrelated + 25  # measured: 56.0 vs 10.7


def test_corpus_value_is_the_mean_overall_and_per_language():
    scores = similarity.score([80.0, 40.0, 10.0], ["en", "en-US", "zh"])
    assert scores == {"similarity": pytest.approx(130 / 3), "similarity_en": 60.0, "similarity_zh": 10.0}


def test_mismatched_lengths_and_empty_input():
    with pytest.raises(ValueError, match="2 replies but 1 references"):
        similarity.cosines(["a", "b"], ["a"])
    assert similarity.cosines([], []) == []
