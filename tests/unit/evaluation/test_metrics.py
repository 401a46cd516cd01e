"""Metric values against hand-computed cases in English and Chinese, and against an independent implementation on
real corpus replies in nine languages and eight scripts."""

import json
import math
import unicodedata
from collections import Counter

import pytest
import sacrebleu
from paths import TEST_DATA
from rouge_score import rouge_scorer

from pipeline.data import languages, sources
from pipeline.evaluation import metrics

DATA = TEST_DATA


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


# An independent reference for the per-script tokenization: character names and categories from `unicodedata`
# (pipeline/evaluation/metrics.py uses the `regex` module's Script_Extensions), plain n-gram counting for BLEU and an LCS
# table for ROUGE-L (pipeline/evaluation/metrics.py wraps sacrebleu and rouge_score).
UNSPACED_NAMES = ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH", "IDEOGRAPHIC", "HIRAGANA", "KATAKANA",
                  "THAI", "LAO", "KHMER", "MYANMAR")
WORD_JOINERS = "\u200c\u200d"  # zero-width (non-)joiner: inside Persian and Indic words


def _reference_tokens(text: str, punctuation: bool) -> list[str]:
    tokens, word = [], ""
    for char in text:
        category = unicodedata.category(char)
        if category.startswith("M") and (word or tokens):  # a vowel sign or accent belongs to what precedes it
            if word:
                word += char
            else:
                tokens[-1] += char
        elif category[0] in "LN" and unicodedata.name(char, "").startswith(UNSPACED_NAMES):
            tokens += [word] if word else []
            tokens.append(char)
            word = ""
        elif category[0] in "LN" or char in WORD_JOINERS:
            word += char
        else:
            tokens += [word] if word else []
            word = ""
            if punctuation and category[0] in "PS":
                tokens.append(char)
    return tokens + ([word] if word else [])


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _reference_bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 (Papineni et al.): clipped n-gram precisions summed over the corpus, brevity penalty."""
    matches, totals, hyp_length, ref_length = [0] * 4, [0] * 4, 0, 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        hyp_tokens, ref_tokens = _reference_tokens(hyp, True), _reference_tokens(ref, True)
        hyp_length, ref_length = hyp_length + len(hyp_tokens), ref_length + len(ref_tokens)
        for n in range(1, 5):
            hyp_grams, ref_grams = _ngrams(hyp_tokens, n), _ngrams(ref_tokens, n)
            matches[n - 1] += sum((hyp_grams & ref_grams).values())
            totals[n - 1] += sum(hyp_grams.values())
    assert all(matches), "every n-gram order must match somewhere (no smoothing in this reference)"
    precision = math.exp(sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4)
    brevity = 1.0 if hyp_length >= ref_length else math.exp(1 - ref_length / hyp_length)
    return 100 * brevity * precision


def _f1(overlap: int, hyp_count: int, ref_count: int) -> float:
    if not overlap:
        return 0.0
    precision, recall = overlap / hyp_count, overlap / ref_count
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous_diagonal, row[0] = 0, 0
        for j, y in enumerate(b, start=1):
            previous_diagonal, row[j] = row[j], previous_diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def _reference_rouge(hyp: str, ref: str) -> dict[str, float]:
    hyp_tokens, ref_tokens = _reference_tokens(hyp.lower(), False), _reference_tokens(ref.lower(), False)
    scores = {}
    for n in (1, 2):
        hyp_grams, ref_grams = _ngrams(hyp_tokens, n), _ngrams(ref_tokens, n)
        scores[f"rouge{n}"] = _f1(sum((hyp_grams & ref_grams).values()), sum(hyp_grams.values()),
                                  sum(ref_grams.values()))
    scores["rougeL"] = _f1(_lcs(hyp_tokens, ref_tokens), len(hyp_tokens), len(ref_tokens))
    return scores


def _corpus_replies(directory: str, count: int) -> list[str]:
    """The longest distinct replies of a corpus language, without digits (BLEU tokenizers treat '1963.' apart)."""
    source = sources.SourceConfig(format="chatterbot", languages=[directory])
    replies = {text for item in sources.read(source, "2026-11-22", 1, []) if isinstance(item, sources.Conversation)
               for role, text in item.messages if role == "assistant" and not any(c.isdigit() for c in text)}
    return sorted(replies, key=lambda text: (-len(text), text))[:count]


def _partly_changed(reply: str, other: str) -> str:
    """The first two thirds of a reply, then the first half of another: a reply that is partly right."""
    return f"{reply[: 2 * len(reply) // 3]} {other[: len(other) // 2]}"


# 9 corpus languages in 8 scripts: Latin, Cyrillic, Devanagari, Tamil, Bengali, Arabic (with ZWNJ), Hebrew, Han,
# Han + kana. Thai has only one-word greetings in the corpus: test_partly_right_thai_reply_scores_above_zero.
CORPUS_LANGUAGES = ["spanish", "russian", "hindi", "tamil", "bengali", "persian", "hebrew", "chinese", "japanese"]


@pytest.mark.parametrize("directory", CORPUS_LANGUAGES)
def test_bleu_and_rouge_match_an_independent_implementation_on_corpus_replies(directory):
    replies = _corpus_replies(directory, 6)
    references = replies[:5]
    hypotheses = [_partly_changed(reply, replies[(i + 1) % 6]) for i, reply in enumerate(references)]
    code = languages.code_for(directory)
    ours = metrics.score(hypotheses, references, [code] * len(references))
    assert ours["bleu"] == pytest.approx(_reference_bleu(hypotheses, references), abs=1e-6)
    assert 5 < ours["bleu"] < 95  # partly right: neither nothing nor everything
    per_reply = [_reference_rouge(h, r) for h, r in zip(hypotheses, references, strict=True)]
    for name in ("rouge1", "rouge2", "rougeL"):
        assert ours[name] == pytest.approx(100 * sum(s[name] for s in per_reply) / len(per_reply), abs=1e-6)
        assert ours[f"{name}_{languages.primary(code)}"] == pytest.approx(ours[name])
    for hyp, ref, expected in zip(hypotheses, references, per_reply, strict=True):
        assert metrics.rouge_f(hyp, ref, code) == pytest.approx(expected, abs=1e-9)
        assert metrics.bleu_tokens(hyp, code).split() == _reference_tokens(hyp.strip(), True)


@pytest.mark.parametrize("text, tokens", [
    ("नमस्ते, आप कैसे हैं?", ["नमस्ते", "आप", "कैसे", "हैं"]),  # not नमस + त: vowel signs stay in the word
    ("வணக்கம் எப்படி இருக்கிறீர்கள்?", ["வணக்கம்", "எப்படி", "இருக்கிறீர்கள்"]),
    ("আপনি কেমন আছেন।", ["আপনি", "কেমন", "আছেন"]),
    ("ନମସ୍କାର", ["ନମସ୍କାର"]),
    ("สวัสดีครับ", ["ส", "วั", "ส", "ดี", "ค", "รั", "บ"]),  # characters, each with its marks
    ("我很好，谢谢! OK", ["我", "很", "好", "谢", "谢", "ok"]),
    ("コーヒーを飲みたい", ["コ", "ー", "ヒ", "ー", "を", "飲", "み", "た", "い"]),
    ("안녕하세요, 반갑습니다!", ["안녕하세요", "반갑습니다"]),  # Hangul is written with spaces: words
    ("Привет, как дела?", ["привет", "как", "дела"]),
    ("می\u200cخواهم بروم", ["می\u200cخواهم", "بروم"]),
])
def test_rouge_tokens_follow_the_script_of_each_character(text, tokens):
    assert metrics.RougeTokenizer().tokenize(text) == tokens


def test_partly_right_thai_reply_scores_above_zero():
    # corpus utterances (thai/greeting.yml): "hungry just now" answered with its first half and another ending
    reference, hypothesis = "หิวพอดีเลยเนี่ย", "หิวพอดีเลยจ้า"
    scores = metrics.score([hypothesis], [reference], ["th"])
    assert scores["bleu"] > 30 and scores["rouge1"] > 60 and scores["rougeL"] > 60
    assert scores["bleu"] == pytest.approx(_reference_bleu([hypothesis], [reference]), abs=1e-6)
    # what word tokenizers make of it: one token per sentence, so a partly right reply is worth nothing
    assert sacrebleu.corpus_bleu([hypothesis], [[reference]], tokenize="13a").score == pytest.approx(0, abs=1e-6)
