"""The MLflow model registry as the stages use it: champion lookup, versions, a version's weights.

    champion(client, name)            # the champion's ModelVersion, None when nothing was promoted; raises RegistryError
    version_for_run(client, name, run_id)      # the version a DAG run registered (a retried promote finds it)

Aliases: `challenger` is the newest registered candidate; `champion` is what serves. Listing versions and rolling
back by hand are operations commands: ops/model_registry.py (`make models`, `make rollback`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.storage import outputs

CHAMPION, CHALLENGER = "champion", "challenger"
# On each version: the sha256 of its weights (generation_cache.weights_digest of the model evaluate scored) and the
# train config it was trained with; with both, evaluate finds the version's cached replies without downloading it.
WEIGHTS_DIGEST_TAG, TRAIN_CONFIG_TAG = "model.weights_sha256", "config.train"


class RegistryError(RuntimeError):
    """The registry could not be asked (server down, database error): never the same as "no champion"."""


def is_missing(exc: MlflowException) -> bool:
    """True only for "this model / alias does not exist"; any other error (an outage) is not an answer."""
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    # A missing alias comes back as INVALID_PARAMETER_VALUE "Registered model alias champion not found."
    return exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in exc.message and "not found" in exc.message


def champion(client: MlflowClient, name: str):
    """The champion model version, or None when nothing has been promoted yet. Raises RegistryError otherwise."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise RegistryError(f"model registry at {mlflow.get_tracking_uri()}: cannot read {name}@{CHAMPION}: "
                            f"{exc.error_code}: {exc.message[:300]}") from exc


def download_weights(name: str, version, destination: Path) -> Path:
    """Fetch a version's Hugging Face weights (the pyfunc's `model` artifact) to a local directory."""
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(destination))
    return Path(local) / "artifacts" / "model"


@dataclass
class RegisteredWeights:
    """A version's weights, downloaded the first time something needs their bytes (a generation cache miss)."""

    name: str
    version: str
    tags: dict
    destination: Path
    _local: Path | None = None

    @classmethod
    def of(cls, model_version, destination: Path) -> RegisteredWeights:
        return cls(model_version.name, str(model_version.version), dict(model_version.tags), destination)

    def __str__(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def recorded_digest(self) -> str | None:
        """What promote recorded; None for versions registered before it did (their bytes are hashed instead)."""
        return self.tags.get(WEIGHTS_DIGEST_TAG) or None

    def local_path(self) -> str:
        if self._local is None:
            self._local = download_weights(self.name, self.version, self.destination)
        return str(self._local)

    def train_config(self) -> dict:
        if TRAIN_CONFIG_TAG in self.tags:
            return json.loads(self.tags[TRAIN_CONFIG_TAG])
        return outputs.train_config(self.local_path())


def versions(client: MlflowClient, name: str) -> list:
    """All versions of a registered model, oldest first; none when the model is not registered yet."""
    try:
        found = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if is_missing(exc):
            return []
        raise RegistryError(f"model registry at {mlflow.get_tracking_uri()}: cannot list versions of {name}: "
                            f"{exc.error_code}: {exc.message[:300]}") from exc
    return sorted(found, key=lambda v: int(v.version))


def version_for_run(client: MlflowClient, name: str, run_id: str):
    """The version a DAG run registered, if any: a retried promote task must not register a second one."""
    return next((v for v in versions(client, name) if v.tags.get("airflow.run_id") == run_id), None)


def champion_history(client: MlflowClient, name: str, last: int) -> list:
    """Versions that were promoted at some point, oldest first (the last `last` of them)."""
    return [v for v in versions(client, name) if v.tags.get("promotion.decision") == "promoted"][-last:]
