"""MLflow bookkeeping: one parent run per DAG run, one nested child run per stage attempt.

Stages run as separate processes, so the parent run is found again by its `airflow.run_id` tag instead of being
passed around. Tags carry the DAG id, run id and logical date so ML leads can filter and compare in the UI.
The store is MLFLOW_TRACKING_URI when set (the MLflow server of `make up`), else the config's project.tracking_uri.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from pipeline.config import ProjectConfig, RunContext
from pipeline.process import allocator
from pipeline.tracking import ui

RUN_TAGS = ("airflow.dag_id", "airflow.run_id", "airflow.logical_date", "airflow.run_type")
REACHABLE_TIMEOUT_S = 5.0  # a local or in-cluster server answers /health in milliseconds


class TrackingUnreachable(RuntimeError):
    """The MLflow tracking server does not answer; the message names the URI that was tried."""


def tracking_uri(project: ProjectConfig) -> str:
    """The environment wins over the YAML: MLFLOW_TRACKING_URI (set by `make up`'s services and `stack env` for
    the running MLflow server) if set, else project.tracking_uri (the SQLite store of `make run` and the tests)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or project.tracking_uri


def connect(project: ProjectConfig) -> str:
    """Point MLflow at the project's store and return the experiment id (created on first use)."""
    uri = tracking_uri(project)
    _set_tracking_uri(uri)
    server = uri.startswith(("http://", "https://"))
    if server:
        _check_reachable(uri)
    _ensure_sqlite_dir(uri)
    with _sqlite_lock(uri):
        experiment = mlflow.get_experiment_by_name(project.experiment)
        if experiment is None and server:
            # The server decides where artifacts go (mlflow-artifacts:/, proxied to its store): a local path here
            # would make clients write to this machine's disk, invisible to the server and other machines.
            mlflow.create_experiment(project.experiment)
        elif experiment is None:
            location = project.artifact_root
            if "://" not in location:
                location = Path(location).resolve().as_uri()
            mlflow.create_experiment(project.experiment, artifact_location=location)
        # Make it the active experiment too: nested runs and logged models otherwise land in "Default" (./mlruns).
        experiment = mlflow.set_experiment(project.experiment)
        ui.configure(MlflowClient(), experiment)  # new and existing experiments open on the training runs
        return experiment.experiment_id


def run_tags(ctx: RunContext) -> dict[str, str]:
    return dict(zip(RUN_TAGS, (ctx.dag_id, ctx.run_id, ctx.run_date, ctx.run_type), strict=True))


def parent_run_id(project: ProjectConfig, ctx: RunContext) -> str:
    """Find or create the MLflow run that stands for this DAG run."""
    experiment_id = connect(project)
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`airflow.run_id` = '{ctx.run_id}' and tags.`pipeline.level` = 'dag_run'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"{ctx.dag_id}/{ctx.run_date}",
        tags={**run_tags(ctx), "pipeline.level": "dag_run"},
    )
    return run.info.run_id


@contextlib.contextmanager
def stage_run(project: ProjectConfig, ctx: RunContext, stage: str, enabled: bool = True) -> Iterator[mlflow.ActiveRun | None]:
    """Open the DAG run's parent run and a nested child run named after the stage.

    An exception marks both FAILED (MLflow's context managers do that) and records the error on both, so a failed
    night is visible, with its reason, in the UI. enabled=False (training ranks other than 0) opens nothing.
    """
    if not enabled:
        yield None
        return
    parent_id = parent_run_id(project, ctx)
    end_abandoned(parent_id, stage, "KILLED", "a new attempt of the task started")
    with mlflow.start_run(run_id=parent_id):
        with mlflow.start_run(
            run_name=stage, nested=True, tags={**run_tags(ctx), "pipeline.level": "stage", "pipeline.stage": stage,
                                               "pipeline.allocator": allocator.active()}  # speed depends on it
        ) as child:
            try:
                yield child
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:5000]
                mlflow.set_tag("failure.error", error)
                log_to_parent(tags={"failure.stage": stage, "failure.error": error})
                raise
        clear_failure(parent_id, stage)


def clear_failure(parent_id: str, stage: str) -> None:
    """A retry of the stage that failed has succeeded: the DAG run is no longer failed because of it. The error
    stays readable as `failure.recovered.<stage>`; a failure of another stage is left alone."""
    client = MlflowClient()
    tags = client.get_run(parent_id).data.tags
    if stage not in (tags.get("failure.stage"), tags.get("failure.task")):
        return
    error = tags.get("failure.error") or tags.get("failure.airflow_error", "")
    client.set_tag(parent_id, f"failure.recovered.{stage}", error[:5000])
    for key in ("failure.stage", "failure.error", "failure.task", "failure.airflow_error"):
        if key in tags:
            client.delete_tag(parent_id, key)


def end_abandoned(parent_id: str, stage: str, status: str, reason: str) -> list[str]:
    """End the stage runs of this DAG run still RUNNING: their process was killed (kill -9, OOM, a lost node) and
    never ended them. Airflow runs one attempt of a task at a time, so when a new attempt starts (or the failure
    callback fires) a RUNNING one is dead, not busy. Returns the ids ended."""
    client = MlflowClient()
    parent = client.get_run(parent_id)
    stale = client.search_runs(
        [parent.info.experiment_id], run_view_type=mlflow.entities.ViewType.ACTIVE_ONLY,
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`pipeline.stage` = '{stage}' "
                      "and attributes.status = 'RUNNING'")
    for run in stale:
        client.set_tag(run.info.run_id, "pipeline.ended_by", reason)
        client.set_terminated(run.info.run_id, status=status)
    return [run.info.run_id for run in stale]


def log_to_parent(metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> None:
    """Copy headline numbers onto the DAG-run (parent) run, which is what the compare view lines up."""
    parent_id = active_parent_id()
    if parent_id is None:
        return
    # Batched: evaluate's 126 metrics took 0.9 s as one request each. MLflow takes <= 1000 metrics, 100 tags a batch.
    now, client = int(time.time() * 1000), MlflowClient()
    metric_list = [Metric(key, value, now, 0) for key, value in (metrics or {}).items()]
    tag_list = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
    for start in range(0, len(metric_list), 1000):
        client.log_batch(parent_id, metrics=metric_list[start : start + 1000])
    for start in range(0, len(tag_list), 100):
        client.log_batch(parent_id, tags=tag_list[start : start + 100])


def log_artifact_to_parent(path: Path) -> None:
    parent_id = active_parent_id()
    if parent_id is not None:
        MlflowClient().log_artifact(parent_id, str(path))


def log_dataset(partition: Path, manifest: dict, context: str) -> None:
    """Record the dataset partition as an MLflow input of the active run (the Datasets column of the UI), under the
    digest of its bytes: the same digest on the ingest, train and evaluate runs and on the model version."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    name = f"{manifest['dataset']}@{manifest['partition_date']}"
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both candidates are the local one
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(partition).resolve()))
    dataset = MetaDataset(source, name=name,
                          digest=manifest["digest"][:16])
    mlflow.log_input(dataset, context=context, tags={"input_digest": manifest.get("input_digest", "")[:16]})


def record_failure(project: ProjectConfig, ctx: RunContext, task_id: str, error: str) -> None:
    """Mark the DAG run's MLflow run FAILED, naming the Airflow task. Called from the DAG's failure callback, which
    also covers what a stage cannot record itself: timeouts, kills, bad configs."""
    run_id = parent_run_id(project, ctx)
    client = MlflowClient()
    client.set_tag(run_id, "failure.task", task_id)
    client.set_tag(run_id, "failure.airflow_error", error[:5000])
    end_abandoned(run_id, task_id, "FAILED", f"Airflow marked task {task_id} failed")  # a timeout or a kill
    client.set_terminated(run_id, status="FAILED")


def active_parent_id() -> str | None:
    """The DAG-run (parent) run of the active stage run, if any."""
    active = mlflow.active_run()
    return active.data.tags.get("mlflow.parentRunId") if active else None


@contextlib.contextmanager
def _sqlite_lock(uri: str) -> Iterator[None]:
    """Two stages of concurrent DAG runs (a backfill) opening a new SQLite store at once race on its schema
    migration ("duplicate column name"); a file lock makes the first one create it. Server stores need none."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(f"{uri.removeprefix('sqlite:///')}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _set_tracking_uri(uri: str) -> None:
    """mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses); since that variable now wins
    over the YAML, a process that connects to two stores (tests, an orchestrator) would otherwise be stuck with the
    first one, and so would every process it starts. Keep the environment as the caller set it."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def _check_reachable(uri: str, timeout: float = REACHABLE_TIMEOUT_S) -> None:
    """Fail in seconds, naming the URI: MLflow's own client retries a refused connection for minutes
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7 with backoff factor 2, MLFLOW_HTTP_REQUEST_TIMEOUT=120 s per try), which
    is right for a blip in the middle of a stage but only hides a server that is not running at its start."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code < 500:  # answered (e.g. behind auth or a proxy without /health): it is there
            return
        reason = f"HTTP {exc.code}"
    except OSError as exc:
        reason = str(getattr(exc, "reason", exc))
    raise TrackingUnreachable(f"MLflow tracking server {uri} is not reachable ({reason}); start it with "
                              f"`make up` or unset MLFLOW_TRACKING_URI to use project.tracking_uri")


def _ensure_sqlite_dir(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
