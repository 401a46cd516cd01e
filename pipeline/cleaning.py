"""Text cleaning on whole columns (pyarrow compute, RE2): normalisation, PII masking, language, de-duplication keys.

Column-at-a-time because a night can hold millions of utterances and a Python loop per string is the bottleneck;
only the rare candidates that need a check RE2 cannot do (the Luhn sum of card numbers) go through Python.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Zero-width and control characters (but not \n and \t): invisible, yet they make equal texts differ.
INVISIBLE = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x{200b}-\x{200d}\x{2060}\x{feff}]"
PII_PATTERNS = {  # order matters: e-mails contain digits, and card numbers look like long phone numbers
    "email": r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}",
    "card": r"\b(?:\d[ \-]?){12,18}\d\b",
    "phone": r"(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\b\d{2,4}[ .\-])\d{3,4}[ .\-]?\d{3,4}\b|\b1[3-9]\d{9}\b",
}
PII_TOKENS = {"email": "<EMAIL>", "card": "<CARD>", "phone": "<PHONE>"}


def normalize(texts: pa.Array, form: str) -> pa.Array:
    """Unicode form, invisible characters out, runs of spaces to one, at most one blank line, trimmed.
    Newlines are kept: replies with lists or code lose their meaning without them."""
    if form != "none":
        texts = _unicode_form(texts, form)
    texts = pc.replace_substring_regex(texts, INVISIBLE, "")
    texts = pc.replace_substring_regex(texts, r"\r\n?", "\n")
    texts = pc.replace_substring_regex(texts, r"[\p{Zs}\t\f\v]+", " ")
    texts = pc.replace_substring_regex(texts, r" ?\n ?", "\n")
    texts = pc.replace_substring_regex(texts, r"\n{3,}", "\n\n")
    return pc.utf8_trim_whitespace(texts)


def _unicode_form(texts: pa.Array, form: str) -> pa.Array:
    # Python's unicodedata, not pc.utf8_normalize: this Arrow build decomposes but never composes (e + U+0301
    # stays two code points under NFC), so equal words would not compare equal.
    values = texts.to_pylist()
    return pa.array([v if unicodedata.is_normalized(form, v) else unicodedata.normalize(form, v) for v in values],
                    pa.large_string())


def mask_pii(texts: pa.Array) -> tuple[pa.Array, dict[str, int], np.ndarray]:
    """Replace e-mails, card numbers (Luhn-valid only) and phone numbers with placeholders.
    Returns the masked texts, matches per kind, and which texts had any."""
    counts, touched = {}, np.zeros(len(texts), dtype=bool)
    for kind, pattern in PII_PATTERNS.items():
        hits = pc.fill_null(pc.match_substring_regex(texts, pattern), False).to_numpy(zero_copy_only=False)
        if kind == "card":
            texts, found, hits = _mask_cards(texts, hits)
        else:
            found = int(pc.sum(pc.count_substring_regex(texts, pattern)).as_py() or 0)
            texts = pc.replace_substring_regex(texts, pattern, PII_TOKENS[kind])
        counts[kind] = found
        touched |= hits
    return texts, counts, touched


def _mask_cards(texts: pa.Array, candidates: np.ndarray) -> tuple[pa.Array, int, np.ndarray]:
    """A digit run is a card number only if its Luhn checksum holds; the rest (order numbers...) stay."""
    pattern = re.compile(PII_PATTERNS["card"], re.ASCII)
    values = texts.to_pylist()
    masked = np.zeros(len(values), dtype=bool)
    found = 0

    def replace(match):
        nonlocal found
        if not _luhn_ok(re.sub(r"\D", "", match.group())):
            return match.group()
        found += 1
        return PII_TOKENS["card"]

    for index in np.flatnonzero(candidates):
        cleaned = pattern.sub(replace, values[index])
        masked[index] = cleaned != values[index]
        values[index] = cleaned
    return (pa.array(values, type=pa.large_string()) if found else texts), found, masked


def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def detect_language(texts: pa.Array, record: np.ndarray, records: int) -> np.ndarray:
    """Per conversation, by script: most turns with kana -> ja, hangul -> ko, Han -> zh, otherwise en."""
    codes = np.full(records, "en", dtype=object)
    turns = np.bincount(record, minlength=records)
    for code, pattern in (("zh", r"\p{Han}"), ("ko", r"\p{Hangul}"), ("ja", r"[\p{Hiragana}\p{Katakana}]")):
        hits = pc.match_substring_regex(texts, pattern).to_numpy(zero_copy_only=False)
        share = np.bincount(record, weights=hits.astype(float), minlength=records) / np.maximum(turns, 1)
        codes[share > 0.5] = code
    return codes


def near_duplicate_text(texts: pa.Array) -> pa.Array:
    """What two near-identical texts have in common: compatibility form, lower case, letters and digits only."""
    return pc.replace_substring_regex(pc.utf8_lower(_unicode_form(texts, "NFKC")), r"[^\p{L}\p{N}]+", "")


def conversation_digests(prefixes: list[str], texts: list[str], starts: np.ndarray, ends: np.ndarray) -> list[str]:
    """sha256 (16 hex) of each conversation's prefix and turns; the turns of conversation i are texts[starts[i]:ends[i]]."""
    return [
        hashlib.sha256("\x1f".join([prefix, *texts[start:end]]).encode("utf-8")).hexdigest()[:16]
        for prefix, start, end in zip(prefixes, starts, ends, strict=True)
    ]


def split_buckets(conversation_ids: list[str]) -> np.ndarray:
    """A number in [0, 1) per id, from its hash: the same conversation lands in the same split every night."""
    return np.array([int(hashlib.sha256(cid.encode()).hexdigest()[:8], 16) for cid in conversation_ids]) / 2**32
