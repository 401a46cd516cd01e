"""What a source yields, and records of the OpenAI and ShareGPT formats as conversations (sources.py reads the
files, served.py the served exchanges).

    Conversation    a record turned into canonical (role, text) turns, with its origin (file and line or row)
    Rejected        a record that breaks a rule, naming it: quarantined by ingest, counted as junk of its source
    Dropped         a readable record its source's own rule leaves out (a served exchange rated down): counted only
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

# Speaker names in the wild -> canonical roles. Anything else (tool, function, ...) is rejected by name.
ROLE_NAMES = {
    "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant",
    "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system",
}


@dataclass
class Conversation:
    origin: str  # file and line/row, e.g. s3://b/p/dt=2026-11-22/a.jsonl:17
    source: str  # the file it came from
    partition_date: str
    language: str | None  # None: detect from the text
    messages: list[tuple[str, str]]  # (role, text), roles canonical
    entry: int = 0  # which entry of ingest.sources (1-based; set by ingest)
    system_dropped: bool = False  # it began with a system message, dropped (counted by ingest); kept: messages[0]
    outcome: str | None = None  # counted by ingest under this name (served.py: served.accepted, served.corrected)


@dataclass
class Rejected:
    origin: str
    reason: str
    raw: str
    entry: int = 0  # which entry of ingest.sources (1-based; set by ingest), for the per-source junk rate


@dataclass
class Partition:
    """One readable location: its files are listed (and digested) as they are read."""

    uri: str
    partition_date: str
    files: list[dict] = field(default_factory=list)  # {"uri", "bytes", "sha256"}


@dataclass
class Dropped:
    origin: str
    reason: str
    entry: int = 0


def to_conversations(rows, name: str, partition_date: str, sharegpt: bool, language: str | None,
                     keep_system: bool, outcome: str | None = None) -> Iterator:
    """Conversation or Rejected for each (origin, record) of `rows` (a Rejected row is passed on)."""
    field_name, role_key, text_key = ("conversations", "from", "value") if sharegpt else ("messages", "role", "content")
    for origin, record in rows:
        if isinstance(record, Rejected):
            yield record
            continue
        problem = None
        if not isinstance(record, dict):
            problem = f"expected a JSON object, got {type(record).__name__}"
        elif not isinstance(record.get(field_name), list):
            problem = f"missing field {field_name!r} (a list of messages)"
        if problem:
            yield Rejected(origin, problem, excerpt(record))
            continue
        messages, problem = _messages(record[field_name], role_key, text_key)
        if problem:
            yield Rejected(origin, problem, excerpt(record))
            continue
        system = bool(messages) and messages[0][0] == "system"
        messages, problem = canonical_turns(messages, keep_system=keep_system)
        if problem:
            yield Rejected(origin, problem, excerpt(record))
            continue
        record_language = record.get("language") if isinstance(record.get("language"), str) else language
        yield Conversation(origin, name, partition_date, record_language, messages,
                           system_dropped=system and messages[0][0] != "system", outcome=outcome)


def excerpt(record) -> str:
    return json.dumps(record, ensure_ascii=False, default=str)[:300]


def _messages(items: list, role_key: str, text_key: str) -> tuple[list[tuple[str, str]], str | None]:
    messages = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            return [], f"message {number}: expected an object with {role_key!r} and {text_key!r}"
        for key in (role_key, text_key):
            if key not in item or item[key] is None:
                return [], f"message {number}: missing field {key!r}"
        if not isinstance(item[text_key], str):
            return [], f"message {number}: {text_key!r} must be a string, got {type(item[text_key]).__name__}"
        role = ROLE_NAMES.get(str(item[role_key]).strip().lower())
        if role is None:
            return [], f"message {number}: unknown role {item[role_key]!r} (allowed: {sorted(set(ROLE_NAMES))})"
        messages.append((role, item[text_key]))
    return messages, None


def canonical_turns(messages: list[tuple[str, str]],
                     keep_system: bool = False) -> tuple[list[tuple[str, str]], str | None]:
    """user/assistant alternation starting with the user, after a leading system message where it is kept (and not
    blank). A dropped one is replaced by train.system_prompt in training, and evaluation prompts the same way."""
    system = []
    if messages and messages[0][0] == "system":
        system = [messages[0]] if keep_system and messages[0][1].strip() else []
        messages = messages[1:]
    for index, (role, _) in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            return [], f"turn {index + 1}: expected role {expected!r}, got {role!r} (turns must alternate, user first)"
    if len(messages) < 2:
        return [], f"fewer than 2 turns ({len(messages)}): nothing to learn a reply from"
    return system + messages, None

