"""Text cleaning on whole columns (pyarrow compute, RE2): normalisation, PII masking, language, de-duplication keys.

Column-at-a-time because a night can hold millions of utterances and a Python loop per string is the bottleneck;
only the rare candidates that need a check RE2 cannot do (the Luhn sum of card numbers) go through Python.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data import languages

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


def detect_language(texts: pa.Array, record: np.ndarray, records: int, needed: np.ndarray | None = None) -> np.ndarray:
    """Per conversation (turns texts[record == i]), a language code of pipeline/data/languages.py or "und".
    `needed` (a bool per conversation) limits the work to conversations whose language is not known already; the
    others get "und" without costing lingua time.

    The script at least half of its turns with letters are written in decides where one corpus language owns it
    (Thai -> th, Hangul -> ko, Han -> zh, or ja when any turn has kana: Japanese writes Han too, Chinese never
    kana); Latin, Cyrillic, Arabic and Devanagari are shared, so lingua tells apart the corpus languages written in
    them. Scripts are checked rarest first: a Russian or Chinese turn quoting an English name is still Russian or
    Chinese. Turns without letters ("1963") do not vote; no letters at all, or a script the corpus does not ship
    (Greek, Georgian...), gives "und".
    """
    present = _scripts_present(texts)
    kana = present.pop("Kana")
    present["Han"] = np.maximum(present["Han"], kana)  # Chinese or Japanese; kana decides which
    japanese = np.bincount(record, weights=kana, minlength=records) > 0
    voters = np.bincount(record, weights=present.pop("letters"), minlength=records)
    codes = np.full(records, languages.UNDETERMINED, dtype=object)
    decided = voters == 0
    for script, has in present.items():
        mine = (np.bincount(record, weights=has, minlength=records) >= 0.5 * voters) & ~decided
        codes[mine] = _SCRIPT_LANGUAGE.get(script, script)  # a shared script's name marks "ask lingua"
        if script == "Han":
            codes[mine & japanese] = "ja"
        decided |= mine
    if needed is not None:
        codes[~needed] = languages.UNDETERMINED
    shared = np.flatnonzero(np.isin(codes, _SHARED_SCRIPTS))
    if len(shared):
        codes[shared] = _identify(_conversation_samples(texts, record, shared))
    return codes


# Script -> its one corpus language; Han is zh and zh-Hant, but lingua cannot tell those apart either: zh.
_SCRIPT_LANGUAGE = {
    **{script: codes[0] for script, codes in languages.codes_by_script().items() if len(codes) == 1}, "Han": "zh"}
_SHARED_SCRIPTS = sorted(set(languages.codes_by_script()) - set(_SCRIPT_LANGUAGE))
# Rarest first, Latin (which the others quote) last; kana is looked for apart from Han, as it decides ja vs zh.
_SCRIPT_ORDER = ["Kana", "Hangul", "Thai", "Hebrew", "Bengali", "Oriya", "Tamil", "Telugu", "Devanagari", "Arabic",
                 "Cyrillic", "Han"]
_SCRIPT_PATTERN = {"Kana": r"[\p{Hiragana}\p{Katakana}]"}
_LINGUA_SAMPLE_CHARS = 150  # enough to tell languages apart; lingua's time grows with the text


def _scripts_present(texts: pa.Array) -> dict[str, np.ndarray]:
    """Which turns (1.0 / 0.0) hold a letter of each script, in _SCRIPT_ORDER, then Latin, then any letter. Each RE2
    pass costs ~0.3 s per million turns, so only turns with a non-Latin letter get the per-script passes."""
    other = _matches(texts, r"[^\p{Latin}\P{L}]")
    rows = np.flatnonzero(other)
    subset = texts.take(pa.array(rows))
    present = {}
    for script in _SCRIPT_ORDER:
        present[script] = np.zeros(len(texts))
        present[script][rows] = _matches(subset, _SCRIPT_PATTERN.get(script, rf"\p{{{script}}}"))
    present["Latin"] = _matches(texts, r"\p{Latin}")
    present["letters"] = np.maximum(present["Latin"], other)
    return present


def _matches(texts: pa.Array, pattern: str) -> np.ndarray:
    return pc.fill_null(pc.match_substring_regex(texts, pattern), False).to_numpy(zero_copy_only=False).astype(float)


def _conversation_samples(texts: pa.Array, record: np.ndarray, chosen: np.ndarray) -> list[str]:
    """The first turns of each chosen conversation, joined, cut to what language identification needs."""
    rows = np.flatnonzero(np.isin(record, chosen))
    samples = dict.fromkeys(chosen.tolist(), "")
    for owner, text in zip(record[rows].tolist(), texts.take(pa.array(rows)).to_pylist(), strict=True):
        if len(samples[owner]) < _LINGUA_SAMPLE_CHARS:
            samples[owner] = f"{samples[owner]}\n{text}" if samples[owner] else text
    return [samples[i][:_LINGUA_SAMPLE_CHARS] for i in chosen.tolist()]


def _identify(samples: list[str]) -> list[str]:
    """lingua's verdict among the corpus languages of the shared scripts; "und" where it finds no language.
    Each distinct sample is asked once: lingua costs ~0.1-0.4 ms per sample, and greetings repeat all night."""
    detector, code_of = _detector()
    distinct = list(dict.fromkeys(samples))
    found = dict(zip(distinct, detector.detect_languages_in_parallel_of(distinct), strict=True))
    return [code_of.get(found[sample], languages.UNDETERMINED) for sample in samples]


@functools.cache
def _detector():
    """Built on first use, not at import: its models load lazily, but ingest of a CJK-only night never needs it."""
    import lingua

    # lingua names languages as the corpus names its directories. Hinglish has no lingua model: a Hinglish record
    # without a language field comes out as some Latin-script language. Oriya is decided by its script alone.
    code_of = {getattr(lingua.Language, directory.upper()): code for directory, (code, script) in languages.CORPUS.items()
               if script in _SHARED_SCRIPTS and hasattr(lingua.Language, directory.upper())}
    return lingua.LanguageDetectorBuilder.from_languages(*code_of).build(), code_of


def near_duplicate_text(texts: pa.Array) -> pa.Array:
    """What two near-identical texts have in common: compatibility form, lower case, letters and digits only."""
    return pc.replace_substring_regex(pc.utf8_lower(_unicode_form(texts, "NFKC")), r"[^\p{L}\p{N}]+", "")


def conversation_digests(prefixes: list[str], texts: list[str], starts: np.ndarray, ends: np.ndarray) -> list[str]:
    """sha256 (16 hex) of each conversation's prefix and turns; the turns of conversation i are texts[starts[i]:ends[i]]."""
    return [
        hashlib.sha256("\x1f".join([prefix, *texts[start:end]]).encode("utf-8")).hexdigest()[:16]
        for prefix, start, end in zip(prefixes, starts, ends, strict=True)
    ]


def split_buckets(keys: list[str]) -> np.ndarray:
    """A number in [0, 1) per key, from its hash: the same key lands in the same split every night. Ingest passes
    near keys, so that copies which differ in case or punctuation share a split (pipeline/ingest.py)."""
    return np.array([int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) for key in keys]) / 2**32
