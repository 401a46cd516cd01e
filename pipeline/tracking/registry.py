"""The MLflow model registry as the stages use it: champion lookup, versions, a version's weights.

    champion(client, name)            # the champion's ModelVersion, None when nothing was promoted; raises RegistryError
    version_for_run(client, name, run_id)      # the version a DAG run registered (a retried promote finds it)

Aliases: `challenger` is the newest registered candidate; `champion` is what serves. Listing versions and rolling
back by hand are operations commands: ops/model_registry.py (`make models`, `make rollback`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.model.remote import download_weights, is_missing  # defined beside base models from the registry
from pipeline.storage import outputs

CHAMPION, CHALLENGER = "champion", "challenger"
# On each version: the sha256 of its weights (generation_cache.weights_digest of the model evaluate scored) and the
# train config it was trained with; with both, evaluate finds the version's cached replies without downloading it.
WEIGHTS_DIGEST_TAG, TRAIN_CONFIG_TAG = "model.weights_sha256", "config.train"
# On each version promote judged: whether a later night may train on from it (`train.init: lineage`), and against
# which champion version it was judged ("none": the base model), so a lineage never outlives its champion.
LINEAGE_TAG, JUDGED_AGAINST_TAG = "lineage.continues", "lineage.judged_against"


class RegistryError(RuntimeError):
    """The registry could not be asked (server down, database error): never the same as "no champion"."""


def champion(client: MlflowClient, name: str):
    """The champion model version, or None when nothing has been promoted yet. Raises RegistryError otherwise."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise RegistryError(f"model registry at {mlflow.get_tracking_uri()}: cannot read {name}@{CHAMPION}: "
                            f"{exc.error_code}: {exc.message[:300]}") from exc


class WeightsUnavailable(RuntimeError):
    """A version's weights could not be fetched (artifact store down, artifacts deleted); retryable, and never a
    reason to use other weights instead."""


def cached_weights(name: str, version, cache_root: Path) -> Path:
    """A version's weights in a cache shared by every run (`<runs_root>/.weights/<name>/v<N>/model`): downloaded
    once into a scratch directory beside it and renamed into place. A kill mid-download leaves only scratch; two
    runs fetching at once both succeed, the second rename fails on the first's entry and its copy is dropped.
    Version numbers are never reused within a registered model, so an entry never goes stale."""
    final = Path(cache_root) / name / f"v{version}"
    if (final / "model").is_dir():
        return final / "model"
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".v{version}.tmp-", dir=final.parent))
    try:
        download_weights(name, version, scratch / "download").rename(scratch / "model")
        shutil.rmtree(scratch / "download")
        scratch.rename(final)
    except OSError as exc:
        if not (final / "model").is_dir():  # not "another run was first": the download itself failed
            raise WeightsUnavailable(_unavailable(name, version, exc)) from exc
    except Exception as exc:
        raise WeightsUnavailable(_unavailable(name, version, exc)) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _prune(final.parent)
    return final / "model"


CACHED_VERSIONS = 2  # per registered model: the champion a night starts from and the one before (a rollback)


def _prune(model_dir: Path) -> None:
    """Keep the newest CACHED_VERSIONS entries (0.5 GB each for SmolLM2-135M); older versions are fetched again if
    a rollback ever needs them."""
    entries = sorted((int(p.name[1:]), p) for p in model_dir.glob("v*") if p.name[1:].isdigit())
    for _, path in entries[:-CACHED_VERSIONS]:
        shutil.rmtree(path, ignore_errors=True)


def _unavailable(name: str, version, exc: BaseException) -> str:
    return (f"models:/{name}/{version}: cannot fetch its weights from {mlflow.get_tracking_uri()}: "
            f"{type(exc).__name__}: {str(exc)[:300]}")


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


def lineage_head(client: MlflowClient, name: str, current_champion, before: str):
    """The newest version a night on `before` may train on from under `train.init: lineage`: judged against the
    current champion (or, with none, the base model) and marked to continue by promote, trained on data before
    `before`; None when there is none (then the champion itself, or the base model)."""
    against = str(current_champion.version) if current_champion else "none"
    heads = [v for v in versions(client, name) if v.tags.get(LINEAGE_TAG) == "true"
             and v.tags.get(JUDGED_AGAINST_TAG) == against and v.tags.get("data.partition_date", "") < before]
    return max(heads, key=lambda v: (v.tags["data.partition_date"], int(v.version)), default=None)
