"""Which MLflow store a stage uses (the environment wins over the YAML) and how fast it fails without one."""

import os
import time

import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import ProjectConfig
from pipeline.process.ports import free_port
from pipeline.tracking import runs


def project(tmp_path, **changes) -> ProjectConfig:
    return ProjectConfig(tracking_uri=f"sqlite:///{tmp_path / 'yaml.db'}", artifact_root=str(tmp_path / "art"),
                         experiment="exp", **changes)


def test_the_yaml_store_is_used_when_the_environment_names_none(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    experiment_id = runs.connect(project(tmp_path))
    experiment = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'yaml.db'}").get_experiment(experiment_id)
    # a SQLite store keeps today's artifact location: the project's artifact_root
    assert experiment.name == "exp" and experiment.artifact_location == (tmp_path / "art").as_uri()


def test_mlflow_tracking_uri_in_the_environment_wins_over_the_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    assert runs.tracking_uri(project(tmp_path)) == f"sqlite:///{tmp_path / 'env.db'}"
    runs.connect(project(tmp_path))
    assert MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'env.db'}").get_experiment_by_name("exp")
    assert not (tmp_path / "yaml.db").exists()


def test_an_unreachable_tracking_server_fails_fast_naming_the_uri(tmp_path, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    with pytest.raises(runs.TrackingUnreachable, match=uri.replace(".", r"\.")):
        runs.connect(project(tmp_path))
    assert time.monotonic() - started < 10  # MLflow's own retries would take minutes


def test_connecting_leaves_the_environment_as_it_was(tmp_path, monkeypatch):
    # mlflow.set_tracking_uri exports the variable; since it wins over the YAML, a second project in the same
    # process (or a subprocess) would silently use the first one's store.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs.connect(project(tmp_path / "a"))
    runs.connect(project(tmp_path / "b"))
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert (tmp_path / "b" / "yaml.db").is_file()


def test_a_successful_retry_clears_the_failure_of_its_stage_only(tmp_path, monkeypatch):
    from pipeline.config import RunContext

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config, ctx = project(tmp_path), RunContext("2026-11-22", "night-1", "dag", "scheduled")
    with pytest.raises(RuntimeError), runs.stage_run(config, ctx, "evaluate"):
        raise RuntimeError("tracking server went away")
    runs.record_failure(config, ctx, "evaluate", "Task failed")  # the DAG's failure callback
    client = MlflowClient(tracking_uri=config.tracking_uri)
    parent_id = runs.parent_run_id(config, ctx)
    assert client.get_run(parent_id).data.tags["failure.stage"] == "evaluate"

    with runs.stage_run(config, ctx, "train"):  # another stage succeeding does not hide the failure
        pass
    assert client.get_run(parent_id).data.tags["failure.stage"] == "evaluate"
    with runs.stage_run(config, ctx, "evaluate"):  # the retry
        pass
    parent = client.get_run(parent_id)
    assert not [key for key in parent.data.tags if key.startswith("failure.") and ".recovered." not in key]
    assert parent.data.tags["failure.recovered.evaluate"] == "RuntimeError: tracking server went away"
    assert parent.info.status == "FINISHED"


ATTEMPT = """
import sys, time
from pipeline.config import ProjectConfig, RunContext
from pipeline.tracking import runs
project = ProjectConfig(tracking_uri=sys.argv[1], artifact_root=sys.argv[2], experiment="exp")
with runs.stage_run(project, RunContext("2026-11-22", "night-1", "dag", "scheduled"), "train"):
    print("started", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("callback", [True, False], ids=["failure-callback", "retry-only"])
def test_a_killed_attempt_is_ended_not_left_running(tmp_path, monkeypatch, callback):
    """kill -9 leaves the attempt's MLflow run RUNNING; the failure callback ends it FAILED, and a retry that starts
    without one (the callback itself lost) ends it KILLED. Either way only the retry's run is FINISHED."""
    import signal
    import subprocess
    import sys

    from pipeline.config import RunContext

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config, ctx = project(tmp_path), RunContext("2026-11-22", "night-1", "dag", "scheduled")
    attempt = subprocess.Popen([sys.executable, "-c", ATTEMPT, config.tracking_uri, config.artifact_root],
                               stdout=subprocess.PIPE, text=True)
    assert attempt.stdout.readline().strip() == "started"
    attempt.send_signal(signal.SIGKILL)
    attempt.wait(timeout=30)
    client = MlflowClient(tracking_uri=config.tracking_uri)
    parent_id = runs.parent_run_id(config, ctx)

    def stage_runs():
        found = client.search_runs([client.get_run(parent_id).info.experiment_id],
                                   filter_string="tags.`pipeline.stage` = 'train'", order_by=["start_time ASC"])
        return [(run.info.status, run.data.tags.get("pipeline.ended_by")) for run in found]

    assert stage_runs() == [("RUNNING", None)]
    if callback:
        runs.record_failure(config, ctx, "train", "Task received SIGKILL")
        assert stage_runs() == [("FAILED", "Airflow marked task train failed")]
    with runs.stage_run(config, ctx, "train"):  # the retry
        pass
    killed = ("FAILED", "Airflow marked task train failed") if callback else (
        "KILLED", "a new attempt of the task started")
    assert stage_runs() == [killed, ("FINISHED", None)]
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_the_parent_gets_every_value_past_one_mlflow_batch(tmp_path, monkeypatch):
    from pipeline.config import RunContext

    # log_to_parent sends MLflow batches (<= 1000 metrics, <= 100 tags each): nothing past a batch may be dropped.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config, ctx = project(tmp_path), RunContext("2026-11-22", "night-1", "dag", "scheduled")
    metrics = {f"m{i}": float(i) for i in range(1001)}
    tags = {f"t{i}": f"v{i}" for i in range(101)}
    with runs.stage_run(config, ctx, "evaluate"):
        runs.log_to_parent(metrics, tags)
    parent = MlflowClient(tracking_uri=config.tracking_uri).get_run(runs.parent_run_id(config, ctx))
    assert parent.data.metrics == metrics
    assert {k: v for k, v in parent.data.tags.items() if k.startswith("t")} == tags
