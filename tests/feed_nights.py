"""Real partitions of the dated chat feed (ops/chat_feed.py), written by the ingest stage for a few nights: what
replay (training) and the memory set (evaluation) draw from, each approved by the validate stage (they read only
approved days). The `feed_nights` fixture (tests/conftest.py) builds them once per session."""

from __future__ import annotations

import datetime
from pathlib import Path

from ops import chat_feed
from pipeline import ingest, validate
from pipeline.config import ProjectConfig, RunContext

FEED_END = datetime.date(2026, 12, 5)
SMALL_NIGHT = {"train": 5, "validation": 1, "test": 1}  # a feed day is small (11-03: 1 test conversation)
NIGHTS = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-06"]  # two-speaker conversations: 28, 30, 21, 28


def feed_source(project: ProjectConfig) -> dict:
    """The ingest source entry of the feed published beside the project's data_root."""
    return {"format": "openai", "uri": str(Path(project.data_root).parent / "feed"), "partitioned": True,
            "marker": True, "language": "en", "expected_junk": ["fewer_than_2_turns"]}


def ingest_night(project: ProjectConfig, date: str, run_id: str) -> str:
    """The ingest stage on the feed's partition of `date`; its output URI (pinned to the bytes written)."""
    return ingest.run(ingest.IngestConfig(sources=[feed_source(project)]), project, RunContext(date, run_id))


def ingest_nights(root: Path) -> ProjectConfig:
    chat_feed.publish(str(root / "feed"), FEED_END)
    project = ProjectConfig(data_root=str(root / "data"), runs_root=str(root / "runs"),
                            tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "art"))
    for date in NIGHTS:
        dataset = ingest_night(project, date, f"night-{date}")
        validate.run(validate.ValidateConfig(min_conversations=SMALL_NIGHT), project, RunContext(date, f"night-{date}"),
                     dataset)
    return project
