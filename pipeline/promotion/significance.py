"""Paired bootstrap resampling: is the candidate better than the incumbent, or only luckier on these examples?

Both models replied to the same evaluation examples. Each resample draws the example indices with replacement
(the same indices for both models: paired) and recomputes every metric from per-example sufficient statistics:
n-gram match counts for BLEU and chrF (sacrebleu's own statistics and scoring, as its `--paired-bs` does), and
per-reply values for ROUGE and embedding similarity (whose corpus value is a mean). Per-language metrics use the
same resampled indices restricted to that language. Resample weights are a (resamples x examples) count matrix, so
every metric of every resample is one matrix product.

A comparison reports the observed gain (candidate - incumbent; incumbent - candidate for lower-is-better metrics),
its percentile confidence interval and a one-sided p-value for "the gain is not above the threshold".
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

    def interval(self) -> str:
        return f"gain {self.gain:+.3f}, CI [{self.low:+.3f}, {self.high:+.3f}], p={self.p_value:.4f}"


def split_key(key: str) -> tuple[str, str | None, str | None]:
    """'anchor_rougeL_zh' -> ('rougeL', 'zh', 'anchor'); 'bleu' -> ('bleu', None, None)."""
    prefix = None
    if key.startswith("anchor_"):
        prefix, key = "anchor", key.removeprefix("anchor_")
    metric, _, language = key.partition("_")
    return metric, language or None, prefix


class PairedSamples:
    """Per-example statistics of several models' replies to one evaluation set (a samples.parquet table)."""

    def __init__(self, samples: pd.DataFrame, models: list[str], name: str):
        self.name, self.models = name, models
        self.languages = samples["language"].astype(str).map(language_codes.primary).to_numpy()
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


def resample_weights(examples: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples x examples) counts: how often each example was drawn in each resample (row sums = examples)."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, examples, size=(resamples, examples))
    flat = (drawn + examples * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * examples).reshape(resamples, examples).astype(np.float32)


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
            lower_is_better: bool, rule: str, confidence: float, weights: np.ndarray) -> Comparison:
    """Gain of `candidate` over `incumbent` on metric `key`, with its interval and p-value.

    rule 'improves': p = share of resamples whose gain is <= threshold (small p: significantly better by more
    than threshold). rule 'drops': p = share whose gain is >= threshold (small p: significantly worse than
    threshold, which is then a negative allowance).
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
    beyond = np.count_nonzero(gains <= threshold) if rule == "improves" else np.count_nonzero(gains >= threshold)
    p_value = (1 + beyond) / (1 + len(gains))
    return Comparison(key, float(values[candidate][0]), float(values[incumbent][0]), float(gain), float(low),
                      float(high), float(p_value), len(gains))


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
