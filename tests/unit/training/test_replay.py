"""Replay: beside tonight's train conversations, a seeded sample of earlier nights' train conversations, sized by
tonight's (not by the history), never one tonight holds, counted per source and date; a missing day is counted
and skipped. On real partitions: the chat feed's days, ingested by the ingest stage."""

from pathlib import Path

import pandas as pd
import pytest
from feed_nights import NIGHTS, SMALL_NIGHT, feed_source, ingest_night

from pipeline.config import ProjectConfig
from pipeline.data import partitions, table
from pipeline.storage import outputs
from pipeline.training import replay


@pytest.fixture
def nights(feed_nights) -> ProjectConfig:
    return feed_nights


def tonight(project: ProjectConfig) -> pd.DataFrame:
    return partitions.read(str(outputs.partition_dir(project, table.DATASET, NIGHTS[-1]))).turns


def test_replay_is_sized_by_tonight_drawn_from_earlier_train_splits_and_counted(nights):
    turns = tonight(nights)
    extra, counts = replay.draw(turns, nights, NIGHTS[-1], fraction=0.5, days=5, seed=7)
    own = turns.loc[turns["split"] == "train", "conversation_id"].nunique()
    replayed = extra["conversation_id"].unique()
    assert len(replayed) == counts["replay/conversations"] == round(0.5 * own) > 0
    assert set(extra["split"]) == {"train"} and not set(replayed) & set(turns["conversation_id"])
    assert set(extra["partition_date"]) <= set(NIGHTS[:-1])
    dates = {k.removeprefix("replay/date/"): v for k, v in counts.items() if k.startswith("replay/date/")}
    assert sum(dates.values()) == len(replayed) and set(dates) <= set(NIGHTS[:-1])
    assert sum(v for k, v in counts.items() if k.startswith("replay/source/")) == len(replayed)
    assert counts["replay/missing_partitions"] == 2  # 11-04 and 11-05: no night ran
    again, _ = replay.draw(turns, nights, NIGHTS[-1], fraction=0.5, days=5, seed=7)
    assert again.equals(extra)  # seeded
    other, _ = replay.draw(turns, nights, NIGHTS[-1], fraction=0.5, days=5, seed=8)
    assert set(other["conversation_id"]) != set(replayed)
    # every turn of a replayed conversation comes along, in order
    assert (extra.groupby("conversation_id")["turn_index"].apply(lambda s: list(s) == list(range(len(s))))).all()


def test_the_budget_does_not_grow_with_history_and_nothing_asked_is_nothing_drawn(nights):
    turns = tonight(nights)
    near, _ = replay.draw(turns, nights, NIGHTS[-1], fraction=0.5, days=3, seed=7)
    far, _ = replay.draw(turns, nights, NIGHTS[-1], fraction=0.5, days=30, seed=7)
    assert far["conversation_id"].nunique() == near["conversation_id"].nunique()
    none, counts = replay.draw(turns, nights, NIGHTS[-1], fraction=0.0, days=30, seed=7)
    assert none.empty and counts["replay/conversations"] == 0


def test_a_partition_gone_missing_is_counted_and_the_rest_replayed(nights, tmp_path, caplog):
    import shutil

    project = ProjectConfig(data_root=str(tmp_path / "data"), runs_root=nights.runs_root,
                            tracking_uri=nights.tracking_uri, artifact_root=nights.artifact_root)
    shutil.copytree(nights.data_root, tmp_path / "data")
    shutil.rmtree(outputs.partition_dir(project, table.DATASET, NIGHTS[1]))
    extra, counts = replay.draw(tonight(project), project, NIGHTS[-1], fraction=0.5, days=5, seed=7)
    assert counts["replay/missing_partitions"] == 3 and not extra.empty
    assert NIGHTS[1] not in set(extra["partition_date"])
    assert f"no partition {outputs.partition_dir(project, table.DATASET, NIGHTS[1])}" in caplog.text


def test_days_validate_did_not_approve_are_neither_replayed_nor_scored(nights, tmp_path, caplog):
    """Earlier nights are read only as validate approved them. 11-02 re-ingested and refused by a stricter contract
    (a night that failed validate), 11-03 re-ingested since its validate passed: replay, the held-out window and the
    memory set all skip both, count them and name them."""
    import shutil

    from pipeline import validate
    from pipeline.config import RunContext
    from pipeline.evaluation import held_out, memory_set

    project = ProjectConfig(data_root=str(tmp_path / "data"), runs_root=str(tmp_path / "runs"),
                            tracking_uri=nights.tracking_uri, artifact_root=nights.artifact_root)
    shutil.copytree(nights.data_root, tmp_path / "data")
    shutil.copytree(Path(nights.data_root).parent / "feed", tmp_path / "feed")
    failed, reingested = NIGHTS[1], NIGHTS[2]
    refused = ingest_night(project, failed, "failed-night")
    with pytest.raises(validate.DataValidationError, match="min_conversations"):
        validate.run(validate.ValidateConfig(), project, RunContext(failed, "failed-night"), refused)
    ingest_night(project, reingested, "late-data")

    turns = tonight(project)
    extra, counts = replay.draw(turns, project, NIGHTS[-1], fraction=0.5, days=5, seed=7)
    assert counts["replay/unvalidated_partitions"] == 2 and not extra.empty
    assert set(extra["partition_date"]) == {NIGHTS[0]}
    assert f"{outputs.partition_dir(project, table.DATASET, failed)} not approved by validate" in caplog.text
    _, about = held_out.window(turns, project, NIGHTS[-1], days=5, split="test")
    assert about["unvalidated_days"] == [reingested, failed] and about["earlier_partitions"] == []
    found, drawn = memory_set.examples(memory_set.MemoryConfig(size=100, days=10), project, NIGHTS[-1], turns)
    assert drawn["partitions"] == [NIGHTS[0]] and drawn["unvalidated_days"] == [reingested, failed]
    assert {e.conversation_id for e in found} <= set(partitions.read(str(outputs.partition_dir(
        project, table.DATASET, NIGHTS[0]))).turns["conversation_id"])
    # validate passing the re-ingested day approves it again: it is read from then on
    validate.run(validate.ValidateConfig(min_conversations=SMALL_NIGHT), project, RunContext(reingested, "late-data"),
                 str(outputs.partition_dir(project, table.DATASET, reingested)))
    _, counts = replay.draw(turns, project, NIGHTS[-1], fraction=0.5, days=5, seed=7)
    assert counts["replay/unvalidated_partitions"] == 1


@pytest.fixture
def with_static_set(nights, tmp_path) -> tuple[ProjectConfig, pd.DataFrame]:
    """Tonight re-ingested with a static set beside the feed as a replay source (ingest.sources[].role: replay);
    the earlier nights as they were."""
    import json
    import shutil

    from pipeline import ingest
    from pipeline.config import RunContext

    static = tmp_path / "static.jsonl"
    static.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is fact number {i} about the {topic}?"},
        {"role": "assistant", "content": f"Fact {i}: the {topic} has {i + 2} sides in this story."}]}) + "\n"
        for i in range(40) for topic in ("castle",)))
    project = ProjectConfig(data_root=str(tmp_path / "data"), runs_root=nights.runs_root,
                            tracking_uri=nights.tracking_uri, artifact_root=nights.artifact_root)
    shutil.copytree(nights.data_root, tmp_path / "data")
    sources = [feed_source(nights), {"format": "openai", "uri": str(static), "language": "en", "role": "replay"}]
    ingest.run(ingest.IngestConfig(sources=sources), project, RunContext(NIGHTS[-1], "with-static"))
    return project, tonight(project)


def test_a_replay_sources_conversations_are_never_tonights_test_and_are_drawn_as_replay(with_static_set):
    project, turns = with_static_set
    static = turns[turns["source"].str.endswith("static.jsonl")]
    assert static["conversation_id"].nunique() == 40 and set(static["split"]) == {"replay"}
    fed = turns[~turns["source"].str.endswith("static.jsonl")]
    assert set(fed["split"]) == {"train", "validation", "test"}  # tonight's held-out split is the feed's alone

    extra, counts = replay.draw(turns, project, NIGHTS[-1], fraction=1.0, days=5, seed=7)
    own = fed.loc[fed["split"] == "train", "conversation_id"].nunique()
    drawn = extra.drop_duplicates("conversation_id")
    assert len(drawn) == counts["replay/conversations"] == own and set(extra["split"]) == {"train"}
    assert counts["replay/source/static.jsonl"] == drawn["source"].str.endswith("static.jsonl").sum() > 0
    assert counts["replay/source/static.jsonl"] < 40  # drawn, not all of it every night
    assert not set(drawn["conversation_id"]) & set(fed["conversation_id"])


def test_the_static_set_does_not_crowd_out_the_earlier_nights(with_static_set):
    """Half the replay from the static set, half from earlier nights (replay_static_share 0.5), though the static
    set is a few times larger; with a share of 0 or 1 one stratum fills the whole draw as far as it can."""
    project, turns = with_static_set
    own = turns.loc[turns["split"] == "train", "conversation_id"].nunique()

    def by_source(share):
        extra, counts = replay.draw(turns, project, NIGHTS[-1], fraction=1.0, days=5, seed=7, static_share=share)
        return counts.get("replay/source/static.jsonl", 0), counts.get("replay/source/feed", 0), counts

    static, earlier, counts = by_source(0.5)
    assert static + earlier == counts["replay/conversations"] == own and abs(static - earlier) <= 1
    assert by_source(0.0)[:2] == (0, own) and by_source(1.0)[:2] == (min(40, own), own - min(40, own))


def test_without_replay_a_replay_source_is_not_trained_on(with_static_set):
    project, turns = with_static_set
    none, counts = replay.draw(turns, project, NIGHTS[-1], fraction=0.0, days=5, seed=7)
    assert none.empty and counts["replay/conversations"] == 0
