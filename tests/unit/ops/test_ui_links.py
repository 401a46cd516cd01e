"""`make ui`: the links open the experiment (creating it and its saved view), its DAG runs, the registered model."""

import yaml
from mlflow.tracking import MlflowClient

from ops import ui_links
from pipeline.tracking import ui


def test_the_links_name_the_experiment_and_the_model(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"project": {
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_root": str(tmp_path / "artifacts"),
        "experiment": "links", "registered_model": "chat-links"}}))
    assert ui_links.main(["--config", str(config), "--url", "http://127.0.0.1:5000"]) == 0
    experiment = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("links")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"experiment links: {ui.experiment_url('http://127.0.0.1:5000', experiment.experiment_id)}",
                     f"DAG runs (candidate / champion / base): "
                     f"{ui.runs_url('http://127.0.0.1:5000', experiment.experiment_id)}",
                     f"registered model chat-links: {ui.model_url('http://127.0.0.1:5000', 'chat-links')}"]
    assert ui.VIEW_TAG_PREFIX + ui.DAG_RUNS_VIEW in experiment.tags  # the runs link's saved view exists
