"""Stage 1, ingest: chatterbot-corpus YAML -> canonical conversation table for one date partition.

    python -m pipeline ingest --config configs/embedded.yaml --run-date 2026-11-22

Output: <data_root>/conversations/dt=<date>/{turns.parquet, manifest.json}; one row per turn. The split of a
conversation comes from a hash of its id, and the id from its content, so a conversation keeps its split on
every night no matter what else is added (no train/test leakage as the data grows).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import yaml

from pipeline import storage, tracking
from pipeline.config import ProjectConfig, RunContext, as_params

log = logging.getLogger(__name__)

DATASET = "conversations"
COLUMNS = ["conversation_id", "turn_index", "role", "text", "language", "source", "split", "partition_date"]
# Directory names in chatterbot-corpus -> language codes used in metrics and reports.
LANGUAGE_CODES = {"english": "en", "chinese": "zh", "traditionalchinese": "zh-Hant", "japanese": "ja"}


@dataclass(frozen=True)
class IngestConfig:
    corpus_dir: str | None = field(
        default=None, metadata={"help": "chatterbot-corpus data dir; default: the installed chatterbot_corpus."}
    )
    languages: list[str] = field(
        default_factory=lambda: ["english", "chinese"], metadata={"help": "Corpus language directories to read."}
    )
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of conversations held for val."})
    test_fraction: float = field(default=0.1, metadata={"help": "Share of conversations held out for test."})
    max_chars: int = field(default=2000, metadata={"help": "Utterances longer than this are truncated."})

    def __post_init__(self):
        if not 0 < self.validation_fraction + self.test_fraction < 1:
            raise ValueError("validation_fraction + test_fraction must be in (0, 1)")


def run(config: IngestConfig, project: ProjectConfig, ctx: RunContext) -> Path:
    with tracking.stage_run(project, ctx, "ingest"):
        mlflow.log_params(as_params(config, "ingest"))
        turns, counts = read_corpus(config)
        turns = assign_splits(turns, config)
        turns["partition_date"] = ctx.run_date
        output = write_partition(turns, project, ctx, counts)
        log_summary(turns, counts, output)
    return output


def read_corpus(config: IngestConfig) -> tuple[pd.DataFrame, Counter]:
    """Read every conversation of the configured languages; skip (and count) the malformed ones."""
    root = Path(config.corpus_dir) if config.corpus_dir else Path(importlib.resources.files("chatterbot_corpus")) / "data"
    rows, counts, seen = [], Counter(), set()
    for language in config.languages:
        files = sorted((root / language).glob("*.yml"))
        if not files:
            raise FileNotFoundError(f"{root / language}: no *.yml files for language {language!r}")
        code = LANGUAGE_CODES.get(language, language)
        for path in files:
            for utterances in _conversations(path, counts):
                utterances = [u[: config.max_chars] for u in utterances]
                conversation_id = _conversation_id(code, utterances)
                if conversation_id in seen:  # exact duplicates would appear twice in training and could straddle splits
                    counts["skipped_duplicate"] += 1
                    continue
                seen.add(conversation_id)
                counts["conversations"] += 1
                source = f"chatterbot/{language}/{path.name}"
                for index, text in enumerate(utterances):
                    role = "user" if index % 2 == 0 else "assistant"
                    rows.append((conversation_id, index, role, text, code, source))
    frame = pd.DataFrame(rows, columns=COLUMNS[:6])
    return frame.astype({"turn_index": "int32"}), counts


def assign_splits(turns: pd.DataFrame, config: IngestConfig) -> pd.DataFrame:
    """train/validation/test by a hash of the conversation id: deterministic and stable as data grows."""
    bucket = turns["conversation_id"].map(lambda cid: int(hashlib.sha256(cid.encode()).hexdigest()[:8], 16) / 2**32)
    test_cut = 1 - config.test_fraction
    val_cut = test_cut - config.validation_fraction
    turns["split"] = "train"
    turns.loc[bucket >= val_cut, "split"] = "validation"
    turns.loc[bucket >= test_cut, "split"] = "test"
    return turns.sort_values(["split", "conversation_id", "turn_index"], ignore_index=True)


def write_partition(turns: pd.DataFrame, project: ProjectConfig, ctx: RunContext, counts: Counter) -> Path:
    final = storage.partition_dir(project, DATASET, ctx.run_date)
    with storage.atomic_dir(final) as scratch:
        turns[COLUMNS].to_parquet(scratch / "turns.parquet", index=False)
        manifest = {
            "dataset": DATASET,
            "partition_date": ctx.run_date,
            "files": ["turns.parquet"],
            "digest": storage.file_digest([scratch / "turns.parquet"]),
            "rows": len(turns),
            "rows_per_split": turns["split"].value_counts().sort_index().to_dict(),
            "conversations_per_split": turns.groupby("split")["conversation_id"].nunique().to_dict(),
            "counts": dict(sorted(counts.items())),
        }
        storage.write_json(scratch / storage.MANIFEST, manifest)  # last: marks the partition complete
    return final


def log_summary(turns: pd.DataFrame, counts: Counter, output: Path) -> None:
    manifest = storage.read_manifest(output)
    mlflow.log_metrics({f"ingest.{k}": v for k, v in counts.items()})
    mlflow.log_metrics({f"ingest.rows_{k}": v for k, v in manifest["rows_per_split"].items()})
    mlflow.log_params({"data.partition": str(output), "data.digest": manifest["digest"]})
    mlflow.log_input(
        mlflow.data.from_pandas(turns, source=str(output / "turns.parquet"), name=f"{DATASET}@{output.name}"),
        context="ingest",
    )
    tracking.log_to_parent(tags={"data.digest": manifest["digest"], "data.partition": str(output)})
    log.info("ingested %s turns into %s (%s)", len(turns), output, dict(counts))


def _conversations(path: Path, counts: Counter):
    """Yield each conversation of a corpus file as a list of strings."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot parse corpus file: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("conversations"), list):
        raise ValueError(f"{path}: expected a mapping with a 'conversations' list")
    for number, conversation in enumerate(document["conversations"], start=1):
        # Some corpus entries are a single string (an indentation error in the YAML) or one utterance only.
        if not isinstance(conversation, list):
            counts["skipped_not_a_list"] += 1
            log.debug("%s: conversation %d is not a list; skipped", path, number)
            continue
        utterances = [" ".join(str(u).split()) for u in conversation if u is not None]
        utterances = [u for u in utterances if u]
        if len(utterances) < 2:
            counts["skipped_too_short"] += 1
            continue
        yield utterances


def _conversation_id(language: str, utterances: list[str]) -> str:
    return hashlib.sha256("\x1f".join([language, *utterances]).encode("utf-8")).hexdigest()[:16]
