"""The night waits for its day: a deferrable sensor on the completion markers (pipeline/data/markers.py) of the run
date's partitions, before ingest reads them.

    wait = PublishedPartitionSensor(task_id="wait_for_partition", config="{{ params.config }}", date="{{ ds }}",
                                    project_root=PROJECT_ROOT, timeout=6 * 3600)

The markers waited for are those of every ingest source with `partitioned: true` and `marker: true` in the run's
config (none: the sensor succeeds at once). While one is missing, the task is deferred to the triggerer (no worker
slot held), which looks again every `poke_interval` seconds. When `timeout` passes first, the task fails naming the
partitions still missing; a backfill of that date fills it in once the producer has published it.

The sensor runs on the Airflow worker and reads the config there. Under the docker and kubernetes runtimes the
config (and a local feed) is in the stages' image or volume, out of the worker's sight (`config_on_worker=False`):
the sensor then succeeds saying so, and ingest itself refuses a run date whose marker is missing (sources.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import yaml
from airflow.sdk import BaseSensorOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

TRIGGER_PATH = "chat_retrain.partition_sensor.PublishedPartitionTrigger"  # the triggerer imports it from dags/


class MissingPartition(RuntimeError):
    """The run date's partition was not published before the sensor's timeout."""


def missing(markers: list[str]) -> list[str]:
    from pipeline.data.markers import published  # not at parse time: the scheduler parses this module often

    return [marker for marker in markers if not published(marker)]


class PublishedPartitionTrigger(BaseTrigger):
    """Fires once every marker exists, or once `deadline` (epoch seconds) passes with the ones still missing."""

    def __init__(self, markers: list[str], deadline: float, poke_interval: float = 60.0):
        super().__init__()
        self.markers, self.deadline, self.poke_interval = list(markers), float(deadline), float(poke_interval)

    def serialize(self) -> tuple[str, dict]:
        return TRIGGER_PATH, {"markers": self.markers, "deadline": self.deadline, "poke_interval": self.poke_interval}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            absent = await asyncio.to_thread(missing, self.markers)  # boto3 blocks: off the triggerer's event loop
            if not absent or time.time() >= self.deadline:
                yield TriggerEvent({"missing": absent})
                return
            await asyncio.sleep(min(self.poke_interval, max(self.deadline - time.time(), 0.0)))


class PublishedPartitionSensor(BaseSensorOperator):
    template_fields = ("config", "date")

    def __init__(self, *, config: str, date: str, project_root: str | Path, config_on_worker: bool = True, **kwargs):
        kwargs.setdefault("poke_interval", 60.0)
        super().__init__(**kwargs)
        self.config, self.date, self.project_root = config, date, str(project_root)
        self.config_on_worker = config_on_worker

    def markers(self) -> list[str]:
        from pipeline.data.markers import expected

        if not self.config_on_worker:
            return []
        raw = yaml.safe_load((Path(self.project_root) / self.config).read_text(encoding="utf-8")) or {}
        return expected((raw.get("ingest") or {}).get("sources") or [], self.date)

    def poke(self, context) -> bool:
        return not missing(self.markers())

    def execute(self, context) -> None:
        if not self.config_on_worker:
            self.log.warning("the config %s is in the stages' image or volume, not on this worker: not waiting here; "
                             "ingest refuses the run date's partition until its marker is there", self.config)
            return
        markers = self.markers()
        if not missing(markers):
            self.log.info("published: %s", markers or "(no source waits for a marker)")
            return
        self.defer(trigger=PublishedPartitionTrigger(markers, time.time() + self.timeout, self.poke_interval),
                   method_name="execute_complete")

    def execute_complete(self, context, event: dict) -> None:
        if event["missing"]:
            raise MissingPartition(
                f"not published within {self.timeout:.0f} s: {', '.join(event['missing'])}; the producer has not "
                f"finished {self.date}. Rule: a night trains only on a published day; backfill {self.date} once "
                "it is published.")
        self.log.info("published: %s", self.markers())
