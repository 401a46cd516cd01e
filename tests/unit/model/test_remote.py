"""A base model on S3 or in the MLflow registry is fetched once into the local model cache and loads like a
directory: a changed S3 object is a new cache entry (never a stale one), an alias resolves to its version, and a
prefix without a model or an alias nobody holds is an error naming the reference."""

import shutil

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.model import loading, remote
from pipeline.serving import chat_model
from pipeline.storage import s3


@pytest.fixture(autouse=True)
def model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "model-cache"))
    remote.fetch.cache_clear()
    yield tmp_path / "model-cache"
    remote.fetch.cache_clear()


def same_weights(left, right) -> bool:
    return all(torch.equal(a, b) for a, b in zip(left.state_dict().values(), right.state_dict().values(), strict=True))


def test_a_model_on_s3_is_fetched_once_and_a_changed_object_is_a_new_entry(s3_server, tiny_model_dir, model_cache,
                                                                           monkeypatch):
    uri = f"s3://{s3_server()}/models/tiny"
    s3.upload_dir(tiny_model_dir, uri)
    model = loading.load_model(uri)
    assert same_weights(model, loading.load_model(str(tiny_model_dir)))
    assert loading.load_tokenizer(uri).chat_template
    (entry,) = (model_cache / "s3").iterdir()

    remote.fetch.cache_clear()  # another process: the entry is found by the listing, nothing downloaded
    monkeypatch.setattr(s3, "download_dir", lambda *a: pytest.fail("downloaded again"))
    assert loading.resolve(uri) == entry
    monkeypatch.undo()
    monkeypatch.setenv(remote.CACHE_ENV, str(model_cache))

    (tiny_model_dir.parent / "edited.json").write_text('{"edited": true}')
    s3.upload(tiny_model_dir.parent / "edited.json", f"{uri}/generation_config.json")
    remote.fetch.cache_clear()
    assert loading.resolve(uri) != entry and len(list((model_cache / "s3").iterdir())) == 2


def test_a_prefix_without_a_model_is_named(s3_server, tmp_path):
    bucket = s3_server()
    with pytest.raises(FileNotFoundError, match=rf"s3://{bucket}/empty': no object under that prefix"):
        loading.resolve(f"s3://{bucket}/empty")
    (tmp_path / "notes.txt").write_text("not a model")
    s3.upload(tmp_path / "notes.txt", f"s3://{bucket}/notes/notes.txt")
    with pytest.raises(FileNotFoundError, match="no config.json under it"):
        loading.resolve(f"s3://{bucket}/notes")


def test_a_registered_version_by_alias_or_number(tmp_path, tiny_model_dir, model_cache, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)  # the env's, restored after
    experiment = mlflow.create_experiment("models", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        info = chat_model.log_chat_model(str(tiny_model_dir), registered_model_name="chat")
    MlflowClient().set_registered_model_alias("chat", "champion", info.registered_model_version)
    path = loading.resolve("models:/chat@champion")
    assert path == model_cache / "registry" / "chat" / f"v{info.registered_model_version}"
    assert same_weights(loading.load_model("models:/chat@champion"), loading.load_model(str(tiny_model_dir)))
    assert loading.resolve(f"models:/chat/{info.registered_model_version}") == path
    with pytest.raises(FileNotFoundError, match="no version of 'chat' has alias 'nightly'"):
        loading.resolve("models:/chat@nightly")
    shutil.rmtree(path)  # a removed entry is fetched again
    remote.fetch.cache_clear()
    assert loading.resolve("models:/chat@champion") == path and (path / "config.json").is_file()
