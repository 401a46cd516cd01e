"""The languages the chatterbot corpus ships: directory name -> language code, and the script each is written in.

Codes are ISO 639-1 (two letters), with a BCP 47 subtag where the plain code would merge two things the corpus
keeps apart: `zh-Hant` (Traditional Chinese, next to `zh`) and `hi-Latn` (Hinglish). Hinglish is Hindi-English
code-switching written in Latin letters; it has no ISO 639 code of its own, and BCP 47's "Hindi in Latin script"
is the closest standard tag. Metrics group by the part before '-', so zh-Hant counts with zh and hi-Latn with hi.

The script column is what ingest's language identification keys on (pipeline/data/cleaning.py: detect_language): a
script only one corpus language uses names the language by itself; the rest go to a statistical detector.
`UNDETERMINED` ("und", ISO 639-2's own code for it) labels text in no known script or that the detector cannot place.
"""

from __future__ import annotations

import re

UNDETERMINED = "und"

# directory -> (code, script); scripts are Unicode script names, as RE2/regex spell them in \p{...}
CORPUS = {
    "bengali": ("bn", "Bengali"),
    "chinese": ("zh", "Han"),
    "dutch": ("nl", "Latin"),
    "english": ("en", "Latin"),
    "french": ("fr", "Latin"),
    "german": ("de", "Latin"),
    "hebrew": ("he", "Hebrew"),
    "hindi": ("hi", "Devanagari"),
    "hinglish": ("hi-Latn", "Latin"),
    "indonesian": ("id", "Latin"),
    "italian": ("it", "Latin"),
    "japanese": ("ja", "Kana"),  # with Han characters too; kana is what tells it from Chinese
    "korean": ("ko", "Hangul"),
    "marathi": ("mr", "Devanagari"),
    "oriya": ("or", "Oriya"),
    "persian": ("fa", "Arabic"),
    "portuguese": ("pt", "Latin"),
    "russian": ("ru", "Cyrillic"),
    "spanish": ("es", "Latin"),
    "swedish": ("sv", "Latin"),
    "tamil": ("ta", "Tamil"),
    "telugu": ("te", "Telugu"),
    "thai": ("th", "Thai"),
    "traditionalchinese": ("zh-Hant", "Han"),
    "turkish": ("tr", "Latin"),
    "ukrainian": ("uk", "Cyrillic"),
    "urdu": ("ur", "Arabic"),
    "yoruba": ("yo", "Latin"),
}
CODES = {directory: code for directory, (code, _) in CORPUS.items()}
# A language tag as a config or record writes one: en, zh-Hant, hi-Latn (not a directory name like "english").
_TAG = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")


def code_for(directory: str, error: type[Exception] = ValueError, where=None) -> str:
    """The language code of a corpus directory; a directory named by a code already (a custom corpus) is kept.
    An unknown name raises `error`, prefixed with `where` (the directory's path) when given."""
    if directory in CODES:
        return CODES[directory]
    if _TAG.fullmatch(directory):
        return directory
    raise error(f"{f'{where}: ' if where else ''}unknown chatterbot language directory {directory!r}: known are "
                f"{', '.join(sorted(CODES))} (or name the directory by its language code, e.g. 'en')")


def primary(code: str) -> str:
    """The language without script or region: zh-Hant -> zh. Metrics report per primary language."""
    return code.split("-")[0]


def indices_by_primary(codes: list[str]) -> dict[str, list[int]]:
    """Positions of each primary language in `codes`, languages sorted: how every per-language metric groups."""
    groups: dict[str, list[int]] = {}
    for index, code in enumerate(codes):
        groups.setdefault(primary(code), []).append(index)
    return dict(sorted(groups.items()))


def codes_by_script() -> dict[str, list[str]]:
    """Script -> the corpus language codes written in it, e.g. Cyrillic -> [ru, uk]."""
    scripts: dict[str, list[str]] = {}
    for code, script in CORPUS.values():
        scripts.setdefault(script, []).append(code)
    return scripts
