"""Base models that live elsewhere, fetched once into a local cache: an S3 prefix holding a Hugging Face model
directory, or a version of an MLflow registered model (one this pipeline registered: its weights are the
`model` artifact of the version).

    project.base_model: s3://models/llama-3.2-1b-instruct        # config.json, *.safetensors, tokenizer files
    project.base_model: models:/smollm2-chat@champion             # or models:/smollm2-chat/7

The cache is `$CHAT_RETRAIN_MODEL_CACHE` (default ~/.cache/chat-retrain/models). An S3 model's entry is named by
the sha256 of its listing (every key, size and ETag): a changed object is a new entry, never a stale one. A registry
reference is resolved to its version number first (an alias moves; a version's files never change). Entries are
downloaded into a scratch folder and renamed into place (outputs.atomic_dir), so a kill mid-download leaves no
half entry. Resolved once per process. The layout of a registered version (`download_weights`) and what counts as
"not registered" rather than an outage (`is_missing`) are defined here, below the registry code
(tracking/registry.py) that uses them too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

from pipeline.storage import outputs

CACHE_ENV = "CHAT_RETRAIN_MODEL_CACHE"
PREFIXES = ("s3://", "models:/")


def is_remote(reference: str) -> bool:
    return reference.startswith(PREFIXES)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "chat-retrain" / "models")


@functools.cache
def fetch(reference: str) -> Path:
    """The local directory holding `reference`'s model files (downloaded the first time)."""
    if reference.startswith("s3://"):
        return _fetch_s3(reference.rstrip("/"))
    return _fetch_registered(reference)


def _fetch_s3(uri: str) -> Path:
    from pipeline.storage import s3

    listing = sorted((o["Key"], o["Size"], o.get("ETag", "")) for o in s3.objects(uri) if not o["Key"].endswith("/"))
    if not listing:
        raise FileNotFoundError(f"model reference {uri!r}: no object under that prefix")
    if not any(key.endswith("/config.json") or key == "config.json" for key, _, _ in listing):
        raise FileNotFoundError(f"model reference {uri!r}: no config.json under it (expected a Hugging Face model "
                                f"directory; found {', '.join(key for key, _, _ in listing[:5])} ...)")
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:24]
    return _cached(cache_root() / "s3" / digest, lambda scratch: s3.download_dir(uri, scratch))


def _fetch_registered(reference: str) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, sep, alias = reference.removeprefix("models:/").partition("@")
    if sep:
        try:
            version = MlflowClient().get_model_version_by_alias(name, alias).version
        except MlflowException as exc:
            if is_missing(exc):
                raise FileNotFoundError(f"model reference {reference!r}: no version of {name!r} has alias {alias!r} "
                                        f"at {mlflow.get_tracking_uri()}") from exc
            raise  # the registry could not be asked: an outage, not an answer
    else:
        name, _, version = name.partition("/")
        if not version.isdigit():
            raise ValueError(f"model reference {reference!r}: use models:/<name>/<version> or models:/<name>@<alias>")

    def download(scratch: Path) -> None:
        weights = download_weights(name, version, scratch / "download")
        if not (weights / "config.json").is_file():
            raise FileNotFoundError(f"model reference {reference!r} (version {version}): no Hugging Face model "
                                    "under its artifacts/model (only versions this pipeline registered are read)")
        for item in weights.iterdir():
            item.rename(scratch / item.name)
        shutil.rmtree(scratch / "download")

    return _cached(cache_root() / "registry" / name / f"v{version}", download)


def download_weights(name: str, version, destination: Path) -> Path:
    """Fetch a registered version's Hugging Face weights (the pyfunc's `model` artifact, serving/chat_model.py) to a
    local directory."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(destination))
    return Path(local) / "artifacts" / "model"


def is_missing(exc) -> bool:
    """True only for "this model / alias does not exist"; any other MlflowException (an outage) is not an answer."""
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    # A missing alias comes back as INVALID_PARAMETER_VALUE "Registered model alias champion not found."
    return exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in exc.message and "not found" in exc.message


def _cached(final: Path, download) -> Path:
    """`final`, downloaded into a scratch directory and renamed into place (outputs.atomic_dir) if not there yet."""
    if not final.is_dir():
        with outputs.atomic_dir(final) as scratch:
            download(scratch)
    return final
