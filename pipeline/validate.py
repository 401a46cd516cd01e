"""Stage 2, validate: a Great Expectations suite is the contract between ingestion and training.

    python -m pipeline validate --config configs/embedded.yaml --run-date 2026-11-22 --dataset data/conversations/dt=2026-11-22

Any failed expectation raises DataValidationError, so the Airflow task fails and training never starts.
The full GX result is written next to the run's outputs and logged to MLflow. Prints the dataset URI it vouched for.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd

from pipeline import storage, tracking
from pipeline.config import ProjectConfig, RunContext, as_params

log = logging.getLogger(__name__)


class DataValidationError(RuntimeError):
    """The dataset broke the contract; the message lists each failed expectation with examples."""


@dataclass(frozen=True)
class ValidateConfig:
    roles: list[str] = field(default_factory=lambda: ["user", "assistant"], metadata={"help": "Allowed roles."})
    languages: list[str] = field(default_factory=lambda: ["en", "zh"], metadata={"help": "Allowed language codes."})
    max_text_chars: int = field(default=2000, metadata={"help": "Longest utterance allowed, in characters."})
    min_conversations: dict = field(
        default_factory=lambda: {"train": 500, "validation": 20, "test": 20},
        metadata={"help": "Minimum conversations per split; fewer means an upstream outage, not a small night."},
    )


def run(config: ValidateConfig, project: ProjectConfig, ctx: RunContext, dataset: str) -> str:
    with tracking.stage_run(project, ctx, "validate"):
        mlflow.log_params(as_params(config, "validate"))
        turns = pd.read_parquet(Path(dataset) / "turns.parquet")
        results = check_turns(turns, config) + check_conversations(turns, config)
        report = summarize(results)
        output = storage.run_dir(project, ctx, "validate")
        storage.write_json(output / "validation.json", report)
        mlflow.log_artifact(str(output / "validation.json"))
        mlflow.log_metrics({"validate.failed_expectations": report["failed"], "validate.rows": len(turns)})
        if report["failed"]:
            raise DataValidationError(f"{dataset}: {report['failed']} expectation(s) failed:\n" + report["message"])
        log.info("validated %s: %d expectations passed", dataset, report["evaluated"])
    return dataset


def check_turns(turns: pd.DataFrame, config: ValidateConfig) -> list:
    gx, gxe = _gx()
    suite = gx.ExpectationSuite(name="conversation_turns")
    for expectation in [
        # schema: training and evaluation index these columns by name
        gxe.ExpectTableColumnsToMatchSet(column_set=_REQUIRED, exact_match=False),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in _REQUIRED],  # a null turn breaks the chat template
        gxe.ExpectColumnValuesToBeInSet(column="role", value_set=config.roles),  # unknown roles break the template
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "validation", "test"]),
        gxe.ExpectColumnValuesToBeInSet(column="language", value_set=config.languages),  # metrics tokenize per language
        # empty replies teach the model to say nothing; huge ones blow the context and memory
        gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1, max_value=config.max_text_chars),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["conversation_id", "turn_index"]),  # no doubled turns
        # the first turn is the user's: the assistant mask and eval prompts assume user/assistant alternation
        gxe.ExpectColumnPairValuesToBeInSet(
            column_A="turn_parity", column_B="role", value_pairs_set=[(0, "user"), (1, "assistant")]
        ),
    ]:
        suite.add_expectation(expectation)
    frame = turns.assign(turn_parity=turns["turn_index"] % 2)
    return _validate(frame, suite, "turns")


def check_conversations(turns: pd.DataFrame, config: ValidateConfig) -> list:
    gx, gxe = _gx()
    conversations = turns.groupby("conversation_id").agg(
        splits=("split", "nunique"), split=("split", "first"), turns=("turn_index", "count"),
        assistant_turns=("role", lambda roles: int((roles == "assistant").sum())),
    ).reset_index()
    suite = gx.ExpectationSuite(name="conversations")
    suite.add_expectation(  # leakage: a conversation in two splits inflates test scores
        gxe.ExpectColumnValuesToBeBetween(column="splits", min_value=1, max_value=1)
    )
    suite.add_expectation(  # a conversation without a reply has nothing to learn from
        gxe.ExpectColumnValuesToBeBetween(column="assistant_turns", min_value=1)
    )
    results = _validate(conversations, suite, "conversations")
    for split, minimum in config.min_conversations.items():  # an outage upstream shows up as a tiny split
        per_split = gx.ExpectationSuite(name=f"conversations_{split}")
        per_split.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=minimum))
        results += _validate(conversations[conversations["split"] == split], per_split, f"split_{split}")
    return results


def summarize(results: list) -> dict:
    failures = [r for r in results if not r["success"]]
    lines = [
        f"- [{r['batch']}] {r['type']}({r['kwargs']}): {r['observed']}" for r in failures
    ]
    return {"evaluated": len(results), "failed": len(failures), "results": results, "message": "\n".join(lines)}


_REQUIRED = ["conversation_id", "turn_index", "role", "text", "language", "split", "partition_date"]


def _validate(frame: pd.DataFrame, suite, batch_name: str) -> list:
    gx, _ = _gx()
    context = gx.get_context(mode="ephemeral")  # in memory: nothing written outside the run's own outputs
    batch = (
        context.data_sources.add_pandas(f"source_{batch_name}")
        .add_dataframe_asset(batch_name)
        .add_batch_definition_whole_dataframe(batch_name)
        .get_batch(batch_parameters={"dataframe": frame})
    )
    outcome = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5})
    return [_describe(r, batch_name) for r in outcome.results]


def _describe(result, batch_name: str) -> dict:
    config = result.expectation_config
    details = result.result or {}
    observed = details.get("observed_value")
    if observed is None and "unexpected_count" in details:
        observed = f"{details['unexpected_count']} unexpected, e.g. {details.get('partial_unexpected_list', [])[:5]}"
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    return {"batch": batch_name, "type": config.type, "kwargs": kwargs, "success": bool(result.success),
            "observed": observed if result.success is not None else str(result.exception_info)}


def _gx():
    # Imported lazily: GX is slow to import and prints noise if imported after airflow.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe

    gx.get_context(mode="ephemeral")  # suites can only be built once a context is active
    return gx, gxe
