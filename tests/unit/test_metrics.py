"""Metric values against hand-computed cases, in English and Chinese."""

import json
import math
from pathlib import Path

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from pipeline import metrics

DATA = Path(__file__).resolve().parents[1] / "data"


def test_english_rouge_and_bleu_match_hand_computation():
    scores = metrics.score(["the cat sat on the mat"], ["the cat sat on a mat"], ["en"])
    # unigrams: 5 of 6 match both ways; bigrams 3 of 5; LCS "the cat sat on mat" = 5 of 6
    assert scores["rouge1"] == pytest.approx(100 * 5 / 6)
    assert scores["rouge2"] == pytest.approx(100 * 3 / 5)
    assert scores["rougeL"] == pytest.approx(100 * 5 / 6)
    # n-gram precisions 5/6, 3/5, 2/4, 1/3 and no brevity penalty
    assert scores["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)


def test_chinese_is_scored_per_character():
    # characters 我 爱 吃 红 | 苹果 vs 香蕉: n-gram precisions 4/6, 3/5, 2/4, 1/3
    scores = metrics.score(["我爱吃红苹果"], ["我爱吃红香蕉"], ["zh"])
    assert scores["bleu"] == pytest.approx(100 * (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)
    assert scores["rouge1"] == pytest.approx(100 * 4 / 6)
    assert scores["rouge2"] == pytest.approx(100 * 3 / 5)
    # punctuation is not a token: 我很好 vs 我很好，谢谢 -> P 3/3, R 3/5
    partial = metrics.score(["我很好"], ["我很好，谢谢"], ["zh"])
    assert partial["rougeL"] == pytest.approx(100 * 2 * 1 * 0.6 / 1.6)


def test_identical_chinese_scores_full_marks_where_stock_tools_score_zero():
    sentence = "今天天气很好"
    ours = metrics.score([sentence], [sentence], ["zh"])
    assert ours["bleu"] == pytest.approx(100) and ours["rougeL"] == pytest.approx(100)
    stock = rouge_scorer.RougeScorer(["rougeL"]).score(sentence, sentence)["rougeL"].fmeasure
    assert stock == 0.0  # why metrics.RougeTokenizer exists
    assert sacrebleu.corpus_bleu([sentence], [[sentence]], tokenize="13a").score < 100


def test_per_language_and_overall_keys():
    scores = metrics.score(["hello there my friend", "你好"], ["hello there my friend", "你好吗"], ["en", "zh"])
    assert scores["bleu_en"] == pytest.approx(100)
    assert {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "bleu_zh", "rougeL_zh", "reply_tokens"} <= set(scores)
    assert scores["rouge1"] == pytest.approx((100 + scores["rouge1_zh"]) / 2)  # overall = mean over replies
    assert all(not math.isnan(v) for v in scores.values())



def test_chrf2_rewards_length_on_real_replies_and_chrf1_does_not():
    """Why the gate guards chrF1, on the real replies of a first night (SmolLM2 fine-tuned 60 steps vs the base
    model, 96 held-out chatterbot dialogues, tests/data/first_night_replies.jsonl). chrF2 weighs recall 4x: it goes
    UP when every fine-tuned reply gets the base model's unrelated reply appended, and the base model's replies to
    OTHER prompts score almost as much as the fine-tuned replies to the right ones. chrF1 moves the right way."""
    rows = [json.loads(line) for line in (DATA / "first_night_replies.jsonl").read_text(encoding="utf-8").splitlines()]
    references, languages = [r["reference"] for r in rows], [r["language"] for r in rows]
    candidate, base = [r["candidate"] for r in rows], [r["base"] for r in rows]
    padded = [f"{c} {b}" for c, b in zip(candidate, base, strict=True)]
    off_topic = base[1:] + base[:1]  # each prompt answered with the base model's reply to the next prompt
    honest, rambling = metrics.score(candidate, references, languages), metrics.score(padded, references, languages)
    base_scores, off = metrics.score(base, references, languages), metrics.score(off_topic, references, languages)
    assert rambling["chrf"] > honest["chrf"] + 3 and rambling["chrf1"] < honest["chrf1"]
    assert base_scores["chrf"] > honest["chrf"] and base_scores["chrf1"] < honest["chrf1"]
    assert off["chrf"] > 0.8 * honest["chrf"] and off["chrf1"] < 0.6 * honest["chrf1"]
    assert honest["rougeL"] > 2 * base_scores["rougeL"]  # the balanced word-level metric agrees with chrF1
