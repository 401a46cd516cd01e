"""MLflow bookkeeping: one parent run per DAG run, one nested child run per stage attempt.

Stages run as separate processes, so the parent run is found again by its `airflow.run_id` tag instead of being
passed around. Tags carry the DAG id, run id and logical date so ML leads can filter and compare in the UI.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.config import ProjectConfig, RunContext

RUN_TAGS = ("airflow.dag_id", "airflow.run_id", "airflow.logical_date", "airflow.run_type")


def connect(project: ProjectConfig) -> str:
    """Point MLflow at the project's store and return the experiment id (created on first use)."""
    mlflow.set_tracking_uri(project.tracking_uri)
    _ensure_sqlite_dir(project.tracking_uri)
    with _sqlite_lock(project.tracking_uri):
        experiment = mlflow.get_experiment_by_name(project.experiment)
        if experiment is None:
            location = project.artifact_root
            if "://" not in location:
                location = Path(location).resolve().as_uri()
            mlflow.create_experiment(project.experiment, artifact_location=location)
        # Make it the active experiment too: nested runs and logged models otherwise land in "Default" (./mlruns).
        return mlflow.set_experiment(project.experiment).experiment_id


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
    with mlflow.start_run(run_id=parent_id):
        with mlflow.start_run(
            run_name=stage, nested=True, tags={**run_tags(ctx), "pipeline.level": "stage", "pipeline.stage": stage}
        ) as child:
            try:
                yield child
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:5000]
                mlflow.set_tag("failure.error", error)
                log_to_parent(tags={"failure.stage": stage, "failure.error": error})
                raise


def log_to_parent(metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> None:
    """Copy headline numbers onto the DAG-run (parent) run, which is what the compare view lines up."""
    parent_id = active_parent_id()
    if parent_id is None:
        return
    client = MlflowClient()
    for key, value in (metrics or {}).items():
        client.log_metric(parent_id, key, value)
    for key, value in (tags or {}).items():
        client.set_tag(parent_id, key, value)


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


def _ensure_sqlite_dir(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
