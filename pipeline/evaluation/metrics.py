"""BLEU / ROUGE / chrF that are correct in every language the chatterbot corpus ships, whatever its script.

chrF comes twice: `chrf` is sacrebleu's default chrF2 (beta=2: recall weighs 4x precision), the number papers
quote; `chrf1` (beta=1) weighs both equally. In open dialogue chrF2 rewards length, not quality: on the embedded
test set, appending the base model's unrelated reply to every candidate reply raised chrF2 from 10.9 to 16.4
(chrF1: 13.2 -> 11.0), and the base model's replies to *other* prompts scored 9.4 chrF2. So chrF2 is reported and
chrF1 is what the promotion gate guards (docs/evaluation.md, "Why chrF1"). chrF works on characters, so it needs no tokenizer.

BLEU and ROUGE count tokens, and the stock tokenizers only know spaced Latin text: sacrebleu's '13a' makes a whole
Chinese or Thai sentence one token (a partly right reply scores 0), and rouge_score keeps only [a-z0-9]. Each
*character* is tokenized by its own script, not by the record's language, so mixed text (an English name in a
Chinese reply) and mislabeled records still score right:

| script | BLEU tokens | ROUGE tokens |
|---|---|---|
| no spaces between words: Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar | one per character, its combining marks kept with it (Thai ดี is one token, not two) | the same |
| spaced words: Latin, Cyrillic, Greek, Hangul, Devanagari, Bengali, Oriya, Tamil, Telugu, Hebrew, Arabic, ... | words, with punctuation and symbols split off (sacrebleu's 'intl' tokenizer: Unicode punctuation such as । ، ， too; '13a' only knows ASCII) | words of letters, digits and combining marks, lower-cased; punctuation dropped |

Combining marks matter: Python's `re` \w does not match them (categories Mn/Mc), so `\w+` cut नमस्ते into नमस + त
and every Indic or Thai word at its vowel signs; the patterns below use the `regex` module's \p{M}. Scripts are
Unicode Script_Extensions, so the kana length mark ー counts as kana. The overall corpus BLEU is computed on these
tokens, with sacrebleu told not to tokenize again.
"""

from __future__ import annotations

from collections import defaultdict

import regex
import sacrebleu
from rouge_score import rouge_scorer
from sacrebleu.tokenizers.tokenizer_intl import TokenizerV14International

from pipeline.data import languages as language_codes

_NO_SPACE_SCRIPTS = r"\p{scx=Han}\p{scx=Hiragana}\p{scx=Katakana}\p{scx=Thai}\p{scx=Lao}\p{scx=Khmer}\p{scx=Myanmar}"
# One letter or digit of a script without word spaces, with the combining marks that belong to it.
_CHARACTER = rf"[[{_NO_SPACE_SCRIPTS}]&&[\p{{L}}\p{{N}}]]\p{{M}}*"
# A run of letters, digits and marks of the spaced scripts; ZWNJ/ZWJ sit inside Persian and Indic words.
_WORD = rf"[[\p{{L}}\p{{N}}\p{{M}}\u200c\u200d]--[{_NO_SPACE_SCRIPTS}]]+"
_CHARACTER_RE = regex.compile(_CHARACTER, regex.V1)
_ROUGE_TOKEN_RE = regex.compile(f"{_CHARACTER}|{_WORD}", regex.V1)
_INTL = TokenizerV14International()


def bleu_tokens(text: str, language: str) -> str:
    """Space-joined BLEU tokens. `language` is accepted for callers but unused: tokens follow each character's script."""
    return _INTL(_CHARACTER_RE.sub(r" \g<0> ", text.strip()))


class RougeTokenizer:
    """Lower-cased words of spaced scripts and single characters of unspaced ones; punctuation is not a token."""

    def tokenize(self, text: str) -> list[str]:
        return _ROUGE_TOKEN_RE.findall(text.lower())


_CHRF1 = sacrebleu.metrics.CHRF(beta=1)
_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=RougeTokenizer())


def rouge_f(hypothesis: str, reference: str, language: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 in [0, 1] of one reply (the corpus value is their mean; the bootstrap resamples them)."""
    return {name: value.fmeasure for name, value in _ROUGE.score(reference, hypothesis).items()}


def score(hypotheses: list[str], references: list[str], languages: list[str]) -> dict[str, float]:
    """Corpus metrics overall and per language: bleu, chrf, rouge1/2/L (F1, x100), reply_words; keys like bleu_zh."""
    results = _score_group(hypotheses, references, languages)
    for language, indices in language_codes.indices_by_primary(languages).items():
        pick = [hypotheses[i] for i in indices], [references[i] for i in indices], [languages[i] for i in indices]
        results.update({f"{k}_{language}": v for k, v in _score_group(*pick).items()})
    return results


def _score_group(hypotheses, references, languages) -> dict[str, float]:
    hyp_tokens = [bleu_tokens(h, lang) for h, lang in zip(hypotheses, languages, strict=True)]
    ref_tokens = [bleu_tokens(r, lang) for r, lang in zip(references, languages, strict=True)]
    # force: the text is tokenized on purpose (per script, above), which sacrebleu would otherwise warn about
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
