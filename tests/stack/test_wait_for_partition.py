"""The night waits for its day on the real stack: the scheduler starts the scheduled run, `wait_for_partition`
finds the day's marker missing and is *deferred* to the real triggerer (no worker slot held); once the producer
publishes the day (the chat feed writes its files, then the marker), the triggerer fires, the sensor succeeds and
the night runs ingest on that day."""

from __future__ import annotations

import datetime
import os
import time

import yaml
from stack_processes import PORT_KEYS, REPO, leftovers, port_flags, stack_command

from ops import chat_feed, services
from pipeline.process.ports import free_ports

DAG_ID = "nightly_chat_retrain"


def task_states(airflow_url: str, run_id: str) -> dict[str, str]:
    instances = services.get_json(f"{airflow_url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
    return {ti["task_id"]: ti["state"] for ti in instances["task_instances"]}


def wait(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(2)
    raise AssertionError(f"{what} within {seconds:.0f} s")


def test_a_night_is_deferred_until_its_day_is_published(tmp_path, tiny_model_dir):
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["project"].update(data_root=str(tmp_path / "data"), runs_root=str(tmp_path / "runs"),
                          base_model=str(tiny_model_dir), tracking_uri=f"sqlite:///{tmp_path / 'unused.db'}",
                          artifact_root=str(tmp_path / "unused"))
    raw["ingest"] = {"sources": [{"format": "openai", "uri": str(tmp_path / "feed"), "partitioned": True,
                                  "marker": True, "language": "en", "max_quarantine_ratio": 0.9}]}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    home, ports = tmp_path / "home", free_ports(len(PORT_KEYS))
    env = {**os.environ, "CHAT_RETRAIN_CONFIG": str(config), "CHAT_RETRAIN_SCHEDULE": "0 2 * * *"}
    airflow_url = f"http://127.0.0.1:{ports[2]}"
    try:
        started = stack_command("up", "--home", str(home), *port_flags(ports), env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        run = wait(lambda: next((r for r in services.get_json(f"{airflow_url}/api/v2/dags/{DAG_ID}/dagRuns")[
            "dag_runs"] if r["run_type"] == "scheduled"), None), 300, "no scheduled run")
        day = datetime.date.fromisoformat(run["logical_date"][:10])
        wait(lambda: task_states(airflow_url, run["dag_run_id"]).get("wait_for_partition") == "deferred", 300,
             "wait_for_partition was not deferred")
        time.sleep(10)
        assert task_states(airflow_url, run["dag_run_id"])["wait_for_partition"] == "deferred"  # still waiting
        # The producer: files first, the marker last. Ending 3 days later puts a day of 27 sessions on `day`.
        chat_feed.publish(str(tmp_path / "feed"), day + datetime.timedelta(days=3))
        wait(lambda: task_states(airflow_url, run["dag_run_id"]).get("wait_for_partition") == "success", 300,
             "the sensor did not succeed after the day was published")
        wait(lambda: task_states(airflow_url, run["dag_run_id"]).get("ingest") in ("success", "failed"), 300,
             "ingest did not run after the sensor")
        assert task_states(airflow_url, run["dag_run_id"])["ingest"] == "success"
        assert (tmp_path / "data" / "conversations" / f"dt={day}" / "manifest.json").is_file()
    finally:
        stopped = stack_command("down", "--home", str(home), env=env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not leftovers(home), leftovers(home)
