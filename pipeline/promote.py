"""Stage 5, promote: register the candidate and move the `champion` alias only if it wins the gate.

    python -m pipeline promote --config configs/embedded.yaml --run-date 2026-11-22 --evaluation runs/<dag>/<run>/evaluate

Every candidate becomes a new version of the registered model with alias `challenger`. It becomes `champion` only
if it passes the gate (gate.py): a significant gain on the gate metric over the incumbent (paired bootstrap over the
evaluation examples), no significant drop beyond a guard's allowance, not a backfill, not older data than the
champion's. The decision, every check with its estimate, confidence interval and p-value are tags on the DAG run and
on the model version; an HTML report is logged beside them.

Another run may move `champion` between this run's evaluate and promote (the nightly beside a backfill). A run that
may move champion then re-scores: evaluate runs again on the same inputs inside this task (`rescore`, given by the
CLI), so the gate always compares with the champion it would replace. A run that cannot move champion (a backfill,
older data) registers its challenger and records its decision against what evaluate scored, and says the champion
moved. Just before `champion` moves, it is read again: a move meanwhile fails the attempt, and the retry re-scores.

Fails closed: a registry or tracking error fails the task (Airflow retries it) instead of reading as "no champion";
metric names in the config that the evaluation did not produce are config errors. A retried task finds the version
it registered before instead of registering a second one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline.config import ConfigError, ProjectConfig, RunContext, as_params
from pipeline.data import partitions
from pipeline.process import failpoints
from pipeline.promotion import approval, report, significance
from pipeline.promotion.gate import (
    Decision,
    Evidence,
    check_metric_names,
    continues_lineage,
    decide,
    order_blocks,
)
from pipeline.serving import chat_model
from pipeline.storage import outputs
from pipeline.tracking import registry, runs

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class PromoteConfig:
    gate_metric: str = field(default="bleu", metadata={"help": "Overall metric that decides promotion."})
    min_improvement: float = field(default=0.0, metadata={"help": "Required margin over the incumbent (points)."})
    max_regression: dict = field(
        default_factory=lambda: {"rougeL": 2.0, "chrf1": 2.0},
        metadata={"help": "Other metrics and how many points each may drop vs the incumbent; e.g. perplexity: 1.0."},
    )
    base_floor: dict = field(default_factory=dict, metadata={
        "help": "Metrics on which the candidate may never be significantly worse than the base model by more than the "
                "given points, whoever the incumbent is (e.g. anchor_rougeL: 0.0): small allowed drops against each "
                "champion cannot pile up night after night. Needs the base model scored (evaluate.evaluate_base)."})
    allow_backfill_promotion: bool = field(
        default=False, metadata={"help": "Let runs of type 'backfill' move champion (normally only challenger)."}
    )
    allow_older_data: bool = field(
        default=False, metadata={"help": "Let a model trained on data older than the champion's move champion."}
    )
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the bootstrap intervals."})
    resamples: int = field(default=1000, metadata={"help": "Paired bootstrap resamples."})
    seed: int = field(default=12345, metadata={"help": "Seed of the resampling (same data -> same decision)."})
    min_examples: int = field(
        default=10, metadata={"help": "Fewest examples (per language for per-language keys) a bootstrap accepts."}
    )
    min_conversations: int = field(default=5, metadata={
        "help": "Fewest conversations a bootstrap comparison resamples; with fewer it shows nothing (p = 1): the "
                "gate metric does not pass and a guard does not block."})
    history: int = field(default=10, metadata={"help": "Past champions charted in the evaluation report."})
    require_approval: bool = field(default=False, metadata={
        "help": "A candidate that passes the gate stays `challenger`, awaiting a person's answer (make approve / "
                "make reject VERSION=N, pipeline/promotion/approval.py); only an approval moves `champion`. False: "
                "the gate's pass moves it at once."})
    approval_timeout_hours: float = field(default=20.0, metadata={
        "help": "No answer within this many hours rejects. Under 24: a run waiting holds the next night back "
                "(max_active_runs=1)."})

    def __post_init__(self):
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"promote.confidence must be in [0.5, 1), got {self.confidence}")
        if self.resamples < 100:
            raise ConfigError(f"promote.resamples must be >= 100 for a usable interval, got {self.resamples}")
        if not 0 < self.approval_timeout_hours < 24:
            raise ConfigError("promote.approval_timeout_hours must be in (0, 24): a night waiting longer blocks the "
                              f"next one, got {self.approval_timeout_hours}")


class ChampionMoved(RuntimeError):
    """`champion` is not the version evaluate scored, and this run could move it: the comparison must be redone."""


RESCORES = 3  # evaluate runs again at most this often per attempt; then the task fails and Airflow's retry goes on


def run(config: PromoteConfig, project: ProjectConfig, ctx: RunContext, evaluation: str,
        rescore: Callable[..., object] | None = None) -> Path:
    failpoints.hit("promote.start", ctx.run_type)  # tests hold one run here while another overtakes it
    # Before the stage's MLflow run opens: a re-run of evaluate (rescore) opens runs of its own.
    result = compared_with_current_champion(config, project, ctx, Path(evaluation), rescore)
    with runs.stage_run(project, ctx, "promote"):
        mlflow.log_params(as_params(config, "promote"))
        check_metric_names(config, result["scores"])
        # The digests evaluate scored: the shared partition may have been re-ingested since (pipeline/data/partitions.py).
        manifest = {**outputs.read_manifest(result["dataset"]), "digest": result["data_digest"],
                    "input_digest": result.get("data_input_digest", "")}
        # The run that logs the model version lists the data it was trained on (the Datasets column of the UI).
        runs.log_dataset(Path(result["dataset"]), manifest, context="training")
        client = MlflowClient()
        champion = registry.champion(client, project.registered_model)  # raises when the registry fails
        incumbent = scored_champion(client, project.registered_model, result, champion)
        evidence = gather_evidence(config, Path(evaluation), manifest, champion)
        candidate = register(client, project, ctx, result, manifest)
        decision = against_what_was_scored(decide(config, result["scores"], incumbent, ctx.run_type, evidence),
                                           incumbent, champion)
        awaiting = decision.promote and config.require_approval
        apply(client, project.registered_model, candidate, decision, champion, awaiting,
              lineage=continues_lineage(decision, ctx.run_type, awaiting))
        output = outputs.run_dir(project, ctx, "promote")
        outputs.write_json(output / outputs.PROMOTION, {"version": candidate.version, "awaiting_approval": awaiting,
                                                        **asdict(decision)})
        history = registry.champion_history(client, project.registered_model, config.history)
        report_file = report.write(output / outputs.REPORT, Path(evaluation), decision, candidate, history, ctx)
        mlflow.log_artifact(str(report_file))
        runs.log_artifact_to_parent(report_file)
        log.info("model version %s: %s", candidate.version, decision.reason)
    return output


def compared_with_current_champion(config: PromoteConfig, project: ProjectConfig, ctx: RunContext,
                                   evaluation: Path, rescore) -> dict:
    """evaluate's result, once it compares the candidate with the champion as it is now.

    Another run (the nightly beside a backfill) may have moved `champion` since evaluate scored it. A run that may
    move champion must not decide on that stale comparison: evaluate runs again on the same inputs (`rescore`; the
    candidate's and the base model's replies come from the generation cache, only the new champion is generated).
    A run that cannot move champion whatever its scores (a backfill, older data: gate.order_blocks) keeps what it
    scored, registers its challenger and records its decision against that, saying the champion moved."""
    runs.connect(project)
    client, name = MlflowClient(), project.registered_model
    for _ in range(RESCORES + 1):
        result = json.loads((evaluation / outputs.EVALUATION).read_text())
        champion = registry.champion(client, name)  # raises when the registry fails: never "no champion"
        moved = champion_moved(champion, result, registry.version_for_run(client, name, ctx.run_id))
        data_end = outputs.read_manifest(result["dataset"]).get("partition_date")
        if moved is None or order_blocks(config, ctx.run_type, data_end, trained_until(champion)):
            return result
        if rescore is None:
            raise ChampionMoved(f"{moved}: clear the evaluate and promote tasks of this run to compare again")
        log.warning("%s: evaluate runs again against the current champion", moved)
        rescore(dataset=partitions.pin(result["dataset"], result["data_digest"]), model=result["model"])
    raise ChampionMoved(f"{moved}, still, after evaluate ran again {RESCORES} times; the task's retry goes on")


def champion_moved(champion, result: dict, own_version) -> str | None:
    """Why the champion evaluate scored is not the champion now, or None when it is. A retry of this task may find
    its own version already champion: that is not a move."""
    if not result.get("champion_checked", "champion" in result["scores"]):
        return None  # evaluate was told not to score the champion: the gate uses its recorded scores
    if champion is not None and own_version is not None and champion.version == own_version.version:
        return None
    scored, now = result.get("champion_version"), (str(champion.version) if champion else None)
    return None if scored == now else f"champion is v{now or '-'} but evaluate scored v{scored or '-'}"


def trained_until(version) -> str | None:
    """The last partition date a registered version was trained on (older versions: their logical date)."""
    return version and (version.tags.get("data.partition_date") or version.tags.get("airflow.logical_date"))


def scored_champion(client: MlflowClient, name: str, result: dict, champion):
    """The champion version evaluate scored: the champion now, unless this run keeps a comparison that the champion
    has moved past (compared_with_current_champion); None when evaluate found no champion."""
    if not result.get("champion_checked", "champion" in result["scores"]):
        return champion
    scored = result.get("champion_version")
    if scored == (str(champion.version) if champion else None):
        return champion
    return client.get_model_version(name, scored) if scored else None


def against_what_was_scored(decision: Decision, incumbent, champion) -> Decision:
    """A decision judged against a champion that has moved since says so. Only a run that cannot move champion keeps
    such a comparison (order_blocks); one that would win on it has met a move since it checked: it fails, and the
    retry compares again."""
    if (incumbent and incumbent.version) == (champion and champion.version):
        return decision
    now = f"v{champion.version}" if champion else "none"
    if decision.promote:
        raise ChampionMoved(f"champion moved to {now} after promote compared with {decision.incumbent_name}; a retry "
                            "of the task compares again")
    note = (f"judged against what evaluate scored ({decision.incumbent_name}): champion moved to {now} since, and "
            "this run does not move it")
    return replace(decision, reason=f"{decision.reason}; {note}", checks=[*decision.checks, f"NOTE {note}"])


def register(client: MlflowClient, project: ProjectConfig, ctx: RunContext, result: dict, manifest: dict):
    name = project.registered_model
    existing = registry.version_for_run(client, name, ctx.run_id)
    if existing is not None:  # a retried task: registering again would create a duplicate version
        return existing
    scores = result["scores"]["candidate"]
    train_config = outputs.train_config(result["model"])
    tags = {**runs.run_tags(ctx), "data.digest": result["data_digest"], "model.dir": result["model"],
            "data.partition_date": manifest["partition_date"],
            "data.input_digest": result.get("data_input_digest", ""),
            registry.TRAIN_CONFIG_TAG: json.dumps(train_config, sort_keys=True),
            # lets evaluate reuse this version's cached replies without downloading it (registry.RegisteredWeights)
            **({registry.WEIGHTS_DIGEST_TAG: digest} if (digest := result.get("cache", {}).get(
                "model_digests", {}).get("candidate")) else {}),
            "mlflow.parent_run_id": runs.active_parent_id(),
            # overall metrics of every set (the report's history chart reads metric.anchor_*), no per-language ones
            **{f"metric.{k}": f"{v:.4f}" for k, v in scores.items() if significance.split_key(k)[1] is None}}
    info = chat_model.log_chat_model(result["model"])
    # The version is created with its tags in one request: a kill between registering and tagging would leave a
    # version that version_for_run cannot find, and the retry would register a duplicate.
    model_version = mlflow.register_model(info.model_uri, name, tags=tags)
    failpoints.hit("promote.registered")  # registered, champion not decided yet (tests kill it here)
    return client.get_model_version(name, model_version.version)


def gather_evidence(config: PromoteConfig, evaluation: Path, manifest: dict, champion) -> Evidence:
    """Per-example statistics of tonight's replies (held-out and anchor sets) and the data each model was trained on.

    Every key the gate will resample is checked first, so a set too small for the bootstrap stops the task before
    anything is registered.
    """
    sets = {}
    for name, file in outputs.SAMPLES.items():
        if (evaluation / file).exists():
            table = pd.read_parquet(evaluation / file)
            models = [m for m in ("candidate", "champion", "base") if m in table.columns]
            sets[name] = significance.PairedSamples(table, models, name)
    for key in [config.gate_metric, *config.max_regression]:
        metric, _, prefix = significance.split_key(key)
        samples = sets.get(prefix or "held-out")
        if samples is not None and len(samples.models) > 1 and metric in significance.RESAMPLED:
            significance.check_supported(samples, key, config.min_examples)
    weights = {name: significance.resample_weights(s.groups, config.resamples, config.seed) for name, s in sets.items()}
    return Evidence(held_out=sets.get("held-out"), anchor=sets.get("anchor"), memory=sets.get("memory"),
                    weights=weights, candidate_data_end=manifest.get("partition_date"),
                    champion_data_end=trained_until(champion))


def apply(client: MlflowClient, name: str, candidate, decision: Decision, compared, awaiting: bool,
          lineage: tuple[bool, str]) -> None:
    """Aliases, tags and descriptions of the decision. `champion` moves only from the version the gate compared with
    (`compared`): read again just before, so a promotion by another run meanwhile fails this attempt (its retry
    compares again) instead of being overwritten. `awaiting`: a pass waits for a person (promotion/approval.py)."""
    client.set_registered_model_alias(name, registry.CHALLENGER, candidate.version)
    if decision.promote:
        now = registry.champion(client, name)
        if (now and now.version) != (compared and compared.version):
            raise ChampionMoved(f"champion moved to v{now.version if now else '-'} while promote compared with "
                                f"v{compared.version if compared else '-'}; a retry of the task compares again")
        if not awaiting:
            client.set_registered_model_alias(name, registry.CHAMPION, candidate.version)
    verdict = "awaiting approval" if awaiting else "promoted" if decision.promote else "rejected"
    tags = {"promotion.decision": verdict, "promotion.reason": decision.reason,
            **(approval.awaiting_tags(compared) if awaiting else {}),
            "promotion.incumbent": decision.incumbent_name, "promotion.checks": "\n".join(decision.checks),
            registry.LINEAGE_TAG: str(lineage[0]).lower(), "lineage.reason": lineage[1],
            registry.JUDGED_AGAINST_TAG: str(compared.version) if compared else "none",
            **{f"gate.{c['name']}": f"gain {c['gain']:+.4f} CI [{c['low']:+.4f}, {c['high']:+.4f}] p={c['p_value']:.4f} "
               f"({c['set']}, {c['rule']} {c['threshold']:+g}: {'pass' if c['passed'] else 'fail'})"
               for c in decision.comparisons}}
    for key, value in tags.items():
        client.set_model_version_tag(name, candidate.version, key, value)
    # Descriptions are what the registry pages of the UI show first: the decision in words, and what the model is.
    client.update_model_version(name, candidate.version, description=describe(decision, candidate, awaiting))
    client.update_registered_model(name, description=MODEL_DESCRIPTION)
    mlflow.set_tags(tags)
    figures = {f"gate/{c['name']}_{part}": c[part] for c in decision.comparisons for part in ("gain", "low", "high", "p_value")
               if not math.isnan(c[part])}
    mlflow.log_metrics(figures)
    runs.log_to_parent(figures, tags={**tags, "promotion.version": str(candidate.version)})


MODEL_DESCRIPTION = (
    "Chat model fine-tuned nightly by the Airflow DAG `nightly_chat_retrain` on the newest dialogues.\n\n"
    "Every night's candidate becomes a new version with alias `challenger`; alias `champion` (what serves) moves to it "
    "only when it passes the promotion gate against the current champion (or the base model). Each version's "
    "description states that decision and every check; its `airflow.*` tags name the DAG run, whose MLflow run holds "
    "`evaluation_report.html`. Roll back with `make rollback VERSION=<n> REASON=...`."
)


def describe(decision: Decision, candidate, awaiting: bool = False) -> str:
    """The model version's description: the decision, its reason and each check, in Markdown."""
    verdict = ("AWAITING APPROVAL (passed the gate; stays `challenger` until a person approves)" if awaiting
               else "PROMOTED to `champion`" if decision.promote else "REJECTED (stays `challenger`)")
    run = candidate.tags.get("airflow.run_id", "-")
    lines = [f"**Decision: {verdict}**: {decision.reason}.", "", f"Compared with: {decision.incumbent_name}.", "",
             "Checks:", *[f"- {check}" for check in decision.checks or ["(none: nothing to compare with)"]], "",
             f"DAG run `{run}`, logical date {candidate.tags.get('airflow.logical_date', '-')}, "
             f"run type {candidate.tags.get('airflow.run_type', '-')}; data digest `{candidate.tags.get('data.digest', '-')}`."]
    return "\n".join(lines)
