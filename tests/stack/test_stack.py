"""`make up` for real: the scheduler runs the nightly DAG by itself on the local services, the model lands in the
registry of the MLflow *server*, its artifacts are served by it and stored in the S3 service; plus what `up`,
`status` and `down` do with bad input (a taken port, nothing running, already up), on small stacks of their own.

    .venv/bin/python -m pytest -m stack tests
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import boto3
import mlflow
from mlflow.tracking import MlflowClient
from stack_processes import leftovers, port_flags, stack_command

from ops import services, stack
from pipeline.process.ports import free_ports


def test_the_scheduler_ran_the_latest_complete_day_by_itself(nightly_stack):
    run = nightly_stack.dag_run
    tasks = services.get_json(f"{nightly_stack.airflow_url}/api/v2/dags/nightly_chat_retrain/dagRuns/"
                              f"{nightly_stack.dag_run_id}/taskInstances")["task_instances"]
    assert run["state"] == "success", failed_task_logs(nightly_stack, tasks)
    assert run["run_type"] == "scheduled" and run["triggered_by"] == "timetable"
    # "0 2 * * *" as a data-interval timetable: the run that fired at the last 02:00 UTC covers the day before
    # it, and its logical date is that interval's start.
    now = datetime.now(UTC)
    fired = now.replace(hour=2, minute=0, second=0, microsecond=0) - timedelta(days=now.hour < 2)
    start, end = (datetime.fromisoformat(run[key]) for key in ("data_interval_start", "data_interval_end"))
    assert end == fired and start == fired - timedelta(days=1)
    assert datetime.fromisoformat(nightly_stack.logical_date) == start
    assert {t["task_id"]: t["state"] for t in tasks} == dict.fromkeys(
        ["wait_for_partition", "ingest", "validate", "train", "evaluate", "promote"], "success")
    partition = nightly_stack.config.parent / "data" / "conversations" / f"dt={start.date()}"
    assert (partition / "manifest.json").is_file()  # trained on the day before it fired


def test_the_model_is_registered_on_the_server_and_its_artifacts_are_in_s3(nightly_stack, tmp_path):
    client = MlflowClient(tracking_uri=nightly_stack.mlflow_url)
    # The scheduled night's version (the browser tests may have added a manual night's: tests run in any order).
    (version,) = [v for v in client.search_model_versions("name = 'tiny-chat'")
                  if v.tags["airflow.run_id"] == nightly_stack.dag_run_id]
    assert version.tags["airflow.run_type"] == "scheduled"
    # The environment's MLFLOW_TRACKING_URI won over the config's SQLite store, which was never created.
    assert not (nightly_stack.config.parent / "unused-mlflow.db").exists()

    # Server-relative artifact URIs: clients need no S3 access, the server proxies to its store.
    location = client.get_model_version_download_uri("tiny-chat", version.version)
    assert location.startswith("mlflow-artifacts:/"), location
    downloaded = mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/MLmodel", dst_path=str(tmp_path),
                                                     tracking_uri=nightly_stack.mlflow_url)
    env = nightly_stack.env
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])
    key = "artifacts/" + location.removeprefix("mlflow-artifacts:/").strip("/") + "/MLmodel"
    stored = s3.get_object(Bucket="mlflow", Key=key)["Body"].read()
    assert stored == open(downloaded, "rb").read() and b"python_function" in stored
    weights = s3.list_objects_v2(Bucket="mlflow", Prefix=key.removesuffix("MLmodel"))["Contents"]
    assert any(obj["Key"].endswith(".safetensors") and obj["Size"] > 0 for obj in weights)


def test_status_shows_every_service_running(nightly_stack):
    shown = stack_command("status", "--home", str(nightly_stack.home))
    lines = {line.split()[0]: line for line in shown.stdout.splitlines()}
    assert shown.returncode == 0 and set(lines) == set(stack.SERVICES), shown.stdout
    assert all(" running " in line and ".stack/logs/" in line for line in lines.values()), shown.stdout
    assert nightly_stack.mlflow_url in lines["mlflow"] and nightly_stack.airflow_url in lines["api-server"]


def test_up_with_a_taken_port_names_it_and_starts_nothing(tmp_path):
    ports = free_ports(5)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports[1]))
        squatter.listen()
        result = stack_command("up", "--services", "mlflow", "--home", str(tmp_path), *port_flags(ports))
    assert result.returncode == 1
    assert f"port {ports[1]} (mlflow) is already in use by pid" in result.stderr, result.stderr
    assert not leftovers(tmp_path) and not (tmp_path / ".stack" / "state.json").exists()


def test_down_with_nothing_running_says_so(tmp_path):
    result = stack_command("down", "--home", str(tmp_path))
    assert result.returncode == 0 and "nothing running" in result.stdout
    assert not (tmp_path / ".stack").exists()


def test_up_twice_starts_nothing_twice(tmp_path):
    flags = ["--services", "s3", "--home", str(tmp_path), *port_flags(free_ports(5))]
    try:
        first = stack_command("up", *flags)
        assert first.returncode == 0, first.stderr
        pid = stack._load_state(tmp_path)["s3"]["pid"]
        again = stack_command("up", *flags)
        assert again.returncode == 0 and f"s3: already running (pid {pid})" in again.stdout, again.stdout
        assert stack._load_state(tmp_path)["s3"]["pid"] == pid and len(leftovers(tmp_path)) == 1
    finally:
        stopped = stack_command("down", "--home", str(tmp_path))
    assert f"s3: stopped (pid {pid})" in stopped.stdout and not leftovers(tmp_path)


def failed_task_logs(nightly_stack, tasks: list[dict]) -> str:
    """Task states plus the end of each failed task's log: the temp home is gone once the session ends."""
    report = [str({t["task_id"]: t["state"] for t in tasks})]
    logs = nightly_stack.home / ".airflow" / "logs" / "dag_id=nightly_chat_retrain" / f"run_id={nightly_stack.dag_run_id}"
    for task in tasks:
        if task["state"] == "failed":
            report.append(f"--- {task['task_id']}:\n" + "\n".join(
                services.tail(path, 15) for path in sorted(logs.glob(f"task_id={task['task_id']}/attempt=*.log"))))
    return "\n".join(report)

