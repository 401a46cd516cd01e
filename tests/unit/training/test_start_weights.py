"""`train.init`: the base model, or the champion's weights through the registry's shared weight cache (fetched
once, pruned to the newest versions); nothing promoted -> the base model; a champion whose weights cannot be
fetched, or a registry that cannot be asked, fails: never the base model instead."""

import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import ProjectConfig
from pipeline.evaluation import generation_cache
from pipeline.serving import chat_model
from pipeline.tracking import registry, runs
from pipeline.training import start_weights


@pytest.fixture
def project(tmp_path, tiny_model_dir) -> ProjectConfig:
    return ProjectConfig(runs_root=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                         artifact_root=str(tmp_path / "artifacts"), base_model=str(tiny_model_dir),
                         registered_model="chat")


def promote(project: ProjectConfig, model_dir: Path) -> str:
    """Register `model_dir` as a new version (the chat model promote logs) and make it champion."""
    with mlflow.start_run(experiment_id=runs.connect(project)):
        info = chat_model.log_chat_model(str(model_dir), registered_model_name=project.registered_model)
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(project.registered_model, registry.CHAMPION, version)
    return version


def test_base_and_a_first_night_without_champion_start_from_the_base_model(project, tiny_model_dir):
    assert start_weights.resolve("base", project) == (str(tiny_model_dir), str(tiny_model_dir))
    assert start_weights.resolve("champion", project) == (str(tiny_model_dir), str(tiny_model_dir))
    with pytest.raises(ValueError, match=r"train.init must be one of \('base', 'champion'\), got 'latest'"):
        start_weights.resolve("latest", project)


def test_the_champion_is_fetched_once_into_the_shared_cache(project, tiny_model_dir, monkeypatch):
    version = promote(project, tiny_model_dir)
    fetched = []
    real = registry.download_weights
    monkeypatch.setattr(registry, "download_weights", lambda *a: fetched.append(str(a[1])) or real(*a))
    path, origin = start_weights.resolve("champion", project)
    assert origin == f"models:/chat/{version}" and fetched == [version]
    assert Path(path) == start_weights.cache_root(project) / "chat" / f"v{version}" / "model"
    assert generation_cache.weights_digest(path) == generation_cache.weights_digest(str(tiny_model_dir))
    assert start_weights.resolve("champion", project) == (path, origin) and fetched == [version]  # cached
    assert [p.name for p in (start_weights.cache_root(project) / "chat").iterdir()] == [f"v{version}"]  # no scratch


def test_only_the_newest_versions_stay_cached(project, tiny_model_dir):
    for _ in range(3):
        start_weights.resolve("champion", project) if promote(project, tiny_model_dir) else None
    assert sorted(p.name for p in (start_weights.cache_root(project) / "chat").iterdir()) == ["v2", "v3"]


def test_a_champion_whose_weights_are_gone_fails_and_never_trains_from_base(project, tiny_model_dir, tmp_path):
    version = promote(project, tiny_model_dir)
    shutil.rmtree(tmp_path / "artifacts")  # the artifact store lost them
    with pytest.raises(registry.WeightsUnavailable, match=rf"models:/chat/{version}: cannot fetch its weights from "):
        start_weights.resolve("champion", project)
    assert not list((start_weights.cache_root(project) / "chat").iterdir())  # nothing half-written


def test_a_registry_that_cannot_be_asked_fails_and_never_trains_from_base(project, tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"not a database")
    with pytest.raises(Exception) as raised:
        start_weights.resolve("champion", project)
    assert "not a database" in str(raised.value) or isinstance(raised.value, registry.RegistryError)
