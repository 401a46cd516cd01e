"""Language codes of the chatterbot corpus directories, and language identification (lingua + scripts) on the
corpus's own conversations."""

import importlib.resources
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.data import cleaning, languages, sources
from pipeline.data.sources import SourceConfig, SourceError

CORPUS = Path(importlib.resources.files("chatterbot_corpus")) / "data"


def test_every_corpus_directory_has_a_distinct_iso_code():
    directories = {path.name for path in CORPUS.iterdir() if path.is_dir() and any(path.glob("*.yml"))}
    assert directories == set(languages.CODES)
    codes = list(languages.CODES.values())
    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(r"[a-z]{2}", code) for code in codes if code not in ("zh-Hant", "hi-Latn"))
    assert languages.code_for("traditionalchinese") == "zh-Hant" and languages.primary("zh-Hant") == "zh"
    assert languages.code_for("hinglish") == "hi-Latn"


def test_a_directory_named_by_its_code_is_kept():
    assert languages.code_for("vi") == "vi" and languages.code_for("zh-Hant") == "zh-Hant"


def test_unknown_directory_is_an_error_naming_it_and_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"'klingon'.*known are bengali, chinese, .*yoruba"):
        languages.code_for("klingon")
    (tmp_path / "klingon").mkdir()
    (tmp_path / "klingon" / "greetings.yml").write_text("conversations:\n- - nuqneH\n  - nuqneH\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"klingon: unknown chatterbot language directory 'klingon'"):
        list(sources.read(SourceConfig(format="chatterbot", uri=str(tmp_path), languages=["klingon"]),
                          "2026-11-22", 1, []))


def test_corpus_conversations_carry_their_directory_code():
    source = SourceConfig(format="chatterbot", languages=["spanish", "thai", "hinglish"])
    read = [c for c in sources.read(source, "2026-11-22", 1, []) if isinstance(c, sources.Conversation)]
    assert {c.language for c in read} == {"es", "th", "hi-Latn"}


def _detect(*conversations: list[str]) -> list[str]:
    texts = pa.array([t for c in conversations for t in c], pa.large_string())
    record = np.repeat(np.arange(len(conversations)), [len(c) for c in conversations])
    return cleaning.detect_language(texts, record, len(conversations)).tolist()


def test_lingua_tells_apart_languages_that_share_a_script():
    assert _detect(
        ["Hola, ¿cómo estás?", "Muy bien, gracias. ¿Y tú?"],
        ["Olá, como você está?", "Estou bem, obrigado."],
        ["Привет, как дела?", "Хорошо, спасибо."],
        ["Привіт, як справи?", "Добре, дякую."],
        ["नमस्ते, आप कैसे हैं?", "मैं ठीक हूँ, धन्यवाद।"],
        ["سلام، حال شما چطور است؟", "خوبم، ممنون."],
        ["Hallo, hoe gaat het met je?", "Goed, dank je wel."],
        ["Good morning, how are you?", "I am doing well, thank you."],
    ) == ["es", "pt", "ru", "uk", "hi", "fa", "nl", "en"]


@pytest.fixture(scope="module")
def corpus_detected():
    """(directory code, detected code) for every conversation of the installed corpus."""
    source = SourceConfig(format="chatterbot", languages=sorted(languages.CODES))
    read = [c for c in sources.read(source, "2026-11-22", 1, []) if isinstance(c, sources.Conversation)]
    detected = _detect(*[[text for _, text in c.messages] for c in read])
    return [(c.language, found) for c, found in zip(read, detected, strict=True)]


def test_corpus_conversations_are_identified_as_their_directory_language(corpus_detected):
    # Not expected: swedish/ holds English conversations too (lingua is right there), hinglish has no lingua model,
    # and zh-Hant is read as zh (lingua has one Chinese).
    skip = {"sv", "hi-Latn", "zh-Hant"}
    per_language = defaultdict(Counter)
    for expected, found in corpus_detected:
        if expected not in skip:
            per_language[expected][found == expected] += 1
    accuracy = {code: counts[True] / sum(counts.values()) for code, counts in per_language.items()}
    assert len(accuracy) == 25
    # lowest measured: hi 0.85 and mr 0.88 (short Hindi/Marathi turns), fr 0.91; script-decided ones are 1.0
    assert min(accuracy.values()) >= 0.8, accuracy
    right = sum(counts[True] for counts in per_language.values())
    assert right / sum(sum(counts.values()) for counts in per_language.values()) >= 0.97
    assert all(accuracy[code] == 1.0 for code in ("th", "he", "bn", "ta", "te", "ja", "zh", "ru", "uk"))
    assert Counter(found for expected, found in corpus_detected if expected == "zh-Hant") == {"zh": 456}
