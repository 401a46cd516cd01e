"""The MLflow model registry as the pipeline uses it: champion lookup and download, versions, rollback.

    python -m pipeline.registry list     --config configs/embedded.yaml
    python -m pipeline.registry rollback --config configs/embedded.yaml --version 3 --reason "v4 answers in English to Chinese"

Aliases: `challenger` is the newest registered candidate; `champion` is what serves. Rolling back moves `champion`
to a named version and records who asked and why on that version, so the history stays readable in the UI.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.config import ProjectConfig, load_project

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
        return json.loads((Path(self.local_path()) / "train_config.json").read_text())


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


def rollback(project: ProjectConfig, version: int, reason: str) -> None:
    tracking.connect(project)
    client = MlflowClient()
    target = client.get_model_version(project.registered_model, str(version))  # raises if it does not exist
    previous = champion(client, project.registered_model)
    client.set_registered_model_alias(project.registered_model, CHAMPION, target.version)
    note = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} by {getpass.getuser()}: {reason}"
    client.set_model_version_tag(project.registered_model, target.version, "rollback.note", note)
    if previous is not None:
        client.set_model_version_tag(project.registered_model, previous.version, "rollback.replaced_by",
                                     f"v{target.version} ({note})")
    print(f"champion: v{previous.version if previous else '-'} -> v{target.version}")


def list_versions(project: ProjectConfig) -> None:
    tracking.connect(project)
    client = MlflowClient()
    name = project.registered_model
    aliases = {}
    for alias in (CHAMPION, CHALLENGER):
        try:
            aliases.setdefault(int(client.get_model_version_by_alias(name, alias).version), []).append(alias)
        except MlflowException as exc:
            if not is_missing(exc):
                raise
    for v in versions(client, name):
        print(f"v{v.version:<4} {','.join(aliases.get(int(v.version), [])):20s} "
              f"{v.tags.get('airflow.logical_date', '-'):11s} bleu={v.tags.get('metric.bleu', '-'):8s} "
              f"{v.tags.get('promotion.decision', '-')}: {v.tags.get('promotion.reason', '')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.registry", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("list", "rollback"):
        sub = commands.add_parser(name)
        sub.add_argument("--config", required=True)
        if name == "rollback":
            sub.add_argument("--version", type=int, required=True, help="version to make champion")
            sub.add_argument("--reason", required=True, help="why; recorded on the model version")
    args = parser.parse_args(argv)
    project = load_project(args.config)
    try:
        rollback(project, args.version, args.reason) if args.command == "rollback" else list_versions(project)
    except MlflowException as exc:
        print(f"registry error: {exc.message}", file=sys.stderr)
        return 1
    except RegistryError as exc:
        print(f"registry error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
