"""`train.init`: the base model, or the champion's (or the lineage's) weights through the registry's shared weight
cache (fetched once, pruned to the newest versions); nothing promoted -> the base model; a champion whose weights
cannot be fetched, or a registry that cannot be asked, fails: never the base model instead. The lineage over
versions that promote itself judged and tagged."""

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

NIGHT = "2026-11-23"


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
    assert start_weights.resolve("base", project, NIGHT) == (str(tiny_model_dir), str(tiny_model_dir))
    assert start_weights.resolve("champion", project, NIGHT) == (str(tiny_model_dir), str(tiny_model_dir))
    with pytest.raises(ValueError, match=r"train.init must be one of \('base', 'champion', 'lineage'\), got 'latest'"):
        start_weights.resolve("latest", project, NIGHT)


def test_the_champion_is_fetched_once_into_the_shared_cache(project, tiny_model_dir, monkeypatch):
    version = promote(project, tiny_model_dir)
    fetched = []
    real = registry.download_weights
    monkeypatch.setattr(registry, "download_weights", lambda *a: fetched.append(str(a[1])) or real(*a))
    path, origin = start_weights.resolve("champion", project, NIGHT)
    assert origin == f"models:/chat/{version}" and fetched == [version]
    assert Path(path) == start_weights.cache_root(project) / "chat" / f"v{version}" / "model"
    assert generation_cache.weights_digest(path) == generation_cache.weights_digest(str(tiny_model_dir))
    assert start_weights.resolve("champion", project, NIGHT) == (path, origin) and fetched == [version]  # cached
    assert [p.name for p in (start_weights.cache_root(project) / "chat").iterdir()] == [f"v{version}"]  # no scratch


def test_only_the_newest_versions_stay_cached(project, tiny_model_dir):
    for _ in range(3):
        start_weights.resolve("champion", project, NIGHT) if promote(project, tiny_model_dir) else None
    assert sorted(p.name for p in (start_weights.cache_root(project) / "chat").iterdir()) == ["v2", "v3"]


def test_a_champion_whose_weights_are_gone_fails_and_never_trains_from_base(project, tiny_model_dir, tmp_path):
    version = promote(project, tiny_model_dir)
    shutil.rmtree(tmp_path / "artifacts")  # the artifact store lost them
    with pytest.raises(registry.WeightsUnavailable, match=rf"models:/chat/{version}: cannot fetch its weights from "):
        start_weights.resolve("champion", project, NIGHT)
    assert not list((start_weights.cache_root(project) / "chat").iterdir())  # nothing half-written


def test_a_registry_that_cannot_be_asked_fails_and_never_trains_from_base(project, tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"not a database")
    with pytest.raises(Exception) as raised:
        start_weights.resolve("champion", project, NIGHT)
    assert "not a database" in str(raised.value) or isinstance(raised.value, registry.RegistryError)


@pytest.mark.timeout(300)
def test_the_lineage_goes_on_through_nights_rejected_within_noise_and_ends_with_its_champion(promote_night):
    """Night 1 promoted (v1); v2 rejected only for a gain within noise (+0.5, under min_improvement 1): the next night
    trains on from v2. v3 rejected with a gain below 0, v4 a backfill: neither continues. A new champion (v5) starts
    a lineage of its own: v2 was judged against v1 and is not continued from any more."""
    project, _ = promote_night("night-1", bleu=8.0)
    promote_night("night-2", bleu=8.5, min_improvement=1.0)
    promote_night("night-3", bleu=7.0, min_improvement=1.0)
    promote_night("night-4", bleu=20.0, run_type="backfill")
    tags = {str(v.version): v.tags for v in registry.versions(MlflowClient(project.tracking_uri), "chat")}
    assert [(tags[v][registry.LINEAGE_TAG], tags[v][registry.JUDGED_AGAINST_TAG]) for v in ("1", "2", "3", "4")] == [
        ("true", "none"), ("true", "1"), ("false", "1"), ("false", "1")]
    assert tags["2"]["lineage.reason"] == "bleu gain +0.500 within noise, every other rule passed"
    assert tags["3"]["lineage.reason"] == "bleu gain -1.000 below 0"
    assert tags["4"]["lineage.reason"] == "a backfill's candidate"

    # the fixture's nights are all trained on 2026-11-22's data: a night on 11-23 may continue from them
    assert start_weights.resolve("lineage", project, NIGHT)[1] == "models:/chat/2"
    assert start_weights.resolve("champion", project, NIGHT)[1] == "models:/chat/1"
    assert start_weights.resolve("lineage", project, "2026-11-22")[1] == "models:/chat/1"  # not its own day's
    promote_night("night-5", bleu=30.0)
    assert start_weights.resolve("lineage", project, NIGHT)[1] == "models:/chat/5"
