"""Stage 5, promote: register the candidate and move the `champion` alias only if it wins the gate.

    python -m pipeline promote --config configs/embedded.yaml --run-date 2026-11-22 --evaluation runs/<dag>/<run>/evaluate

Every candidate becomes a new version of the registered model with alias `challenger`. It becomes `champion` only
if its gate metric beats the current champion's (or the base model's, when there is no champion yet) by at least
`min_improvement`. The decision and its reason are tags on the DAG run and on the model version. A retried task
finds the version it registered before instead of registering a second one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import serving, storage, tracking
from pipeline.config import ProjectConfig, RunContext, as_params

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"perplexity"}
RUNTIME_REQUIREMENTS = ["torch", "transformers", "mlflow", "pandas", "sacrebleu", "rouge-score", "gguf"]


@dataclass(frozen=True)
class PromoteConfig:
    gate_metric: str = field(default="bleu", metadata={"help": "Overall metric that decides promotion."})
    min_improvement: float = field(default=0.0, metadata={"help": "Required margin over the incumbent."})


@dataclass(frozen=True)
class Decision:
    promote: bool
    metric: str
    candidate: float
    incumbent: float
    incumbent_name: str  # "champion vN" or "base model"
    reason: str


def run(config: PromoteConfig, project: ProjectConfig, ctx: RunContext, evaluation: str) -> Path:
    with tracking.stage_run(project, ctx, "promote"):
        mlflow.log_params(as_params(config, "promote"))
        result = json.loads((Path(evaluation) / "evaluation.json").read_text())
        client = MlflowClient()
        champion = current_champion(client, project.registered_model)
        candidate = register(client, project, ctx, result)
        decision = decide(config, result["scores"], champion)
        apply(client, project.registered_model, candidate, decision)
        output = storage.run_dir(project, ctx, "promote")
        storage.write_json(output / "promotion.json", {"version": candidate.version, **asdict(decision)})
        log.info("model version %s: %s", candidate.version, decision.reason)
    return output


def current_champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None  # no registered model or no champion yet


def register(client: MlflowClient, project: ProjectConfig, ctx: RunContext, result: dict):
    name = project.registered_model
    existing = _version_for_run(client, name, ctx.run_id)
    if existing is not None:  # a retried task: registering again would create a duplicate version
        return existing
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=serving.ChatModel(),
        artifacts={"model": result["model"]},
        code_paths=[str(Path(__file__).parent)],
        pip_requirements=[f"{package}=={version(package)}" for package in RUNTIME_REQUIREMENTS],
        registered_model_name=name,
    )
    model_version = client.get_model_version(name, str(info.registered_model_version))
    scores = result["scores"]["candidate"]
    tags = {**tracking.run_tags(ctx), "data.digest": result["data_digest"], "model.dir": result["model"],
            **{f"metric.{k}": f"{v:.4f}" for k, v in scores.items() if "_" not in k}}
    for key, value in tags.items():
        client.set_model_version_tag(name, model_version.version, key, value)
    return client.get_model_version(name, model_version.version)


def decide(config: PromoteConfig, scores: dict[str, dict[str, float]], champion) -> Decision:
    metric = config.gate_metric
    candidate = scores["candidate"][metric]
    if champion is not None and f"metric.{metric}" in champion.tags:
        incumbent, incumbent_name = float(champion.tags[f"metric.{metric}"]), f"champion v{champion.version}"
    elif "base" in scores:
        incumbent, incumbent_name = scores["base"][metric], "base model"
    else:
        return Decision(False, metric, candidate, float("nan"), "none", "no champion and no base score to beat")
    margin = (incumbent - candidate) if metric in LOWER_IS_BETTER else (candidate - incumbent)
    promote = margin > config.min_improvement
    verdict = "beats" if promote else "does not beat"
    reason = (f"{metric} {candidate:.3f} {verdict} {incumbent_name} {incumbent:.3f} "
              f"(margin {margin:+.3f}, required > {config.min_improvement})")
    return Decision(promote, metric, candidate, incumbent, incumbent_name, reason)


def apply(client: MlflowClient, name: str, candidate, decision: Decision) -> None:
    client.set_registered_model_alias(name, "challenger", candidate.version)
    if decision.promote:
        client.set_registered_model_alias(name, "champion", candidate.version)
    tags = {"promotion.decision": "promoted" if decision.promote else "rejected", "promotion.reason": decision.reason}
    for key, value in tags.items():
        client.set_model_version_tag(name, candidate.version, key, value)
    mlflow.set_tags(tags)
    tracking.log_to_parent(tags={**tags, "promotion.version": str(candidate.version)})


def _version_for_run(client: MlflowClient, name: str, run_id: str):
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return next((v for v in versions if v.tags.get("airflow.run_id") == run_id), None)
