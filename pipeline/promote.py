"""Stage 5, promote: register the candidate and move the `champion` alias only if it wins the gate.

    python -m pipeline promote --config configs/embedded.yaml --run-date 2026-11-22 --evaluation runs/<dag>/<run>/evaluate

Every candidate becomes a new version of the registered model with alias `challenger`. It becomes `champion` only
if (1) its gate metric beats the incumbent by more than `min_improvement`, where the incumbent is the current
champion scored tonight on the same examples (or the base model when there is no champion yet); (2) no metric in
`max_regression` drops by more than its allowance; (3) the run is not a backfill, unless allowed. The decision,
every check and its reason are tags on the DAG run and on the model version; an HTML report is logged beside them.
A retried task finds the version it registered before instead of registering a second one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pipeline import evaluation_report, registry, serving, storage, tracking
from pipeline.config import ProjectConfig, RunContext, as_params

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"perplexity"}
RUNTIME_REQUIREMENTS = ["torch", "transformers", "mlflow", "pandas", "sacrebleu", "rouge-score", "gguf"]


@dataclass(frozen=True)
class PromoteConfig:
    gate_metric: str = field(default="bleu", metadata={"help": "Overall metric that decides promotion."})
    min_improvement: float = field(default=0.0, metadata={"help": "Required margin over the incumbent (points)."})
    max_regression: dict = field(
        default_factory=lambda: {"rougeL": 2.0, "chrf1": 2.0},
        metadata={"help": "Other metrics and how many points each may drop vs the incumbent; e.g. perplexity: 1.0."},
    )
    allow_backfill_promotion: bool = field(
        default=False, metadata={"help": "Let runs of type 'backfill' move champion (normally only challenger)."}
    )
    history: int = field(default=10, metadata={"help": "Past champions charted in the evaluation report."})


@dataclass(frozen=True)
class Decision:
    promote: bool
    metric: str
    candidate: float
    incumbent: float
    incumbent_name: str  # "champion v3", "base model"
    reason: str
    checks: list[str]  # one line per rule, passed or failed


def run(config: PromoteConfig, project: ProjectConfig, ctx: RunContext, evaluation: str) -> Path:
    with tracking.stage_run(project, ctx, "promote"):
        mlflow.log_params(as_params(config, "promote"))
        result = json.loads((Path(evaluation) / "evaluation.json").read_text())
        # The run that logs the model version lists the data it was trained on (the Datasets column of the UI).
        tracking.log_dataset(Path(result["dataset"]), storage.read_manifest(result["dataset"]), context="training")
        client = MlflowClient()
        champion = registry.champion(client, project.registered_model)
        candidate = register(client, project, ctx, result)
        decision = decide(config, result["scores"], champion, ctx.run_type)
        apply(client, project.registered_model, candidate, decision)
        output = storage.run_dir(project, ctx, "promote")
        storage.write_json(output / "promotion.json", {"version": candidate.version, **asdict(decision)})
        history = registry.champion_history(client, project.registered_model, config.history)
        report = evaluation_report.write(output / "evaluation_report.html", Path(evaluation), decision, candidate, history, ctx)
        mlflow.log_artifact(str(report))
        tracking.log_artifact_to_parent(report)
        log.info("model version %s: %s", candidate.version, decision.reason)
    return output


def register(client: MlflowClient, project: ProjectConfig, ctx: RunContext, result: dict):
    name = project.registered_model
    existing = registry.version_for_run(client, name, ctx.run_id)
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
    train_config = (Path(result["model"]) / "train_config.json").read_text()
    tags = {**tracking.run_tags(ctx), "data.digest": result["data_digest"], "model.dir": result["model"],
            "data.input_digest": result.get("data_input_digest", ""),
            "config.train": json.dumps(json.loads(train_config), sort_keys=True),
            "mlflow.parent_run_id": tracking.active_parent_id(),
            **{f"metric.{k}": f"{v:.4f}" for k, v in scores.items() if "_" not in k}}
    for key, value in tags.items():
        client.set_model_version_tag(name, model_version.version, key, value)
    return client.get_model_version(name, model_version.version)


def decide(config: PromoteConfig, scores: dict[str, dict[str, float]], champion, run_type: str = "manual") -> Decision:
    metric, candidate = config.gate_metric, scores["candidate"]
    incumbent_name, incumbent = _incumbent(scores, champion)
    if incumbent is None:
        return Decision(False, metric, candidate[metric], float("nan"), "none",
                        "no champion and no base score to compare with", [])
    checks, failed = [], []
    margin = _gain(metric, candidate[metric], incumbent[metric])
    gate_ok = margin > config.min_improvement
    checks.append(f"{'PASS' if gate_ok else 'FAIL'} {metric}: {candidate[metric]:.3f} vs {incumbent_name} "
                  f"{incumbent[metric]:.3f} (margin {margin:+.3f}, required > {config.min_improvement})")
    for other, allowance in sorted(config.max_regression.items()):
        if other not in candidate or other not in incumbent:
            continue
        change = _gain(other, candidate[other], incumbent[other])
        ok = change >= -allowance
        checks.append(f"{'PASS' if ok else 'FAIL'} {other}: {candidate[other]:.3f} vs {incumbent[other]:.3f} "
                      f"(change {change:+.3f}, allowed >= {-allowance})")
        failed += [] if ok else [f"{other} regressed by {-change:.3f} (> {allowance})"]
    if run_type == "backfill" and not config.allow_backfill_promotion:
        checks.append("FAIL run type: backfill runs do not move champion (allow_backfill_promotion=false)")
        failed.append("backfill run")
    promote = gate_ok and not failed
    verdict = "beats" if gate_ok else "does not beat"
    reason = f"{metric} {candidate[metric]:.3f} {verdict} {incumbent_name} {incumbent[metric]:.3f}"
    if gate_ok and failed:
        reason += "; blocked: " + "; ".join(failed)
    return Decision(promote, metric, candidate[metric], incumbent[metric], incumbent_name, reason, checks)


def apply(client: MlflowClient, name: str, candidate, decision: Decision) -> None:
    client.set_registered_model_alias(name, registry.CHALLENGER, candidate.version)
    if decision.promote:
        client.set_registered_model_alias(name, registry.CHAMPION, candidate.version)
    tags = {"promotion.decision": "promoted" if decision.promote else "rejected", "promotion.reason": decision.reason,
            "promotion.incumbent": decision.incumbent_name, "promotion.checks": "\n".join(decision.checks)}
    for key, value in tags.items():
        client.set_model_version_tag(name, candidate.version, key, value)
    # Descriptions are what the registry pages of the UI show first: the decision in words, and what the model is.
    client.update_model_version(name, candidate.version, description=describe(decision, candidate))
    client.update_registered_model(name, description=MODEL_DESCRIPTION)
    mlflow.set_tags(tags)
    tracking.log_to_parent(tags={**tags, "promotion.version": str(candidate.version)})


MODEL_DESCRIPTION = (
    "Chat model fine-tuned nightly by the Airflow DAG `nightly_chat_retrain` on the newest dialogues.\n\n"
    "Every night's candidate becomes a new version with alias `challenger`; alias `champion` (what serves) moves to it "
    "only when it passes the promotion gate against the current champion (or the base model). Each version's "
    "description states that decision and every check; its `airflow.*` tags name the DAG run, whose MLflow run holds "
    "`evaluation_report.html`. Roll back with `make rollback VERSION=<n> REASON=...`."
)


def describe(decision: Decision, candidate) -> str:
    """The model version's description: the decision, its reason and each check, in Markdown."""
    verdict = "PROMOTED to `champion`" if decision.promote else "REJECTED (stays `challenger`)"
    run = candidate.tags.get("airflow.run_id", "-")
    lines = [f"**Decision: {verdict}**: {decision.reason}.", "", f"Compared with: {decision.incumbent_name}.", "",
             "Checks:", *[f"- {check}" for check in decision.checks or ["(none: nothing to compare with)"]], "",
             f"DAG run `{run}`, logical date {candidate.tags.get('airflow.logical_date', '-')}, "
             f"run type {candidate.tags.get('airflow.run_type', '-')}; data digest `{candidate.tags.get('data.digest', '-')}`."]
    return "\n".join(lines)


def _incumbent(scores: dict, champion) -> tuple[str, dict | None]:
    if "champion" in scores:  # scored tonight, on the same examples: the fair comparison
        return f"champion v{champion.version if champion else '?'}", scores["champion"]
    if champion is not None and any(k.startswith("metric.") for k in champion.tags):
        recorded = {k.removeprefix("metric."): float(v) for k, v in champion.tags.items() if k.startswith("metric.")}
        return f"champion v{champion.version} (recorded scores)", recorded
    if "base" in scores:
        return "base model", scores["base"]
    return "none", None


def _gain(metric: str, candidate: float, incumbent: float) -> float:
    return (incumbent - candidate) if metric in LOWER_IS_BETTER else (candidate - incumbent)
