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
