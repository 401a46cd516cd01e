"""The MLflow UI settings the pipeline writes: experiment tags on new and existing experiments, and the links."""

import json

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.config import ProjectConfig
from pipeline.tracking import runs, ui


def test_connect_tags_new_and_existing_experiments(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    old = mlflow.create_experiment("old-experiment")  # created before the UI tags existed
    project = ProjectConfig(tracking_uri=uri, artifact_root=str(tmp_path / "artifacts"), experiment="old-experiment")
    assert runs.connect(project) == old
    new = runs.connect(ProjectConfig(tracking_uri=uri, artifact_root=str(tmp_path / "a"), experiment="new"))
    client = MlflowClient(uri)
    for experiment_id in (old, new):
        tags = client.get_experiment(experiment_id).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        envelope = json.loads(tags["mlflow.sharedViewState.dag-runs"])
        state = json.loads(envelope["state"])
        assert state["searchFilter"] == "tags.`pipeline.level` = 'dag_run'"
        assert state["selectedColumns"][1:4] == ["metrics.`candidate/bleu`", "metrics.`champion/bleu`",
                                                 "metrics.`base/bleu`"]


def test_links_open_the_machine_learning_view():
    assert ui.runs_url("http://h:5000/", "7") == (
        "http://h:5000/#/experiments/7/runs?viewStateShareKey=dag-runs&workflowType=machine_learning")
    assert ui.experiment_url("http://h:5000", "7").endswith("#/experiments/7?workflowType=machine_learning")
