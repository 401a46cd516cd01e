"""The night waits for its day: the sensor reads the markers to wait for from the run's config, succeeds at once
when they are published (or none is configured), defers to the triggerer otherwise; the trigger fires when the
marker appears, or at the deadline naming what is still missing; the task then fails naming the partition."""

import asyncio
import time

import pytest
import yaml
from airflow.exceptions import TaskDeferred
from chat_retrain.partition_sensor import (
    MissingPartition,
    PublishedPartitionSensor,
    PublishedPartitionTrigger,
)

from pipeline.data import markers


def sensor(tmp_path, sources, timeout=60.0):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"ingest": {"sources": sources}}))
    return PublishedPartitionSensor(task_id="wait_for_partition", config="config.yaml", date="2026-11-22",
                                    project_root=tmp_path, timeout=timeout, poke_interval=0.1)


def test_a_config_without_marker_sources_does_not_wait(tmp_path):
    task = sensor(tmp_path, [{"format": "chatterbot"}, {"format": "openai", "uri": "s3://b/x", "partitioned": True}])
    assert task.markers() == [] and task.execute({}) is None


def test_under_a_container_runtime_the_worker_does_not_look_for_the_stages_config(tmp_path):
    """docker / kubernetes: the config is in the image or a volume; ingest refuses an unpublished day itself."""
    task = PublishedPartitionSensor(task_id="wait_for_partition", config="/app/data/inputs/config.yaml",
                                    date="2026-11-22", project_root=tmp_path, config_on_worker=False, timeout=60.0)
    assert task.execute({}) is None and task.markers() == []  # no config read: none here
    with pytest.raises(FileNotFoundError):  # where the worker should see it, a missing config is an error
        PublishedPartitionSensor(task_id="w", config="/app/data/inputs/config.yaml", date="2026-11-22",
                                 project_root=tmp_path, timeout=60.0).execute({})


def test_a_published_day_passes_and_an_unpublished_one_defers_to_the_trigger(tmp_path):
    feed = tmp_path / "feed"
    task = sensor(tmp_path, [{"format": "openai", "uri": str(feed), "partitioned": True, "marker": True}])
    marker = f"{feed}/dt=2026-11-22/{markers.NAME}"
    assert task.markers() == [marker]
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, PublishedPartitionTrigger) and trigger.markers == [marker]
    assert trigger.serialize()[0] == "chat_retrain.partition_sensor.PublishedPartitionTrigger"
    (feed / "dt=2026-11-22").mkdir(parents=True)
    (feed / "dt=2026-11-22" / markers.NAME).write_text("{}")
    assert task.execute({}) is None


def test_the_trigger_fires_when_the_marker_lands_or_names_it_at_the_deadline(tmp_path):
    marker = tmp_path / "dt=2026-11-22" / markers.NAME

    async def first_event(trigger, publish_after=None):
        async def publish():
            await asyncio.sleep(publish_after)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("{}")

        waiting = [asyncio.create_task(publish())] if publish_after is not None else []
        event = await anext(trigger.run())
        await asyncio.gather(*waiting)
        return event.payload

    late = PublishedPartitionTrigger([str(marker)], deadline=time.time() + 0.5, poke_interval=0.1)
    assert asyncio.run(first_event(late)) == {"missing": [str(marker)]}
    landing = PublishedPartitionTrigger([str(marker)], deadline=time.time() + 30, poke_interval=0.1)
    assert asyncio.run(first_event(landing, publish_after=0.3)) == {"missing": []}


def test_a_day_missing_at_the_deadline_fails_naming_the_partition(tmp_path):
    task = sensor(tmp_path, [{"format": "openai", "uri": "s3://chat-logs/openai", "partitioned": True, "marker": True}],
                  timeout=21600)
    with pytest.raises(MissingPartition, match=r"not published within 21600 s: s3://chat-logs/openai/dt=2026-11-22/"
                                               r"_SUCCESS; .* backfill 2026-11-22 once it is published"):
        task.execute_complete({}, {"missing": ["s3://chat-logs/openai/dt=2026-11-22/_SUCCESS"]})
