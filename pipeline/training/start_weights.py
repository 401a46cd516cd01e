"""The weights a night starts from (`train.init`): the base model, the current champion, or the lineage, so that
what earlier nights learned is carried forward instead of relearned from the base model every night.

    reference, origin = start_weights.resolve("champion", project, "2026-11-23")   # ("runs/.weights/smollm2-chat/v3/model", "models:/smollm2-chat/3")

`lineage` starts from the newest candidate judged against the current champion that promote marked to continue
(promoted, or rejected only because its gain was within noise: gate.continues_lineage; registry.lineage_head),
else from the champion. With `champion`, a night the gate rejects is thrown away and the next one restarts from the
same weights, so knowledge accumulates only through promotions; the lineage keeps what such nights learned while
the gate still decides what serves, and guards and the floor still judge every candidate against the champion.

`champion` (or `lineage`) with nothing promoted yet starts from the base model (the first night). A version that exists but whose
weights cannot be fetched fails the task (registry.WeightsUnavailable, retried by Airflow), and so does a registry
that cannot be asked (registry.RegistryError): neither ever falls back to the base model, which would silently
throw away what the champion knows. The champion's weights come through the registry's shared weight cache, so a
version is downloaded once, whichever night or stage needs it first.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.config import ProjectConfig
from pipeline.tracking import registry, runs

log = logging.getLogger(__name__)

INITS = ("base", "champion", "lineage")


def cache_root(project: ProjectConfig) -> Path:
    """Where registry versions' weights are kept, shared by every run of the project."""
    return Path(project.runs_root) / ".weights"


def resolve(init: str, project: ProjectConfig, run_date: str) -> tuple[str, str]:
    """(what the loaders take, where it came from: the base model reference or models:/<name>/<version>)."""
    if init not in INITS:
        raise ValueError(f"train.init must be one of {INITS}, got {init!r}")
    if init == "base":
        return project.base_model, project.base_model
    runs.connect(project)
    client, name = MlflowClient(), project.registered_model
    version = registry.champion(client, name)  # RegistryError: fails, never "none"
    if init == "lineage":
        version = registry.lineage_head(client, name, version, before=run_date) or version
    if version is None:
        log.info("train.init=%s: nothing promoted yet in %s; starting from the base model", init, name)
        return project.base_model, project.base_model
    path = registry.cached_weights(project.registered_model, version.version, cache_root(project))
    return str(path), f"models:/{project.registered_model}/{version.version}"
