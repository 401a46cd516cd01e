"""Replay (`train.replay`): beside tonight's train conversations, a seeded sample of train conversations from
earlier nights' partitions, so that a model that starts from the champion keeps seeing what it learned before
instead of drifting to tonight's topics only.

    extra, counts = replay.draw(tonight, project, "2026-12-05", fraction=0.5, days=30, seed=42)

The sample is `fraction` x tonight's train conversations (not a share of everything ever seen): the nightly step
budget and the time per night do not grow with the number of past partitions. Candidates are the train split of the
partitions of the `days` days before the run date, minus the conversations tonight already holds (a static source
such as chatterbot is in every partition; it is replayed only as far as tonight lacks it), plus the conversations of
replay sources (`ingest.sources[].role: replay`, split 'replay': a static set beside a feed, tonight's and earlier).
Splits are assigned by a hash of the conversation and never change, so a replayed conversation was never test or
validation anywhere.
Each partition is read as train reads its own (its manifest's digest checked). A day of the range without a
partition (a night that was skipped, data deleted) is named in the log and counted; the night goes on from what
is there. Counts per source and per partition date go to the train run.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd

from pipeline.config import ProjectConfig
from pipeline.data import partitions, table
from pipeline.storage import outputs

log = logging.getLogger(__name__)
REPLAYABLE = (table.TRAIN, table.REPLAY)  # never an earlier night's validation or test conversation


def draw(tonight: pd.DataFrame, project: ProjectConfig, run_date: str, fraction: float, days: int,
         seed: int, static_share: float = 0.5) -> tuple[pd.DataFrame, dict[str, float]]:
    """(turns of the replayed conversations, split 'train'; counts for MLflow). `static_share` of them come from
    replay sources (split 'replay'), the rest from earlier nights' train splits; either fills what the other lacks."""
    counts: dict[str, float] = {"replay/missing_partitions": 0, "replay/unvalidated_partitions": 0}
    wanted = int(round(fraction * tonight.loc[tonight["split"] == table.TRAIN, "conversation_id"].nunique()))
    if wanted == 0:
        return tonight.iloc[0:0], {**counts, "replay/conversations": 0}
    pool, have = [tonight[tonight["split"] == table.REPLAY]], set(tonight["conversation_id"])
    earlier = partitions.earlier(project, run_date, range(1, days + 1))  # only days validate approved
    for day in earlier.missing:
        log.warning("replay: no partition %s; replaying from the other days",
                    outputs.partition_dir(project, table.DATASET, day))
    counts.update({"replay/missing_partitions": len(earlier.missing),
                   "replay/unvalidated_partitions": len(earlier.unvalidated)})
    for _, partition in earlier.approved:
        turns = partition.turns[partition.turns["split"].isin(REPLAYABLE) & ~partition.turns["conversation_id"].isin(have)]
        have.update(turns["conversation_id"])
        pool.append(turns)
    candidates = pd.concat(pool, ignore_index=True)
    if candidates.empty:
        return tonight.iloc[0:0], {**counts, "replay/conversations": 0}
    chosen = _stratified(candidates, wanted, static_share, np.random.default_rng(seed))
    replayed = candidates[candidates["conversation_id"].isin(set(chosen))]
    first_turns = replayed.drop_duplicates("conversation_id")
    counts.update({"replay/conversations": len(chosen), "replay/candidates": candidates["conversation_id"].nunique(),
                   **{f"replay/source/{k}": v for k, v in Counter(first_turns["source"].map(_short)).items()},
                   **{f"replay/date/{k}": v for k, v in Counter(first_turns["partition_date"]).items()}})
    log.info("replay: %d of %d earlier train conversations beside tonight's", len(chosen), counts["replay/candidates"])
    return replayed.assign(split=table.TRAIN).reset_index(drop=True), counts


def _stratified(candidates: pd.DataFrame, wanted: int, static_share: float, rng: np.random.Generator) -> list:
    """Ids drawn without replacement: round(static_share x wanted) from the replay sources' conversations, the rest
    from earlier nights'. Strata, because a static set of a thousand conversations beside a few dozen a night would
    otherwise leave the earlier nights almost never drawn. Sorted ids: the draw depends on the seed, not file order."""
    is_static = candidates.drop_duplicates("conversation_id").set_index("conversation_id")["split"] == table.REPLAY
    static, earlier = np.sort(is_static.index[is_static]), np.sort(is_static.index[~is_static])
    from_static = min(len(static), max(int(round(static_share * wanted)), wanted - len(earlier)))
    from_earlier = min(len(earlier), wanted - from_static)
    return [*rng.choice(earlier, size=from_earlier, replace=False), *rng.choice(static, size=from_static, replace=False)]


def _short(source: str) -> str:
    """A source's name for a metric: a partitioned location's last part (s3://chat-logs/openai/dt=.../x.jsonl ->
    openai), a package's name (package://chatterbot_corpus/... -> chatterbot_corpus), else the file's name. MLflow
    metric names allow / - . _ and alphanumerics."""
    scheme, _, path = str(source).rpartition("://")
    parts = [part for part in path.split("/dt=", 1)[0].split("/") if part]
    name = parts[0] if scheme == "package" and "/dt=" not in path else parts[-1] if parts else "unknown"
    return "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in name)
