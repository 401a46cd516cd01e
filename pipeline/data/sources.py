"""Dialogue sources: where raw conversations come from and how each format is read.

A source is one entry of `ingest.sources`:

    - {format: chatterbot, languages: [english, chinese]}            # the installed chatterbot-corpus
    - {format: openai, uri: s3://chat-logs/openai, partitioned: true} # <uri>/dt=YYYY-MM-DD/*.jsonl|*.parquet
    - {format: sharegpt, uri: /data/sharegpt.parquet, language: en}

`openai` records carry `messages: [{role, content}]`, `sharegpt` records `conversations: [{from, value}]`; both
are read from JSON Lines, Parquet, or a Hugging Face dataset saved with `save_to_disk` (a directory holding
state.json). A record that breaks a rule becomes a `Rejected` naming file, line or row and the rule; a file or
partition that cannot be read at all raises `SourceError`, because training on a silently shrunken dataset is
worse than not training.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import yaml

from pipeline.data import languages
from pipeline.storage import outputs, s3

log = logging.getLogger(__name__)

FORMATS = ("chatterbot", "openai", "sharegpt")
# Speaker names in the wild -> canonical roles. Anything else (tool, function, ...) is rejected by name.
ROLE_NAMES = {
    "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant",
    "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system",
}
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


class SourceError(RuntimeError):
    """A source, partition or file cannot be read at all; the message names it."""


@dataclass(frozen=True)
class SourceConfig:
    format: str = field(metadata={"help": "chatterbot | openai | sharegpt"})
    uri: str | None = field(default=None, metadata={"help": "Local path or s3://bucket/prefix (file or directory)."})
    partitioned: bool = field(default=False, metadata={"help": "Read <uri>/dt=YYYY-MM-DD/ for each date of the window."})
    languages: list[str] = field(
        default_factory=lambda: ["english", "chinese"], metadata={"help": "chatterbot: language directories to read."}
    )
    language: str = field(default="auto", metadata={"help": "Language code of the records, or auto (by script)."})

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {FORMATS}")
        if self.format != "chatterbot" and not self.uri:
            raise ValueError(f"a {self.format} source needs a uri")


@dataclass
class Conversation:
    origin: str  # file and line/row, e.g. s3://b/p/dt=2026-11-22/a.jsonl:17
    source: str  # the file it came from
    partition_date: str
    language: str | None  # None: detect from the text
    messages: list[tuple[str, str]]  # (role, text), roles canonical


@dataclass
class Rejected:
    origin: str
    reason: str
    raw: str


@dataclass
class Partition:
    """One readable location: its files are listed (and digested) as they are read."""

    uri: str
    partition_date: str
    files: list[dict] = field(default_factory=list)  # {"uri", "bytes", "sha256"}


def window(run_date: str, days: int) -> list[str]:
    """The partition dates a run reads, newest first: the logical date and the days before it."""
    end = date.fromisoformat(run_date)
    return [(end - timedelta(days=offset)).isoformat() for offset in range(days)]


def read(source: SourceConfig, run_date: str, window_days: int, partitions: list[Partition]) -> Iterator:
    """Yield Conversation and Rejected items of one source; append each partition read to `partitions`."""
    if source.format == "chatterbot":
        yield from _read_chatterbot(source, run_date, partitions)
        return
    dates = window(run_date, window_days) if source.partitioned else [run_date]
    for day in dates:
        uri = f"{source.uri.rstrip('/')}/dt={day}" if source.partitioned else source.uri
        with _local_copy(uri, required=day == run_date) as local:
            if local is None:
                log.warning("%s: no partition for %s; reading the rest of the window", uri, day)
                continue
            partition = Partition(uri, day)
            partitions.append(partition)
            yield from _read_location(source, local, uri, partition)


@contextlib.contextmanager
def _local_copy(uri: str, required: bool) -> Iterator[Path | None]:
    """A local path for `uri`: itself, or an S3 prefix/object downloaded into a temporary directory."""
    if not uri.startswith("s3://"):
        path = Path(uri)
        if not path.exists():
            if required:
                raise SourceError(f"{uri}: no such file or directory")
            yield None
            return
        yield path
        return
    try:
        keys = s3.keys(uri)
        single = not keys and s3.exists(uri)
    except Exception as exc:  # NoSuchBucket, access denied, endpoint down: name the URI, keep the cause
        raise SourceError(f"{uri}: cannot list S3 location: {exc}") from exc
    if not keys and not single:
        if required:
            raise SourceError(f"{uri}: no such S3 object or prefix (missing partition or object)")
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="ingest-") as scratch:
        if single:  # the object's name is its key's last part, checked like every key that becomes a path
            target = s3.local_path(Path(scratch), s3.split(uri)[1].rsplit("/", 1)[-1], uri)
            s3.download(uri, target)
            yield target
        else:
            s3.download_dir(uri, Path(scratch))
            yield Path(scratch)


def _read_location(source: SourceConfig, local: Path, uri: str, partition: Partition) -> Iterator:
    if local.is_file() or _is_hf_dataset(local):
        units = [local]
    else:
        units = sorted(
            p for p in local.rglob("*")
            if (p.is_file() and p.suffix in DATA_SUFFIXES and not _inside_hf_dataset(p, local)) or _is_hf_dataset(p)
        )
    if not units:
        raise SourceError(f"{uri}: empty partition: no {'/'.join(DATA_SUFFIXES)} files or saved datasets")
    for unit in units:
        name = uri if unit == local else f"{uri.rstrip('/')}/{unit.relative_to(local).as_posix()}"
        if _is_hf_dataset(unit):
            partition.files.append({"uri": name, **_digest_dir(unit)})
            yield from _records_to_conversations(source, _hf_rows(unit, name), name, partition.partition_date)
        elif unit.suffix == ".parquet":
            partition.files.append({"uri": name, **_digest_file(unit)})
            yield from _records_to_conversations(source, _parquet_rows(unit, name), name, partition.partition_date)
        else:
            partition.files.append({"uri": name, **_digest_file(unit)})
            yield from _records_to_conversations(source, _jsonl_rows(unit, name), name, partition.partition_date)


def _jsonl_rows(path: Path, name: str) -> Iterator[tuple[str, object]]:
    """(origin, parsed record or Rejected) per non-blank line; bad bytes and bad JSON are rejected per line."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            origin = f"{name}:{number}"
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 byte-order mark is an editor's habit, not an error
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield origin, Rejected(origin, f"not UTF-8: byte 0x{line[exc.start]:02x} at column {exc.start + 1}",
                                       line[:300].decode("utf-8", "replace"))
                continue
            if not text.strip():
                continue
            try:
                yield origin, json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield origin, Rejected(origin, f"malformed JSON: {exc.msg} (column {exc.colno})", text[:300])


def _parquet_rows(path: Path, name: str) -> Iterator[tuple[str, object]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise SourceError(f"{name}: unreadable Parquet file: {exc}") from exc
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{name}#row={number}", row


def _hf_rows(path: Path, name: str) -> Iterator[tuple[str, object]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise SourceError(f"{name}: unreadable saved Hugging Face dataset: {exc}") from exc
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    for split, dataset in sorted(splits, key=lambda item: str(item[0])):
        where = f"{name}[{split}]" if split else name
        for number, row in enumerate(dataset.data.table.to_pylist(), start=1):
            yield f"{where}#row={number}", row


def _records_to_conversations(source: SourceConfig, rows, name: str, partition_date: str) -> Iterator:
    field_name, role_key, text_key = (
        ("messages", "role", "content") if source.format == "openai" else ("conversations", "from", "value")
    )
    language = None if source.language == "auto" else source.language
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
            yield Rejected(origin, problem, _excerpt(record))
            continue
        messages, problem = _messages(record[field_name], role_key, text_key)
        if problem:
            yield Rejected(origin, problem, _excerpt(record))
            continue
        messages, problem = _canonical_turns(messages)
        if problem:
            yield Rejected(origin, problem, _excerpt(record))
            continue
        record_language = record.get("language") if isinstance(record.get("language"), str) else language
        yield Conversation(origin, name, partition_date, record_language, messages)


def _excerpt(record) -> str:
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


def _canonical_turns(messages: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], str | None]:
    """user/assistant alternation starting with the user. A leading system message is dropped: training sets its
    own system prompt, and evaluation must prompt the same way."""
    if messages and messages[0][0] == "system":
        messages = messages[1:]
    for index, (role, _) in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            return [], f"turn {index + 1}: expected role {expected!r}, got {role!r} (turns must alternate, user first)"
    if len(messages) < 2:
        return [], f"fewer than 2 turns ({len(messages)}): nothing to learn a reply from"
    return messages, None


def _read_chatterbot(source: SourceConfig, run_date: str, partitions: list[Partition]) -> Iterator:
    # The installed corpus is named by package, not by venv path, so manifests match across machines.
    root = Path(source.uri) if source.uri else Path(importlib.resources.files("chatterbot_corpus")) / "data"
    shown = source.uri.rstrip("/") if source.uri else "package://chatterbot_corpus/data"
    partition = Partition(shown, run_date)
    partitions.append(partition)
    for language in source.languages:
        files = sorted((root / language).glob("*.yml"))
        if not files:
            raise SourceError(f"{root / language}: no *.yml files for language {language!r}")
        code = languages.code_for(language, SourceError, where=root / language)  # en, zh-Hant; never "english"
        for path in files:
            name = f"{shown}/{language}/{path.name}"
            partition.files.append({"uri": name, **_digest_file(path)})
            for origin, utterances in _corpus_file(path, name):
                if isinstance(utterances, Rejected):
                    yield utterances
                    continue
                roles = ["user" if i % 2 == 0 else "assistant" for i in range(len(utterances))]
                yield Conversation(origin, name, run_date, code,
                                   list(zip(roles, utterances, strict=True)))


def _corpus_file(path: Path, name: str) -> Iterator[tuple[str, list[str] | Rejected]]:
    """Each conversation of a corpus file with its line number; a file that is not UTF-8 YAML raises."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceError(f"{name}:{line}: not UTF-8: byte 0x{data[exc.start]:02x}") from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark else name
        raise SourceError(f"{where}: cannot parse corpus file: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("conversations"), list):
        raise SourceError(f"{name}: expected a mapping with a 'conversations' list")
    nodes = next(value for key, value in root.value if key.value == "conversations").value
    for node, conversation in zip(nodes, document["conversations"], strict=True):
        origin = f"{name}:{node.start_mark.line + 1}"
        if not isinstance(conversation, list):  # a YAML indentation error turns a conversation into one string
            yield origin, Rejected(origin, "not a list of utterances (YAML indentation?)", str(conversation)[:300])
            continue
        utterances = [str(u) for u in conversation if u is not None]  # a YAML number is text, not lost
        if len(utterances) < 2:
            yield origin, Rejected(origin, f"fewer than 2 turns ({len(utterances)}): nothing to learn a reply from",
                                   json.dumps(utterances, ensure_ascii=False)[:300])
            continue
        yield origin, utterances


def _is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _inside_hf_dataset(path: Path, root: Path) -> bool:
    return any(_is_hf_dataset(parent) for parent in path.parents if parent != root and root in parent.parents)


def _digest_file(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": outputs.file_digest([path])}


def _digest_dir(path: Path) -> dict:
    """A saved dataset's files in name order; names are part of the digest (a renamed shard is a change)."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    names = outputs.text_digest("\0".join(f.relative_to(path).as_posix() for f in files))
    return {"bytes": sum(f.stat().st_size for f in files),
            "sha256": outputs.text_digest(names + outputs.file_digest(files))}
