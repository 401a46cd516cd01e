"""Dialogue sources: where raw conversations come from and how each format is read.

A source is one entry of `ingest.sources`:

    - {format: chatterbot, languages: [english, chinese]}            # the installed chatterbot-corpus
    - {format: openai, uri: s3://chat-logs/openai, partitioned: true} # <uri>/dt=YYYY-MM-DD/*.jsonl|*.parquet
    - {format: openai, uri: s3://chat-logs/openai, partitioned: true, marker: true}   # only published days
    - {format: sharegpt, uri: /data/sharegpt.parquet, language: en}
    - {format: served, uri: s3://chat-logs/served, partitioned: true, accept: up}   # what users rated up (served.py)

`openai` records carry `messages: [{role, content}]`, `sharegpt` records `conversations: [{from, value}]`; both
are read from JSON Lines (.jsonl), JSON documents (.json: an array of records, json_files.py), Parquet, or a Hugging
Face dataset saved with `save_to_disk` (a directory holding state.json). A record that breaks a rule becomes a `Rejected` naming file, line or row and the rule; a file or
partition that cannot be read at all raises `SourceError`, because training on a silently shrunken dataset is
worse than not training. With `marker: true` a day is read only once its producer published it: a `_SUCCESS`
marker listing each file's sha256, written last (markers.py); the run date's partition without one, or with files
that changed since, raises SourceError; an earlier day of the window is then skipped with a warning.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import yaml

from pipeline.data import json_files, languages, locations, markers, records, served
from pipeline.data.locations import SourceError
from pipeline.data.records import Conversation, Dropped, Partition, Rejected  # noqa: F401 (what sources yield)
from pipeline.storage import outputs

log = logging.getLogger(__name__)

FORMATS = ("chatterbot", "openai", "sharegpt", "served")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
REPLAY_ROLE = "replay"
ROLES = ("nightly", REPLAY_ROLE)
SYSTEM_MESSAGES = ("drop", "keep")


@dataclass(frozen=True)
class SourceConfig:
    format: str = field(metadata={"help": "chatterbot | openai | sharegpt | served (the exchanges `make serve` "
                                          "recorded, pipeline/data/served.py)"})
    uri: str | None = field(default=None, metadata={"help": "Local path or s3://bucket/prefix (file or directory)."})
    partitioned: bool = field(default=False, metadata={"help": "Read <uri>/dt=YYYY-MM-DD/ for each date of the window."})
    languages: list[str] = field(
        default_factory=lambda: ["english", "chinese"], metadata={"help": "chatterbot: language directories to read."}
    )
    language: str = field(default="auto", metadata={"help": "Language code of the records, or auto (by script)."})
    marker: bool = field(default=False, metadata={"help": "Partitioned: read a day only once its _SUCCESS marker is "
                                                          "there, its files as the marker lists them (markers.py)."})
    max_quarantine_ratio: float | None = field(default=None, metadata={
        "help": "This source's allowance: records quarantined / read allowed for it, not counting expected_junk; "
                "null: validate.max_quarantine_ratio."})
    expected_junk: list[str] = field(default_factory=list, metadata={
        "help": "Rules whose rejections are this source's normal junk, e.g. fewer_than_2_turns (a chat-log session "
                "nobody answered: 44% of the feed, 85% on its worst day): quarantined and counted, never held "
                "against max_quarantine_ratio, which then guards malformed records only."})
    system_messages: str = field(default="drop", metadata={
        "help": "drop | keep: a conversation's leading system message (a persona, an instruction). drop: training "
                "and evaluation give it train.system_prompt instead; keep: it is stored as turn -1 and replaces "
                "train.system_prompt for that conversation in training, evaluation and perplexity. Counted either way "
                "(system_messages_dropped / system_messages_kept)."})
    role: str = field(default="nightly", metadata={
        "help": "nightly: its conversations are split into train / validation / test (tonight's data); replay: "
                "a store the nights replay from (a static set beside a feed): split 'replay', never tonight's "
                "test or validation split, trained on only as train.replay draws it."})
    accept: str = field(default="up", metadata={"help": "served: which exchanges feedback keeps: up (rated up, or "
                                                        "a score >= 0.5) | not_down (all but those rated down)"})

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role {self.role!r} is not one of {ROLES}")
        if self.system_messages not in SYSTEM_MESSAGES:
            raise ValueError(f"system_messages {self.system_messages!r} is not one of {SYSTEM_MESSAGES}")
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {FORMATS}")
        if self.accept not in served.ACCEPT:
            raise ValueError(f"accept {self.accept!r} is not one of {served.ACCEPT}")
        if self.format != "chatterbot" and not self.uri:
            raise ValueError(f"a {self.format} source needs a uri")


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
        with locations.local_copy(uri, required=day == run_date) as local:
            if local is None or (source.marker and not _published(local, uri, required=day == run_date)):
                log.warning("%s: no complete partition for %s; reading the rest of the window", uri, day)
                continue
            partition = Partition(uri, day)
            partitions.append(partition)
            yield from _read_location(source, local, uri, partition)


def _published(local: Path, uri: str, required: bool) -> bool:
    """The partition's marker is there and its files are the ones it lists; the run date's partition must be."""
    try:
        markers.verify(local, uri)
        return True
    except markers.IncompletePartition as exc:
        if required:
            raise SourceError(str(exc)) from exc
        log.warning("%s", exc)
        return False


def _read_location(source: SourceConfig, local: Path, uri: str, partition: Partition) -> Iterator:
    if source.format == "served":
        yield from served.read_partition(local, uri, partition, source.accept, _digest_file)
        return
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
            yield from _conversations(source, _hf_rows(unit, name), name, partition.partition_date)
        elif unit.suffix == ".parquet":
            partition.files.append({"uri": name, **_digest_file(unit)})
            yield from _conversations(source, _parquet_rows(unit, name), name, partition.partition_date)
        else:
            partition.files.append({"uri": name, **_digest_file(unit)})
            yield from _conversations(source, json_files.rows(unit, name, Rejected), name,
                                                 partition.partition_date)


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


def _conversations(source: SourceConfig, rows, name: str, partition_date: str) -> Iterator:
    return records.to_conversations(rows, name, partition_date, sharegpt=source.format == "sharegpt",
                                    language=None if source.language == "auto" else source.language,
                                    keep_system=source.system_messages == "keep")


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
