"""The conversation table: one row per turn, the contract between ingest and every stage after it.

    <data_root>/conversations/dt=<date>/turns.parquet       COLUMNS, sorted by split, conversation_id, turn_index
    <data_root>/conversations/dt=<date>/quarantine.jsonl    what ingest set aside, one JSON object per line

ingest writes it, validate checks it (its schema rule is COLUMNS, its split rule SPLITS), train and evaluate read it.
"""

DATASET = "conversations"  # the partitioned dataset's directory under data_root
TURNS_FILE = "turns.parquet"
QUARANTINE_FILE = "quarantine.jsonl"
COLUMNS = ["conversation_id", "turn_index", "role", "text", "language", "source", "split", "partition_date"]
TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = [TRAIN, VALIDATION, TEST]  # assigned by a hash of the conversation (ingest.assign_splits)
# A replay source's conversations (ingest.sources[].role: replay, a static set beside a feed): never tonight's test or
# validation, trained on only as far as train.replay draws them (training/replay.py).
REPLAY = "replay"
SPLIT_VALUES = [*SPLITS, REPLAY]
