"""BLEU / ROUGE / chrF that are correct for Chinese as well as English.

chrF comes twice: `chrf` is sacrebleu's default chrF2 (beta=2: recall weighs 4x precision), the number papers
quote; `chrf1` (beta=1) weighs both equally. In open dialogue chrF2 rewards length, not quality: on the embedded
test set, appending the base model's unrelated reply to every candidate reply raised chrF2 from 10.9 to 16.4
(chrF1: 13.2 -> 11.0), and the base model's replies to *other* prompts scored 9.4 chrF2. So chrF2 is reported and
chrF1 is what the promotion gate guards (README, "Why chrF1").

sacrebleu's default '13a' tokenizer and rouge_score's default tokenizer (which keeps only [a-z0-9]) both score
Chinese as 0 even for identical sentences. Each text is tokenized for its own language first: sacrebleu's 'zh'
tokenizer for BLEU, and characters for CJK ROUGE; the overall corpus BLEU is then computed on those tokens.
"""

from __future__ import annotations

import re
from collections import defaultdict

import sacrebleu
from rouge_score import rouge_scorer
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_BLEU_TOKENIZERS = {"zh": TokenizerZh(), "default": Tokenizer13a()}


def is_cjk(language: str) -> bool:
    return language.split("-")[0] in ("zh", "ja", "ko")


def bleu_tokens(text: str, language: str) -> str:
    tokenizer = _BLEU_TOKENIZERS["zh" if is_cjk(language) else "default"]
    return tokenizer(text.strip())


class RougeTokenizer:
    """Lower-cased words; every CJK character is its own token (Chinese has no spaces)."""

    def tokenize(self, text: str) -> list[str]:
        tokens = []
        for word in re.findall(r"\w+", text.lower()):
            tokens.extend(_CJK.sub(lambda m: f" {m.group(0)} ", word).split())
        return tokens


_CHRF1 = sacrebleu.metrics.CHRF(beta=1)
_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=RougeTokenizer())


def rouge_f(hypothesis: str, reference: str, language: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 in [0, 1] of one reply (the corpus value is their mean; the bootstrap resamples them)."""
    return {name: value.fmeasure for name, value in _ROUGE.score(reference, hypothesis).items()}


def score(hypotheses: list[str], references: list[str], languages: list[str]) -> dict[str, float]:
    """Corpus metrics overall and per language: bleu, chrf, rouge1/2/L (F1, x100), reply_words; keys like bleu_zh."""
    groups = defaultdict(list)
    for index, language in enumerate(languages):
        groups[language.split("-")[0]].append(index)
    results = _score_group(hypotheses, references, languages)
    for language, indices in sorted(groups.items()):
        pick = [hypotheses[i] for i in indices], [references[i] for i in indices], [languages[i] for i in indices]
        results.update({f"{k}_{language}": v for k, v in _score_group(*pick).items()})
    return results


def _score_group(hypotheses, references, languages) -> dict[str, float]:
    hyp_tokens = [bleu_tokens(h, lang) for h, lang in zip(hypotheses, languages, strict=True)]
    ref_tokens = [bleu_tokens(r, lang) for r, lang in zip(references, languages, strict=True)]
    # force: the text is tokenized on purpose (per language, above), which sacrebleu would otherwise warn about
    bleu = sacrebleu.corpus_bleu(hyp_tokens, [ref_tokens], tokenize="none", force=True).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    chrf1 = _CHRF1.corpus_score(hypotheses, [references]).score
    rouge = defaultdict(float)
    for hyp, ref, language in zip(hypotheses, references, languages, strict=True):
        for name, value in rouge_f(hyp, ref, language).items():
            rouge[name] += value
    count = max(len(hypotheses), 1)
    return {
        "bleu": bleu, "chrf": chrf, "chrf1": chrf1,
        **{name: 100 * total / count for name, total in rouge.items()},
        "reply_tokens": sum(len(t.split()) for t in hyp_tokens) / count,
    }
