"""How the MLflow UI opens for this project: on the training runs, with the DAG runs' headline metrics side by side.

    ui.configure(client, experiment)        # runs.connect does it for every experiment it opens
    ui.runs_url("http://127.0.0.1:5000", experiment_id)        # the links `make ui` prints (ops/ui_links.py)

What MLflow 3.17's UI reads (checked in its JS bundle, mlflow/server/js/build, and in a browser):
- GenAI view (Overview, Traces, "Detect issues") or Machine learning view (Runs): the workflow switch at its top
  left, which is the URL parameter `workflowType=machine_learning|genai`, else the browser's localStorage
  (`mlflow.workflowType_v1`), else GenAI. While that switch exists the experiment tag `mlflow.experimentKind` is
  not read, so no tag can change the landing view of a fresh browser: the links below carry `workflowType`. The tag
  is still set, to what the switch itself writes for machine learning, for UIs that do read it.
- Which runs and columns the runs table shows is per-browser state (localStorage) too, unless the URL names a
  saved view: `viewStateShareKey=<id>` loads the experiment tag `mlflow.sharedViewState.<id>`, a JSON envelope
  {name, createdAt, updatedAt, state} whose state holds the search filter, the sort and the selected columns. The
  pipeline writes one, "DAG runs: candidate vs champion vs base"; the UI also lists it under "Saved views".
"""

from __future__ import annotations

import json

from mlflow.entities import Experiment
from mlflow.tracking import MlflowClient

EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
DAG_RUNS_VIEW = "dag-runs"  # the saved view's id: part of its URL, so it stays fixed
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
SIDES = ("candidate", "champion", "base")  # tonight's model, the champion scored tonight, the pretrained model
HEADLINE_METRICS = ("bleu", "chrf1", "rougeL", "perplexity")  # the promotion gate's metrics, and perplexity
VIEW_CREATED_AT = 1_767_225_600_000  # fixed (2026-01-01, ms), so the tag's value changes only with its content


def dag_runs_view() -> dict:
    """The saved view's state: DAG (parent) runs only, newest first, metric columns grouped by metric so that
    candidate, champion and base stand next to each other, then the decision."""
    columns = ["tags.`promotion.decision`"]  # the run name already carries the logical date
    columns += [f"metrics.`{side}/{metric}`" for metric in HEADLINE_METRICS for side in SIDES]
    return {
        "searchFilter": "tags.`pipeline.level` = 'dag_run'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": columns,
        "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", *columns],  # grid column ids
        "runsExpanded": {},
    }


def experiment_tags() -> dict[str, str]:
    envelope = {"name": "DAG runs: candidate vs champion vs base", "createdAt": VIEW_CREATED_AT,
                "updatedAt": VIEW_CREATED_AT, "state": json.dumps(dag_runs_view(), sort_keys=True)}
    return {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, VIEW_TAG_PREFIX + DAG_RUNS_VIEW: json.dumps(envelope)}


def configure(client: MlflowClient, experiment: Experiment) -> None:
    """Set the UI tags on the experiment where they are missing or stale (new and existing experiments alike)."""
    for key, value in experiment_tags().items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)


def experiment_url(base_url: str, experiment_id: str) -> str:
    """The experiment itself: the UI picks its tab from the workflow type, Runs for machine learning."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def runs_url(base_url: str, experiment_id: str) -> str:
    """The experiment's DAG runs with candidate / champion / base metric columns, in the Machine learning view."""
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?viewStateShareKey={DAG_RUNS_VIEW}&workflowType=machine_learning")


def model_url(base_url: str, name: str) -> str:
    return f"{base_url.rstrip('/')}/#/models/{name}?workflowType=machine_learning"
