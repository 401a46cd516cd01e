"""The memory set: earlier nights' test replies (never tonight's conversations), capped by a seeded ranking that
depends on the replies alone, so a new night changes it only where its replies rank in; missing days counted.
On real partitions of the chat feed, ingested by the ingest stage (tests/feed_nights.py)."""

import pandas as pd
import pytest
from feed_nights import NIGHTS

from pipeline.data import partitions, table
from pipeline.evaluation import held_out
from pipeline.evaluation import memory_set as memory
from pipeline.storage import outputs


def partition(project, date) -> pd.DataFrame:
    return partitions.read(str(outputs.partition_dir(project, table.DATASET, date))).turns


def test_the_set_holds_earlier_test_replies_capped_and_never_tonights(feed_nights):
    tonight = partition(feed_nights, NIGHTS[-1])
    found, about = memory.examples(memory.MemoryConfig(size=20, days=10), feed_nights, NIGHTS[-1], tonight)
    earlier = pd.concat([partition(feed_nights, d) for d in NIGHTS[:-1]])
    test_ids = set(earlier.loc[earlier["split"] == "test", "conversation_id"])
    assert len(found) == 20 < about["candidates"] and about["partitions"] == NIGHTS[-2::-1]
    assert about["missing_days"] == 10 - 3
    assert {e.conversation_id for e in found} <= test_ids - set(tonight["conversation_id"])
    assert all(e.history and e.history[-1]["role"] == "user" for e in found)


def test_a_new_night_changes_the_set_only_where_its_replies_rank_in(feed_nights):
    """The set for the last night, drawn once with the third night missing from the range and once with it."""
    tonight, config = partition(feed_nights, NIGHTS[-1]), memory.MemoryConfig(size=20, days=10)
    with_all, _ = memory.examples(config, feed_nights, NIGHTS[-1], tonight)
    without, _ = memory.examples(memory.MemoryConfig(size=20, days=4), feed_nights, NIGHTS[2], tonight)
    kept = [e for e in without if e in with_all]
    newcomers = [e for e in with_all if e not in without]
    assert len(kept) + len(newcomers) == 20 and all(e.conversation_id in set(partition(feed_nights, NIGHTS[2])[
        "conversation_id"]) for e in newcomers)
    again, _ = memory.examples(config, feed_nights, NIGHTS[-1], tonight)
    assert again == with_all  # seeded: the same set every time
    reseeded, _ = memory.examples(memory.MemoryConfig(size=20, days=10, seed=1), feed_nights, NIGHTS[-1], tonight)
    assert reseeded != with_all


def test_the_first_night_has_no_memory_and_bad_settings_are_refused(feed_nights):
    found, about = memory.examples(memory.MemoryConfig(), feed_nights, NIGHTS[0], partition(feed_nights, NIGHTS[0]))
    assert found == [] and about["partitions"] == [] and about["missing_days"] == 30
    with pytest.raises(ValueError, match="memory: size and days must be >= 1"):
        memory.MemoryConfig(size=0)


def test_the_held_out_window_adds_earlier_test_splits_and_the_memory_set_starts_after_it(feed_nights):
    """held_out_days: 3 on the last night (11-06): its own partition, then 11-05 and 11-04 (no partitions: counted);
    with 4 days, 11-03's test conversations join. The memory set then draws from the days after the window only."""
    tonight = partition(feed_nights, NIGHTS[-1])
    alone, about = held_out.window(tonight, feed_nights, NIGHTS[-1], days=3, split="test")
    assert alone.equals(tonight) and about == {"days": 3, "earlier_partitions": [], "missing_days": 2,
                                            "unvalidated_days": []}
    scored, about = held_out.window(tonight, feed_nights, NIGHTS[-1], days=4, split="test")
    before = partition(feed_nights, NIGHTS[-2])
    joined = set(before.loc[before["split"] == "test", "conversation_id"]) - set(tonight["conversation_id"])
    assert joined and about["earlier_partitions"] == [NIGHTS[-2]]
    assert set(scored["conversation_id"]) == set(tonight["conversation_id"]) | joined
    assert (scored.loc[scored["conversation_id"].isin(joined), "split"] == "test").all()

    found, drawn = memory.examples(memory.MemoryConfig(size=100, days=10), feed_nights, NIGHTS[-1], scored,
                                   after_days=3)
    assert drawn["partitions"] == NIGHTS[-3::-1]  # 11-02 and 11-01: 11-03 is in the window
    assert found and not {e.conversation_id for e in found} & set(scored["conversation_id"])
