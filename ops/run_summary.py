"""Console summary of the latest DAG run(s), read back from MLflow: what ran, how the candidate compares with the
champion and the base model, the promotion decision, and where to look next (MLflow run, HTML report).

    python -m ops.run_summary --config configs/embedded.yaml               # the latest DAG run
    python -m ops.run_summary --config ... --last 5                         # the last 5
    python -m ops.run_summary --config ... --run-id manual__2026-11-22T...  # one Airflow run (make run)

`make run` prints this at the end. The HTML evaluation report itself is pipeline/promotion/report.py.
"""

from __future__ import annotations

import argparse
import math

from mlflow.tracking import MlflowClient

from pipeline.config import ProjectConfig, RunContext, load_project
from pipeline.storage import outputs
from pipeline.tracking import runs

STAGES = ("ingest", "validate", "train", "evaluate", "promote")  # lifecycle order, as the DAG runs them
MODELS = ("candidate", "champion", "base")
METRICS = {"bleu": "bleu", "chrf": "chrf", "chrf1": "chrf1", "rougeL": "rougeL", "similarity": "similarity (en model)",
           "perplexity": "perplexity", "reply_tokens": "reply length (tokens)",
           "anchor_bleu": "anchor set: bleu", "anchor_rougeL": "anchor set: rougeL",
           "anchor_similarity": "anchor set: similarity", "memory_rougeL": "memory set: rougeL",
           "memory_similarity": "memory set: similarity"}  # a metric no model has (older runs, no set) gets no row
LOCAL_UI = "http://127.0.0.1:5000"  # where `make ui` serves a SQLite store (its default PORT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the config the DAG ran with (its MLflow store, runs dir)")
    parser.add_argument("--last", type=int, default=1, help="how many of the latest DAG runs to show")
    parser.add_argument("--run-id", help="show this Airflow run id instead of the latest")
    args = parser.parse_args(argv)
    project = load_project(args.config)
    experiment_id = runs.connect(project)
    client = MlflowClient()
    found = dag_runs(client, experiment_id, args.last, args.run_id)
    if not found:
        print(f"no DAG run{' ' + args.run_id if args.run_id else ''} in MLflow experiment {project.experiment!r} "
              f"at {client.tracking_uri}")
        return 1
    for run in found:
        print("\n".join(summary(client, project, run)) + "\n")
    return 0


def dag_runs(client: MlflowClient, experiment_id: str, last: int, airflow_run_id: str | None = None) -> list:
    query = "tags.`pipeline.level` = 'dag_run'"
    if airflow_run_id:
        query += f" and tags.`airflow.run_id` = '{airflow_run_id}'"
    return client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time DESC"],
                              max_results=last)


def summary(client: MlflowClient, project: ProjectConfig, run) -> list[str]:
    """The lines for one DAG run: header, stages, metrics side by side, decision, model, links."""
    tags, metrics = run.data.tags, run.data.metrics
    stages = stage_states(client, run)
    lines = [f"DAG run {tags.get('airflow.run_id', run.info.run_id)}  ({tags.get('airflow.dag_id', '?')}, "
             f"logical date {tags.get('airflow.logical_date', '?')}, {tags.get('airflow.run_type', '?')})",
             f"  status    {run.info.status}; stages: {', '.join(f'{s} {state}' for s, state in stages.items())}"
             if stages else f"  status    {run.info.status}; no stage has reported yet"]
    if "train/loss" in metrics:
        lines.append(f"  training  loss {metrics['train/loss']:.3f}"
                     + (f", validation loss {metrics['val/loss']:.3f}" if "val/loss" in metrics else ""))
    lines += metric_table(metrics)
    if "failure.stage" in tags or "failure.task" in tags:
        where = tags.get("failure.stage") or tags.get("failure.task")
        error = (tags.get("failure.error") or tags.get("failure.airflow_error") or "see the Airflow log").splitlines()
        lines += [f"  FAILED    in {where}: {error[0]}", *(f"            {more}" for more in error[1:4])]
    lines += promotion(client, project, tags, stages)
    lines += links(client, run, project)
    return lines


def stage_states(client: MlflowClient, run) -> dict[str, str]:
    """Stage -> state of its latest attempt (a retried task has one child run per attempt), in DAG order."""
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    latest = {child.data.tags.get("pipeline.stage"): child.info.status for child in children}
    words = {"FINISHED": "ok", "FAILED": "failed", "RUNNING": "running", "KILLED": "killed"}
    return {stage: words.get(latest[stage], latest[stage].lower()) for stage in STAGES if stage in latest}


def metric_table(metrics: dict) -> list[str]:
    """Candidate / champion / base side by side; a model scored nowhere (no champion yet) gets no column."""
    models = [m for m in MODELS if any(f"{m}/{k}" in metrics for k in METRICS)]
    if not models:
        return []
    rows = [f"  {'':22s}" + "".join(f"{m:>12s}" for m in models)]
    for key, label in METRICS.items():
        values = [metrics.get(f"{m}/{key}") for m in models]
        if all(v is None for v in values):
            continue
        cells = "".join(f"{v:12.2f}" if v is not None and not math.isnan(v) else f"{'-':>12s}" for v in values)
        rows.append(f"  {label:22s}{cells}")
    return rows


def promotion(client: MlflowClient, project: ProjectConfig, tags: dict, stages: dict) -> list[str]:
    decision = tags.get("promotion.decision")
    if decision is None:  # e.g. a run that stopped at validation, or only some stages run by hand
        ran = ", ".join(stages) or "none"
        return [f"  decision  none: promote did not complete in this DAG run (stages that ran: {ran})"]
    lines = [f"  decision  {decision}: {tags.get('promotion.reason', '')}"]
    version = tags.get("promotion.version")
    if version:
        try:
            aliases = client.get_model_version(project.registered_model, version).aliases
        except Exception:  # deleted since: still say which version it was
            aliases = []
        lines.append(f"  model     {project.registered_model} version {version}"
                     + (f" (aliases: {', '.join(sorted(aliases))})" if aliases else ""))
    return lines


def links(client: MlflowClient, run, project: ProjectConfig) -> list[str]:
    """Where to look: the run page in the MLflow UI and the HTML report, on the server and on this disk."""
    page = run_url(client.tracking_uri, run.info.experiment_id, run.info.run_id)
    if page:
        lines = [f"  MLflow    {page}"]
    else:  # a file store: there is no server until `make ui` starts one over it
        local_page = run_url(LOCAL_UI, run.info.experiment_id, run.info.run_id)
        lines = [f"  MLflow    store {client.tracking_uri}; `make ui`, then {local_page}"]
    if "promotion.decision" in run.data.tags:
        report = f"{page}/artifacts/{outputs.REPORT}" if page else f"{run.info.artifact_uri}/{outputs.REPORT}"
        lines.append(f"  report    {report}")
        tags = run.data.tags
        local = outputs.run_dir(project, RunContext(tags.get("airflow.logical_date", ""), tags.get("airflow.run_id", ""),
                                                    tags.get("airflow.dag_id", "")), "promote") / outputs.REPORT
        if local.is_file():
            lines.append(f"            {local}")
    return lines


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, for a tracking server (http/https); None for a file or database store."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


if __name__ == "__main__":
    raise SystemExit(main())
