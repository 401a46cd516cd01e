"""The strategies compared in docs/nights.md: each is the nights config with its overrides and places of its own
(data, runs, experiment, registered model), read back as the stages read their sections; strategies not run yet
are said so in the table."""

import datetime
from pathlib import Path

import pytest
import yaml

from ops import dag_run, strategies
from pipeline import ingest, train
from pipeline.config import load_project, load_section

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def nights_config(tmp_path, monkeypatch):
    raw = yaml.safe_load((REPO / "configs" / "nights.yaml").read_text())
    monkeypatch.chdir(tmp_path)  # config_with_overrides writes runs/configs/ under the working directory
    raw["project"].update(data_root=str(tmp_path / "data"), runs_root=str(tmp_path / "runs"),
                          tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = tmp_path / "nights.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_each_strategy_is_its_overrides_in_places_of_its_own(nights_config):
    seen = {}
    for name in strategies.STRATEGIES:
        config = str(dag_run.config_with_overrides(nights_config, strategies.overrides(nights_config, name)))
        project = load_project(config)
        seen[name] = (project.data_root, project.runs_root, project.experiment, project.registered_model)
        assert project.registered_model == f"smollm2-chat-{name}" and project.data_root.endswith(f"strategies/{name}")
        assert project.tracking_uri == load_project(nights_config).tracking_uri  # one server, one experiment each
    for place in range(4):
        assert len({places[place] for places in seen.values()}) == len(strategies.STRATEGIES)  # never shared
    base_window = dag_run.config_with_overrides(nights_config, strategies.overrides(nights_config, "base-window"))
    trained = load_section(base_window, "train", train.TrainConfig)
    assert (trained.init, trained.replay) == ("base", 0.0)
    assert load_section(base_window, "ingest", ingest.IngestConfig).window_days == 7
    assert load_section(dag_run.config_with_overrides(nights_config, strategies.overrides(nights_config, "lineage")),
                        "train", train.TrainConfig).init == "lineage"
    # the committed strategy is the config as it is, but for its places
    assert load_section(dag_run.config_with_overrides(nights_config, strategies.overrides(
        nights_config, "champion-replay")), "train", train.TrainConfig) == load_section(nights_config, "train",
                                                                                        train.TrainConfig)


def test_strategies_not_run_are_said_so_and_an_unknown_one_is_refused(nights_config, capsys):
    end = datetime.date(2026, 12, 5)
    assert strategies.main(["--nights", "14", "--config", nights_config, "--end", end.isoformat(), "--table-only"]) == 0
    out = capsys.readouterr().out
    assert out.count("| not run |") == len(strategies.STRATEGIES)
    assert "strategies/2026-11-22_2026-12-05.md" in out
    with pytest.raises(SystemExit):
        strategies.main(["--config", nights_config, "--only", "latest", "--table-only"])
    assert "invalid choice: 'latest'" in capsys.readouterr().err
