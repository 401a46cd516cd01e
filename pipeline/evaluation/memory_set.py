"""The memory set: held-out replies of earlier nights, scored every night beside tonight's held-out split and the
anchor set, so that forgetting shows: a model that drifts to tonight's topics loses here first. Its scores are
`memory_<metric>`, which promote's gate can guard like any other key.

    evaluate:
      memory: {size: 64, days: 30, seed: 0}     # null: no memory set

The candidates are the test split of the partitions of the `days` days before the run date that follow the days
the held-out window scores (evaluate.held_out_days; held_out.window) (a conversation is test in every partition
that holds it: splits come from a hash of the conversation), minus any conversation of that window. Of their
replies, the `size` whose seeded hash of (conversation, reply) ranks first are taken: the choice depends on the
replies alone, not on reading order, so the set changes only where a new night's reply ranks in. A day without a
partition is counted and skipped.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import pandas as pd

from pipeline.config import ProjectConfig, build
from pipeline.data import table
from pipeline.evaluation import held_out
from pipeline.model import chat_format

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryConfig:
    size: int = field(default=64, metadata={"help": "Replies in the set (each costs one reply per model)."})
    days: int = field(default=30, metadata={"help": "How many days before the run date the set draws from."})
    seed: int = field(default=0, metadata={"help": "Seed of the ranking; a new seed is a new set."})

    def __post_init__(self):
        if self.size < 1 or self.days < 1:
            raise ValueError("memory: size and days must be >= 1")


def settings(values: dict) -> MemoryConfig:
    return build(MemoryConfig, values, "evaluate.memory")


def examples(config: MemoryConfig, project: ProjectConfig, run_date: str, tonight: pd.DataFrame,
             after_days: int = 0) -> tuple[list[chat_format.EvalExample], dict]:
    """The set, and what it was drawn from (partitions read, days missing, candidate replies). `after_days`: the
    days before the run date that the held-out window already scores (held_out.window), skipped."""
    earlier = held_out.past_split(project, run_date, range(after_days + 1, after_days + config.days + 1),
                                  table.TEST, set(tonight["conversation_id"]))
    candidates = chat_format.eval_examples(pd.concat(earlier.turns), table.TEST) if earlier.turns else []
    chosen = sorted(candidates, key=lambda e: _rank(config.seed, e))[:config.size]
    if earlier.missing:
        log.info("memory set: no partition for %d of the %d days before %s", earlier.missing, config.days, run_date)
    return chosen, {"partitions": earlier.read, "missing_days": earlier.missing,
                    "unvalidated_days": earlier.unvalidated, "candidates": len(candidates)}


def _rank(seed: int, example: chat_format.EvalExample) -> str:
    key = f"{seed}\0{example.conversation_id}\0{len(example.history)}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
