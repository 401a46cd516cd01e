"""The registry fails closed: only "this model / alias does not exist" reads as "no champion"; an outage or a broken
database is an error (the task fails and Airflow retries it), never a reason to compare with the base model."""

import sqlite3

import pytest
from mlflow.tracking import MlflowClient

from pipeline.process.ports import free_port
from pipeline.tracking import registry


@pytest.fixture
def client(tmp_path):
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_no_model_and_no_alias_mean_no_champion(client):
    assert registry.champion(client, "chat") is None  # model never registered
    client.create_registered_model("chat")
    assert registry.champion(client, "chat") is None  # registered, never promoted
    assert registry.versions(client, "chat") == []


def test_a_broken_registry_database_is_an_error_not_no_champion(client, tmp_path):
    client.create_registered_model("chat")
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("DROP TABLE registered_model_aliases")
    with pytest.raises(registry.RegistryError, match="cannot read chat@champion"):
        registry.champion(client, "chat")


def test_an_unreachable_registry_server_is_an_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(registry.RegistryError, match="cannot read chat@champion"):
        registry.champion(down, "chat")
    with pytest.raises(registry.RegistryError, match="cannot list versions of chat"):
        registry.versions(down, "chat")
