"""Paired bootstrap resampling: is the candidate better than the incumbent, or only luckier on these examples?

Both models replied to the same evaluation examples. Each resample draws whole *conversations* with replacement (the
same ones for both models: paired), and with a conversation every reply of it: replies of one conversation share
their speaker, topic and history, so they are not independent, and resampling them one by one would make the
interval too narrow. Every metric is recomputed from per-reply sufficient statistics: n-gram match counts for BLEU
and chrF (sacrebleu's own statistics and scoring, as its `--paired-bs` does), and per-reply values for ROUGE and
embedding similarity (whose corpus value is a mean). Per-language metrics use the same resample restricted to that
language. Resample weights are a (resamples x replies) count matrix, so every metric of every resample is one matrix
product.

A comparison reports the observed gain (candidate - incumbent; incumbent - candidate for lower-is-better metrics),
its two-sided percentile interval at the confidence level, and the one-sided test the gate decides by: the p-value
for "the gain is not above the threshold" (rule `improves`) or "not below it" (rule `drops`) and the matching
one-sided bound. The decision is the p-value against alpha = 1 - confidence, so a check never reads `p=0.03 FAIL`
at 95%.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sacrebleu.metrics import BLEU, CHRF

from pipeline.data import languages as language_codes
from pipeline.evaluation import metrics

_BLEU = BLEU(tokenize="none", force=True)  # text is tokenized per language first (metrics.bleu_tokens)
_CHRF = {"chrf": CHRF(), "chrf1": CHRF(beta=1)}
ROUGE = ("rouge1", "rouge2", "rougeL")
MEAN_METRICS = (*ROUGE, "similarity")  # corpus value = mean of per-reply values
RESAMPLED = ("bleu", *_CHRF, *MEAN_METRICS)


class BootstrapError(ValueError):
    """An evaluation set that cannot support the test (too few examples, a metric it has no statistics for)."""


@dataclass(frozen=True)
class Comparison:
    metric: str
    candidate: float
    incumbent: float
    gain: float  # observed; positive = candidate better
    low: float  # confidence interval of the gain
    high: float
    p_value: float  # one-sided, for the rule checked (see compare)
    resamples: int
    bound: float = float("nan")  # one-sided bound at the confidence level: lower for `improves`, upper for `drops`
    passed: bool = False  # improves: p <= alpha; drops: not (p <= alpha)
    conversations: int = 0  # the units resampled

    def interval(self) -> str:
        return f"gain {self.gain:+.3f}, CI [{self.low:+.3f}, {self.high:+.3f}], p={self.p_value:.4f}"


SETS = ("anchor", "memory")  # evaluation sets beside the held-out split; their keys carry the set's name first


def split_key(key: str) -> tuple[str, str | None, str | None]:
    """'anchor_rougeL_zh' -> ('rougeL', 'zh', 'anchor'); 'memory_bleu' -> ('bleu', None, 'memory');
    'bleu' -> ('bleu', None, None)."""
    prefix = next((name for name in SETS if key.startswith(f"{name}_")), None)
    if prefix:
        key = key.removeprefix(f"{prefix}_")
    metric, _, language = key.partition("_")
    return metric, language or None, prefix


class PairedSamples:
    """Per-example statistics of several models' replies to one evaluation set (a samples.parquet table)."""

    def __init__(self, samples: pd.DataFrame, models: list[str], name: str):
        self.name, self.models = name, models
        self.languages = samples["language"].astype(str).map(language_codes.primary).to_numpy()
        # The resampling unit: a set without conversation ids (an older samples table) resamples replies.
        units = samples["conversation_id"].astype(str) if "conversation_id" in samples else pd.RangeIndex(len(samples))
        self.groups = pd.factorize(pd.Series(units), sort=False)[0]
        references, languages = samples["reference"].astype(str).tolist(), samples["language"].astype(str).tolist()
        self.stats: dict[tuple[str, str], np.ndarray] = {}
        ref_tokens = [metrics.bleu_tokens(r, lang) for r, lang in zip(references, languages, strict=True)]
        for model in models:
            replies = samples[model].fillna("").astype(str).tolist()
            tokens = [metrics.bleu_tokens(h, lang) for h, lang in zip(replies, languages, strict=True)]
            self.stats[model, "bleu"] = np.array(_BLEU._extract_corpus_statistics(tokens, [ref_tokens]), float)
            for key, chrf in _CHRF.items():
                self.stats[model, key] = np.array(chrf._extract_corpus_statistics(replies, [references]), float)
            rouge = [metrics.rouge_f(h, r, lang) for h, r, lang in zip(replies, references, languages, strict=True)]
            for key in ROUGE:
                self.stats[model, key] = 100 * np.array([[row[key]] for row in rouge])
            if f"{model}_similarity" in samples:
                self.stats[model, "similarity"] = samples[[f"{model}_similarity"]].to_numpy(float)

    def __len__(self) -> int:
        return len(self.languages)

    def has(self, metric: str) -> bool:
        return all((model, metric) in self.stats for model in self.models)

    def mask(self, language: str | None) -> np.ndarray:
        return np.ones(len(self), bool) if language is None else self.languages == language


def resample_weights(groups: int | np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples x replies) counts: how often each reply was drawn in each resample.

    `groups`: each reply's conversation (codes 0..G-1; PairedSamples.groups); G conversations are drawn with
    replacement and each reply weighs as often as its conversation was drawn. An int n: n replies, each its own
    conversation (row sums = n).
    """
    groups = np.arange(groups) if isinstance(groups, int) else np.asarray(groups)
    count = int(groups.max()) + 1 if len(groups) else 0
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, count, size=(resamples, count))
    flat = (drawn + count * np.arange(resamples)[:, None]).ravel()
    per_group = np.bincount(flat, minlength=resamples * count).reshape(resamples, count).astype(np.float32)
    return per_group[:, groups]


def corpus_values(samples: PairedSamples, model: str, metric: str, mask: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The metric for each row of `weights` (one row = one resample, or all ones = the observed value)."""
    stats = samples.stats[model, metric][mask]
    summed = weights[:, mask] @ stats  # (rows x statistics)
    if metric in MEAN_METRICS:
        counts = weights[:, mask].sum(axis=1)
        return np.divide(summed[:, 0], counts, out=np.full(len(counts), np.nan), where=counts > 0)
    scorer = _BLEU if metric == "bleu" else _CHRF[metric]
    return np.array([scorer._compute_score_from_stats(row.round().astype(int).tolist()).score for row in summed])


def compare(samples: PairedSamples, key: str, candidate: str, incumbent: str, *, threshold: float,
            lower_is_better: bool, rule: str, confidence: float, weights: np.ndarray,
            min_conversations: int = 1) -> Comparison:
    """Gain of `candidate` over `incumbent` on metric `key`, with its interval, p-value and decision.

    rule 'improves': p = share of resamples whose gain is <= threshold (small p: significantly better by more
    than threshold); passed when p <= alpha. rule 'drops': p = share whose gain is >= threshold (small p:
    significantly worse than threshold, which is then a negative allowance); passed unless p <= alpha.
    Fewer than `min_conversations` conversations cannot show anything: p = 1 (a set of one conversation resamples
    to itself every time, a zero-width interval that would otherwise read as certainty).
    """
    metric, language, _ = split_key(key)
    mask = samples.mask(language)
    observed = np.ones((1, len(samples)), np.float32)
    values = {m: (corpus_values(samples, m, metric, mask, observed)[0], corpus_values(samples, m, metric, mask, weights))
              for m in (candidate, incumbent)}
    sign = -1.0 if lower_is_better else 1.0
    gain = sign * (values[candidate][0] - values[incumbent][0])
    gains = sign * (values[candidate][1] - values[incumbent][1])
    gains = gains[~np.isnan(gains)]
    alpha = 1 - confidence
    low, high = np.quantile(gains, [alpha / 2, 1 - alpha / 2])
    improves = rule == "improves"
    beyond = np.count_nonzero(gains <= threshold) if improves else np.count_nonzero(gains >= threshold)
    conversations = int(len(np.unique(samples.groups[mask])))
    p_value = (1 + beyond) / (1 + len(gains)) if conversations >= min_conversations else 1.0
    significant = bool(p_value <= alpha + 1e-12)  # (1 + k) / (1 + n) may land on alpha up to float rounding
    bound = np.quantile(gains, alpha if improves else 1 - alpha)
    return Comparison(key, float(values[candidate][0]), float(values[incumbent][0]), float(gain), float(low),
                      float(high), float(p_value), len(gains), float(bound),
                      significant if improves else not significant, conversations)


def check_supported(samples: PairedSamples, key: str, min_examples: int) -> None:
    """Refuse a comparison the set cannot support: an unknown statistic, or too few examples of a language."""
    metric, language, _ = split_key(key)
    if metric not in RESAMPLED or not samples.has(metric):
        raise BootstrapError(f"{samples.name}: no per-example statistics for {key!r} (resampled: {', '.join(RESAMPLED)})")
    count = int(samples.mask(language).sum())
    if count < min_examples:
        where = f"language {language!r}" if language else "the set"
        raise BootstrapError(f"{samples.name}: {where} has {count} examples; the bootstrap for {key!r} needs at least "
                             f"{min_examples} (promote.min_examples)")
