"""Stage 1, ingest: dialogue sources (see pipeline/data/sources.py) -> one cleaned, canonical table per date partition.

    python -m pipeline ingest --config configs/embedded.yaml --run-date 2026-11-22

Reads every configured source over the window (the logical date and `window_days - 1` days before it), cleans
(Unicode form, whitespace, PII masking, length limit), drops exact and near-exact duplicate conversations and
assigns splits. Output: <data_root>/conversations/dt=<date>/{turns.parquet, quarantine.jsonl, manifest.json}, one
row per turn, written atomically; a rerun of the same date and inputs gives byte-identical files.

Splits never move. A conversation's id is a digest of its language and exact cleaned text: downstream stages
sort, group and report by it, so it stays what it always was. Its split, though, comes from a hash of its *near
key*, the key near-duplicate resolution merges on: language plus the turns reduced to lower-case letters and digits
after NFKC (cleaning.near_duplicate_text). Resolution keeps the newest partition's copy, so the surviving copy - and
with it the exact id - changes from night to night when a re-cased or re-punctuated copy arrives; the near key
cannot change, so every copy, and whichever survives, gets the split the first copy got: a conversation the champion
trained on never shows up in a later test split. The split uses the near key with near_dedup off too: near copies
then all survive, and they must still share one split, or a re-cased copy in test scores the model on its training
data. The language is part of the key because the dedup counts it (language detection sees letters, not case or
punctuation, so copies get the same one); a copy that two sources label with different languages is not covered.
"Edited" copies covered: case, punctuation, whitespace, invisible characters, Unicode form (full width, composed
accents), a different masked e-mail or phone number. A changed, added or removed word, or a turn cut in two, makes a
different conversation with a split of its own (tests/unit/test_stable_splits.py).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import ProjectConfig, RunContext, as_params, build
from pipeline.data import cleaning, publishing, sources, table
from pipeline.process import outcomes
from pipeline.storage import outputs
from pipeline.tracking import runs

log = logging.getLogger(__name__)



class IngestError(RuntimeError):
    """Nothing usable was read; the message names the sources."""


@dataclass(frozen=True)
class IngestConfig:
    sources: list[dict] = field(
        default_factory=lambda: [{"format": "chatterbot", "languages": ["english", "chinese"]}],
        metadata={"help": "Dialogue sources (pipeline/data/sources.py SourceConfig): format, uri, partitioned, ..."},
    )
    window_days: int = field(default=1, metadata={"help": "Partitioned sources: read this many days up to the date."})
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of conversations held for val."})
    test_fraction: float = field(default=0.1, metadata={"help": "Share of conversations held out for test."})
    max_chars: int = field(default=2000, metadata={"help": "A conversation with a longer turn is quarantined."})
    unicode_form: str = field(
        default="NFC", metadata={"help": "NFC keeps full-width CJK punctuation; NFKC folds it to ASCII; or none."}
    )
    mask_pii: bool = field(default=True, metadata={"help": "Replace e-mails, phone and card numbers by <EMAIL>..."})
    empty_day: str = field(default="fail", metadata={
        "help": "A night whose partitioned sources hold 0 usable conversations for its window: fail (the task "
                "fails, naming them) or skip (the night is skipped, nothing trained)."})
    near_dedup: bool = field(default=True, metadata={
        "help": "Also drop conversations equal up to case/punctuation (splits come from that key either way)."})
    languages: list[str] | None = field(default=None, metadata={
        "help": "Language codes kept (as validate.languages); a conversation in another, or und, is quarantined and "
                "counted per language, judged by the junk-rate rule. null: all kept (validate then stops the night)."})

    def __post_init__(self):
        if not 0 < self.validation_fraction + self.test_fraction < 1:
            raise ValueError("validation_fraction + test_fraction must be in (0, 1)")
        if self.window_days < 1:
            raise ValueError("window_days must be >= 1")
        if self.empty_day not in ("fail", "skip"):
            raise ValueError(f"empty_day must be fail or skip, got {self.empty_day!r}")
        if self.unicode_form not in ("NFC", "NFKC", "none"):
            raise ValueError(f"unicode_form {self.unicode_form!r}: expected NFC, NFKC or none")
        if not self.sources:
            raise ValueError("at least one source is needed")
        for number, source in enumerate(self.sources, start=1):
            build(sources.SourceConfig, source, f"ingest.sources[{number}]")


def run(config: IngestConfig, project: ProjectConfig, ctx: RunContext) -> Path:
    with runs.stage_run(project, ctx, "ingest"):
        mlflow.log_params(as_params(config, "ingest"))
        try:
            turns, quarantine, summary = collect(config, ctx.run_date)
        except outcomes.Skipped as skipped:  # the stage run ends FINISHED, saying why; the task is skipped
            runs.log_to_parent(tags={"skipped": str(skipped)})
            mlflow.set_tag("skipped", str(skipped))
            output = skipped
        else:
            output = publishing.write_partition(turns, quarantine, summary, project, ctx)
            log_summary(output)
    if isinstance(output, outcomes.Skipped):
        raise output
    return output


def collect(config: IngestConfig, run_date: str) -> tuple[pd.DataFrame, list[dict], dict]:
    """Read, clean, de-duplicate and split: the partition's turns, its quarantine, and what happened."""
    conversations, rejected, dropped, partitions, configured = [], [], [], [], []
    for number, raw in enumerate(config.sources, start=1):
        source = build(sources.SourceConfig, raw, f"ingest.sources[{number}]")
        configured.append(source)
        for item in sources.read(source, run_date, config.window_days, partitions):
            item.entry = number
            (dropped if isinstance(item, sources.Dropped)
             else rejected if isinstance(item, sources.Rejected) else conversations).append(item)
    read = len(conversations) + len(rejected)
    read_by_entry = Counter(c.entry for c in conversations) + Counter(r.entry for r in rejected)
    _refuse_nothing_usable(config, configured, conversations, rejected, partitions, run_date)
    replay = {number for number, source in enumerate(configured, 1) if source.role == sources.REPLAY_ROLE}
    turns, more_rejected, counts, kept = clean(conversations, config, replay)
    rejected += more_rejected
    # again: cleaning may quarantine the day's last conversations (an empty or overlong turn)
    _refuse_nothing_usable(config, configured, kept, rejected, partitions, run_date)
    counts.update(read=read, rejected=len(rejected))
    counts.update(Counter(f"rejected.{_rule(r.reason)}" for r in rejected))
    # a source's own rule (a served exchange rated down) leaves records out: counted, not junk
    counts.update(Counter(f"dropped.{_rule(d.reason)}" for d in dropped))
    counts.update(Counter(c.outcome for c in conversations if c.outcome))
    for r in rejected[:20]:
        log.warning("quarantined %s: %s", r.origin, r.reason)
    quarantine = _quarantine_rows(rejected)
    summary = {
        "window": sources.window(run_date, config.window_days),
        "inputs": [{"uri": p.uri, "partition_date": p.partition_date, "files": p.files} for p in partitions],
        "input_digest": outputs.text_digest(json.dumps([p.files for p in partitions], sort_keys=True)),
        "counts": dict(sorted(counts.items())),
        "sources": per_source(configured, read_by_entry, rejected),
    }
    return turns, quarantine, summary


def _refuse_nothing_usable(config: IngestConfig, configured: list, conversations: list, rejected: list,
                           partitions: list, run_date: str) -> None:
    """New data is what the partitioned sources hold; with none usable there is nothing new to learn from, and a
    night on the static sources alone would retrain on what earlier nights already had (ingest.empty_day says:
    skip or fail). With no usable conversation at all, fail naming what was read and why it was quarantined."""
    fed = [n for n, source in enumerate(configured, start=1) if source.partitioned]
    if fed and not any(c.entry in fed for c in conversations):
        junk = sum(r.entry in fed for r in rejected)
        message = (f"empty day {run_date}: 0 usable conversations in the partitioned sources "
                   f"{[configured[n - 1].uri for n in fed]} ({junk} quarantined); ingest.empty_day={config.empty_day}")
        raise (outcomes.Skipped if config.empty_day == "skip" else IngestError)(message)
    if not conversations:
        raise IngestError(f"no conversation could be read from {[p.uri for p in partitions]} "
                          f"({len(rejected)} rejected, e.g. {[r.origin + ': ' + r.reason for r in rejected[:3]]})")


def per_source(configured: list, read: Counter, rejected: list) -> list[dict]:
    """Records read and quarantined per entry of ingest.sources, how many of those are its expected junk, with the
    rate validate allows the rest (None: its global max_quarantine_ratio). A conversation dropped in cleaning counts
    as quarantined by its source."""
    quarantined = Counter(r.entry for r in rejected)
    expected = Counter(r.entry for r in rejected if _rule(r.reason) in configured[r.entry - 1].expected_junk)
    return [{"source": f"{number}: {source.format} {source.uri or 'package'}", "read": read[number],
             "quarantined": quarantined[number], "expected_junk": expected[number],
             "max_quarantine_ratio": source.max_quarantine_ratio}
            for number, source in enumerate(configured, start=1)]


def clean(conversations: list[sources.Conversation], config: IngestConfig,
          replay: set[int] = frozenset()) -> tuple[pd.DataFrame, list, Counter, list]:
    """(turns, conversations quarantined here, counts, the conversations kept). Conversations of the `replay`
    entries of ingest.sources are split 'replay' (SourceConfig.role)."""
    system = np.array([c.messages[0][0] == "system" for c in conversations], dtype=int)
    counts = Counter(turns_read=sum(len(c.messages) for c in conversations),
                     system_messages_dropped=sum(c.system_dropped for c in conversations),
                     system_messages_kept=int(system.sum()))
    record = np.repeat(np.arange(len(conversations)), [len(c.messages) for c in conversations])
    texts = cleaning.normalize(pa.array([t for c in conversations for _, t in c.messages], pa.large_string()),
                               config.unicode_form)
    if config.mask_pii:
        texts, found, touched = cleaning.mask_pii(texts)
        counts.update({f"pii.{kind}": n for kind, n in found.items()})
        counts["pii.turns"] = int(touched.sum())
    # A conversation with an empty or overlong turn is quarantined whole: cutting a reply teaches half sentences.
    lengths = pc.utf8_length(texts).to_numpy()
    bad = (lengths == 0) | (lengths > config.max_chars)
    # a kept system message is turn -1: the user's first turn is 0 in every conversation (validate's alternation)
    turn_index = np.arange(len(record)) - np.searchsorted(record, record) - system[record]
    rejected, bad_records = [], set()
    for index in np.flatnonzero(bad):
        if record[index] in bad_records:
            continue
        bad_records.add(record[index])
        reason = ("empty after cleaning" if lengths[index] == 0
                  else f"{lengths[index]} characters, over max_chars={config.max_chars}")
        conversation = conversations[record[index]]
        where = "system message" if turn_index[index] < 0 else f"turn {turn_index[index] + 1}"
        rejected.append(sources.Rejected(conversation.origin, f"{where}: {reason}",
                                         json.dumps(conversation.messages, ensure_ascii=False)[:300], conversation.entry))
    keep_turn = ~np.isin(record, list(bad_records))
    kept = [c for i, c in enumerate(conversations) if i not in bad_records]
    if not kept:
        return pd.DataFrame(), rejected, counts, kept
    sizes = np.array([len(c.messages) for c in kept], dtype=int)
    texts, record = texts.filter(pa.array(keep_turn)), np.repeat(np.arange(len(kept)), sizes)
    turn_index, text_list = turn_index[keep_turn], texts.to_pylist()

    # Only records that do not state their language cost identification time (chatterbot's directories state it).
    detected = cleaning.detect_language(texts, record, len(kept),
                                        needed=np.array([c.language is None for c in kept], dtype=bool))
    languages = [c.language or detected[i] for i, c in enumerate(kept)]
    ends = np.cumsum(sizes)
    starts = ends - sizes
    ids = cleaning.conversation_digests(languages, text_list, starts, ends)
    # The near key is computed with near_dedup off too: it is the split key (see the module docstring).
    near_keys = cleaning.conversation_digests(languages, cleaning.near_duplicate_text(texts).to_pylist(), starts, ends)
    near = near_keys if config.near_dedup else ids
    allowed = _in_languages(kept, languages, config.languages, rejected, counts)
    if not allowed.any():
        return pd.DataFrame(), rejected, counts, []
    # Which copy survives must not depend on file order: the newest partition's, then the smallest id.
    table = pd.DataFrame({"record": np.arange(len(kept)), "conversation_id": ids, "near": near,
                          "partition_date": [c.partition_date for c in kept]})[allowed]
    table = table.sort_values(["partition_date", "conversation_id"], ascending=[False, True], kind="stable")
    exact_dup = table["conversation_id"].duplicated()
    near_dup = table["near"].duplicated() & ~exact_dup
    counts.update({"duplicates.exact": int(exact_dup.sum()), "duplicates.near": int(near_dup.sum())})
    survivors = np.sort(table.loc[~(exact_dup | near_dup), "record"].to_numpy())
    counts["conversations"] = len(survivors)

    keep = np.isin(record, survivors)
    turns = pd.DataFrame({
        "conversation_id": np.asarray(ids, dtype=object)[record[keep]],
        "split_key": np.asarray(near_keys, dtype=object)[record[keep]],
        "turn_index": turn_index[keep].astype("int32"),
        "role": [role for i in survivors for role, _ in kept[i].messages],
        "text": np.asarray(text_list, dtype=object)[keep],
        "language": np.asarray(languages, dtype=object)[record[keep]],
        "source": np.asarray([c.source for c in kept], dtype=object)[record[keep]],
        "partition_date": np.asarray([c.partition_date for c in kept], dtype=object)[record[keep]],
    })
    # Keys of every replay conversation read, also of copies that de-duplication drops in favour of a nightly one.
    turns = assign_splits(turns, config, replay_keys={k for k, c in zip(near_keys, kept, strict=True) if c.entry in replay})
    counts["turns"] = len(turns)
    return turns, rejected, counts, [c for c, ok in zip(kept, allowed, strict=True) if ok]


def _in_languages(kept: list, languages: list[str], allowed: list[str] | None, rejected: list, counts: Counter):
    """Which conversations are in `allowed` (ingest.languages; None: all). The others are quarantined, one reason
    naming the language, and counted per language (`rejected.language.<code>`): a few chats in another language
    (or `und`, a two-word exchange lingua cannot place) are junk for the ratio rule to judge, not a failed night."""
    if allowed is None:
        return np.ones(len(kept), dtype=bool)
    inside = np.isin(np.asarray(languages, dtype=object), allowed)
    for index in np.flatnonzero(~inside):
        conversation, language = kept[index], languages[index]
        rejected.append(sources.Rejected(conversation.origin, f"language: {language} is not one of ingest.languages "
                                         f"{allowed}", json.dumps(conversation.messages, ensure_ascii=False)[:300],
                                         conversation.entry))
        counts[f"rejected.language.{language}"] += 1
    return inside


def assign_splits(turns: pd.DataFrame, config: IngestConfig, replay_keys: set = frozenset()) -> pd.DataFrame:
    """train/validation/test by a hash of each turn's `split_key` (the near key, see the module docstring):
    deterministic, and stable as data grows and as near copies replace each other. Conversations whose key is one
    of `replay_keys` (a replay source's, and their near copies) are split 'replay'. Drops the key column."""
    unique = pd.unique(turns["split_key"])
    bucket = pd.Series(cleaning.split_buckets(list(unique)), index=unique)
    test_cut = 1 - config.test_fraction
    val_cut = test_cut - config.validation_fraction
    split = pd.Series(table.TRAIN, index=unique)
    split[bucket >= val_cut] = table.VALIDATION
    split[bucket >= test_cut] = table.TEST
    turns["split"] = turns["split_key"].map(split)
    turns.loc[turns["split_key"].isin(replay_keys), "split"] = table.REPLAY  # a near copy's too: never test
    return turns.sort_values(["split", "conversation_id", "turn_index"], ignore_index=True)[table.COLUMNS]


def log_summary(output: Path) -> None:
    manifest = outputs.read_manifest(output)
    mlflow.log_metrics({f"ingest.{k}": v for k, v in manifest["counts"].items()})
    mlflow.log_metrics({f"ingest.rows_{k}": v for k, v in manifest["rows_per_split"].items()})
    mlflow.log_params({"data.partition": str(output), "data.digest": manifest["digest"],
                       "data.input_digest": manifest["input_digest"]})
    mlflow.log_artifact(str(output / outputs.MANIFEST), "data")
    if manifest["quarantined"]:
        mlflow.log_artifact(str(output / table.QUARANTINE_FILE), "data")
    runs.log_dataset(output, manifest, context="ingest")
    runs.log_to_parent(tags={"data.digest": manifest["digest"], "data.partition": str(output)})
    log.info("ingested %s turns into %s; %s", manifest["rows"], output, manifest["counts"])


def _quarantine_rows(rejected: list[sources.Rejected]) -> list[dict]:
    """Rejected records as rows; PII in their raw text is masked too (the quarantine is read by people)."""
    if not rejected:
        return []
    raw, _, _ = cleaning.mask_pii(pa.array([r.raw for r in rejected], pa.large_string()))
    rows = [{"origin": r.origin, "reason": r.reason, "raw": text} for r, text in zip(rejected, raw.to_pylist(), strict=True)]
    return sorted(rows, key=lambda row: _natural(row["origin"]))


def _rule(reason: str) -> str:
    """The rule a rejection broke, for counting: 'message 3: unknown role ...' -> 'unknown_role'."""
    reason = re.sub(r"^(message|turn) \d+: ", "", reason)
    reason = re.sub(r"^\d+ characters, over.*", "too_long", reason)
    return re.sub(r"[^a-z0-9]+", "_", re.split(r"[:(']", reason)[0].strip().lower()).strip("_")


def _natural(origin: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", origin)]
