"""Real partitions of the dated chat feed (ops/chat_feed.py), written by the ingest stage for a few nights: what
replay (training) and the memory set (evaluation) draw from. The `feed_nights` fixture (tests/conftest.py) builds
them once per session."""

from __future__ import annotations

import datetime
from pathlib import Path

from ops import chat_feed
from pipeline import ingest
from pipeline.config import ProjectConfig, RunContext

FEED_END = datetime.date(2026, 12, 5)
NIGHTS = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-06"]  # two-speaker conversations: 28, 30, 21, 28


def ingest_nights(root: Path) -> ProjectConfig:
    chat_feed.publish(str(root / "feed"), FEED_END)
    project = ProjectConfig(data_root=str(root / "data"), runs_root=str(root / "runs"),
                            tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "art"))
    source = {"format": "openai", "uri": str(root / "feed"), "partitioned": True, "marker": True, "language": "en"}
    for date in NIGHTS:
        ingest.run(ingest.IngestConfig(sources=[source]), project, RunContext(date, f"night-{date}"))
    return project
