"""Stage 2, validate: a Great Expectations suite is the contract between ingestion and training.

    python -m pipeline validate --config configs/embedded.yaml --run-date 2026-11-22 --dataset data/conversations/dt=2026-11-22

Every expectation is a named rule that says what it protects (`meta.protects`) and how bad breaking it is:
`critical` rules raise DataValidationError, so the Airflow task fails and training never starts; `warning` rules
are logged and tagged on the MLflow run. The GX result (validation.json) and the Data Docs site (HTML) are written
to the run's outputs and logged to MLflow. Prints the dataset URI it vouched for, pinned to the digest of the bytes
it checked (pipeline/data/partitions.py): train and evaluate refuse a partition re-ingested since.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd

from pipeline.config import ProjectConfig, RunContext, as_params
from pipeline.data import partitions, table
from pipeline.storage import outputs
from pipeline.tracking import runs

log = logging.getLogger(__name__)

SEVERITIES = ("critical", "warning")


class DataValidationError(RuntimeError):
    """The dataset broke the contract; the message lists each failed critical rule with examples."""


@dataclass(frozen=True)
class ValidateConfig:
    roles: list[str] = field(default_factory=lambda: ["system", "user", "assistant"], metadata={
        "help": "Allowed roles (system: only as turn -1, a kept system message; the alternation rule holds it there)."})
    languages: list[str] = field(default_factory=lambda: ["en", "zh"], metadata={"help": "Allowed language codes."})
    max_text_chars: int = field(default=2000, metadata={"help": "Longest utterance allowed, in characters."})
    min_conversations: dict = field(
        default_factory=lambda: {"train": 500, "validation": 20, "test": 20},
        metadata={"help": "Minimum conversations per split; fewer means an upstream outage, not a small night."},
    )
    max_duplicate_ratio: float = field(default=0.3, metadata={"help": "Duplicate conversations / conversations read."})
    max_pii_ratio: float = field(default=0.01, metadata={"help": "Turns that needed PII masking / turns read."})
    max_quarantine_ratio: float = field(default=0.05, metadata={
        "help": "Rejected records / records read, per source; a source's own max_quarantine_ratio wins."})
    severity: dict = field(
        default_factory=dict, metadata={"help": "Rule name -> critical | warning, overriding the rule's default."}
    )

    def __post_init__(self):
        bad = {k: v for k, v in self.severity.items() if v not in SEVERITIES}
        if bad:
            raise ValueError(f"severity {bad}: expected one of {SEVERITIES}")


def run(config: ValidateConfig, project: ProjectConfig, ctx: RunContext, dataset: str) -> str:
    with runs.stage_run(project, ctx, "validate"):
        mlflow.log_params(as_params(config, "validate"))
        partition = partitions.read(dataset)  # the bytes checked are the bytes whose digest is handed on
        manifest, turns = partition.manifest, partition.turns
        output = outputs.run_dir(project, ctx, "validate")
        with outputs.atomic_dir(output) as scratch:
            results = check(turns, manifest, config, docs_dir=scratch / "data_docs")
            report = summarize(results)
            outputs.write_json(scratch / "validation.json", report)
        runs.log_dataset(partition.path, manifest, context="validation")
        mlflow.log_artifact(str(output / "validation.json"))
        mlflow.log_artifacts(str(output / "data_docs"), "data_docs")
        mlflow.log_metrics({"validate.failed_critical": len(report["critical"]),
                            "validate.failed_warning": len(report["warnings"]), "validate.rows": len(turns)})
        if report["warnings"]:
            mlflow.set_tag("validate.warnings", ", ".join(report["warnings"]))
            log.warning("%s: soft rule(s) broken (training goes on):\n%s", dataset, report["warning_message"])
        if report["critical"]:
            raise DataValidationError(
                f"{dataset}: {len(report['critical'])} critical rule(s) broken:\n{report['critical_message']}"
            )
        partitions.approve(partition, ctx.run_id)  # later nights replay and score only approved days
        log.info("validated %s (sha256 %s): %d expectations evaluated", partition.path, partition.digest,
                 report["evaluated"])
    return partition.uri


def contract(config: ValidateConfig) -> dict[str, list]:
    """The rules, per table they are checked on. Each says what breaks downstream if it fails."""
    _, gxe = _gx()

    def rule(name: str, protects: str, expectation, severity: str = "critical"):
        expectation.meta = {"rule": name, "protects": protects}
        expectation.severity = config.severity.get(name, severity)
        return expectation

    return {
        "turns": [
            rule("schema", "training and evaluation index these columns by name",
                 gxe.ExpectTableColumnsToMatchSet(column_set=table.COLUMNS, exact_match=True)),
            rule("turn_index_type", "turn order is sorted numerically; text would sort 10 before 2",
                 gxe.ExpectColumnValuesToBeInTypeList(column="turn_index", type_list=["int32", "int64"])),
            rule("text_type", "the tokenizer needs strings",
                 gxe.ExpectColumnValuesToBeOfType(column="text", type_="str")),
            *[rule(f"not_null.{c}", "a null turn breaks the chat template and the split hash",
                   gxe.ExpectColumnValuesToNotBeNull(column=c)) for c in table.COLUMNS],
            rule("roles", "an unknown role has no place in the chat template",
                 gxe.ExpectColumnValuesToBeInSet(column="role", value_set=config.roles)),
            rule("split_values", "train/evaluate select rows by these names",
                 gxe.ExpectColumnValuesToBeInSet(column="split", value_set=table.SPLIT_VALUES)),
            rule("languages", "only languages the night is configured for (und: not identified)",
                 gxe.ExpectColumnValuesToBeInSet(column="language", value_set=config.languages)),
            rule("text_length", "empty replies teach silence; huge ones blow the context and memory",
                 gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1, max_value=config.max_text_chars)),
            rule("unique_turn", "a doubled turn is trained on twice and corrupts alternation",
                 gxe.ExpectCompoundColumnsToBeUnique(column_list=["conversation_id", "turn_index"])),
        ],
        "turn_order": [
            # role@parity of turn_index: a set check is vectorized; GX's column-pair check is row by row (38 s at 1M)
            rule("alternation", "the assistant mask and eval prompts assume user first (after a kept system "
                 "message, turn -1), then alternating",
                 gxe.ExpectColumnValuesToBeInSet(column="role_at_parity",
                                                 value_set=["system@-1", "user@0", "assistant@1"])),
        ],
        "conversations": [
            rule("one_split_per_conversation", "leakage: a conversation in two splits inflates test scores",
                 gxe.ExpectColumnValuesToBeBetween(column="splits", min_value=1, max_value=1)),
            rule("has_reply", "a conversation without a reply has nothing to learn from",
                 gxe.ExpectColumnValuesToBeBetween(column="assistant_turns", min_value=1)),
        ],
        "splits": [
            rule("all_splits_present", "training needs validation loss; promotion needs a test set",
                 gxe.ExpectColumnDistinctValuesToContainSet(column="split", value_set=table.SPLITS)),
            rule("min_conversations", "an upstream outage shows up as a tiny split, not as a small night",
                 gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="conversations", column_B="required",
                                                             or_equal=True)),
        ],
        "quality": [
            rule("duplicate_ratio", "many duplicates mean a replayed or looping upstream export",
                 gxe.ExpectColumnMaxToBeBetween(column="duplicate_ratio", max_value=config.max_duplicate_ratio),
                 "warning"),
            rule("pii_ratio", "masking is a safety net; a surge of PII means a source that should not be here",
                 gxe.ExpectColumnMaxToBeBetween(column="pii_ratio", max_value=config.max_pii_ratio), "warning"),
        ],
        "sources": [
            rule("quarantine_ratio", "a producer writing broken records; training on the rest is biased",
                 gxe.ExpectColumnValuesToBeNull(column="over_allowance")),
        ],
    }


def tables(turns: pd.DataFrame, manifest: dict, config: ValidateConfig) -> dict[str, pd.DataFrame]:
    """The tables the rules look at: the turns, one row per conversation, one per split, one of ratios."""
    by_conversation = turns.assign(is_reply=turns["role"] == "assistant").groupby("conversation_id")
    conversations = pd.DataFrame({"splits": by_conversation["split"].nunique(),
                                  "assistant_turns": by_conversation["is_reply"].sum()}).reset_index()
    per_split = by_conversation["split"].first().value_counts().sort_index()  # only the splits present
    splits = pd.DataFrame({"split": per_split.index, "conversations": per_split.to_numpy(),
                           "required": [int(config.min_conversations.get(s, 0)) for s in per_split.index]})
    counts = manifest.get("counts", {})
    read = max(counts.get("read", 0), 1)
    accepted = max(read - counts.get("rejected", 0), 1)
    duplicates = counts.get("duplicates.exact", 0) + counts.get("duplicates.near", 0)
    turns_read = max(counts.get("turns_read", 0), 1)
    quality = pd.DataFrame({"duplicate_ratio": [duplicates / accepted],
                            "pii_ratio": [counts.get("pii.turns", 0) / turns_read]})
    # One row per source: a feed's expected junk (its own max_quarantine_ratio) does not hide another's breakage.
    rows = manifest.get("sources") or [{"source": "all", "read": read, "quarantined": counts.get("rejected", 0)}]
    by_source = pd.DataFrame({"over_allowance": [_over_allowance(row, config) for row in rows]})
    index = pd.to_numeric(turns["turn_index"], errors="coerce")  # text indexes fail their own rule, not this
    parity = index.where(index < 0, index % 2)  # a negative index is itself: only system@-1 is allowed
    turn_order = pd.DataFrame({"role_at_parity": turns["role"].astype(str) + "@" + parity.astype("Int64").astype(str)})
    return {"turns": turns, "turn_order": turn_order, "conversations": conversations,
            "splits": splits, "quality": quality, "sources": by_source}


def _over_allowance(row: dict, config: ValidateConfig) -> str | None:
    """None, or what the failure names: the source, its counts and the junk rate it is allowed."""
    allowed = config.max_quarantine_ratio if row.get("max_quarantine_ratio") is None else row["max_quarantine_ratio"]
    expected = row.get("expected_junk", 0)  # the source's normal junk (ingest.sources[].expected_junk): counted apart
    ratio = (row["quarantined"] - expected) / max(row["read"], 1)
    if ratio <= allowed:
        return None
    apart = f", beside {expected} expected junk" if expected else ""
    return (f"source {row['source']}: {row['quarantined'] - expected} of {row['read']} quarantined ({ratio:.1%}"
            f"{apart}), allowed {allowed:.1%}")


def check(turns: pd.DataFrame, manifest: dict, config: ValidateConfig, docs_dir: Path | None = None) -> list[dict]:
    """Run every rule in one GX context; with docs_dir, build its Data Docs site (HTML) there."""
    gx, _ = _gx()
    context = _context()
    if docs_dir is not None:
        context.add_data_docs_site(site_name="run", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(Path(docs_dir).resolve())},  # GX rejects relative paths
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    actions = [gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["run"])] if docs_dir else []
    source = context.data_sources.add_pandas("dataset")
    frames, results = tables(turns, manifest, config), []
    for name, expectations in contract(config).items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=name, validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
        ))
        outcome = checkpoint.run(batch_parameters={"dataframe": frames[name]})
        for validation in outcome.run_results.values():
            results += [_describe(r, name) for r in validation.results]
    if docs_dir is not None:
        _drop_unused_images(docs_dir)
    return results


def summarize(results: list[dict]) -> dict:
    failed = [r for r in results if not r["success"]]
    critical = [r for r in failed if r["severity"] == "critical"]
    warnings = [r for r in failed if r["severity"] != "critical"]

    def lines(rows):
        return "\n".join(f"- {r['rule']} [{r['table']}] {r['type']}({r['kwargs']}): {r['observed']}\n"
                         f"    protects: {r['protects']}" for r in rows)

    return {"evaluated": len(results), "critical": [r["rule"] for r in critical],
            "warnings": [r["rule"] for r in warnings], "critical_message": lines(critical),
            "warning_message": lines(warnings), "results": results}


def _describe(result, table: str) -> dict:
    config = result.expectation_config
    details = result.result or {}
    observed = details.get("observed_value")
    if observed is None and "unexpected_count" in details:
        observed = f"{details['unexpected_count']} unexpected, e.g. {_plain(details.get('partial_unexpected_list', [])[:5])}"
    if result.exception_info and result.exception_info.get("raised_exception"):
        observed = f"error: {result.exception_info.get('exception_message')}"
    observed = _plain(observed)  # numpy scalars print as np.int64(3); people read this message
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    return {"table": table, "rule": config.meta["rule"], "protects": config.meta["protects"],
            "severity": getattr(config.severity, "value", str(config.severity)), "type": config.type,
            "kwargs": kwargs, "success": bool(result.success), "observed": observed}


def _plain(value):
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _drop_unused_images(docs_dir: Path) -> None:
    """GX copies ~3.4 MB of tutorial GIFs into every site; keep only the images the pages use."""
    pages = " ".join(p.read_text(encoding="utf-8", errors="ignore") for p in docs_dir.rglob("*.html"))
    for image in (docs_dir / "static" / "images").glob("*"):
        if image.name not in pages:
            image.unlink()


def _gx():
    # Imported lazily: GX is slow to import and prints noise if imported after airflow.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # INFO is hundreds of registry lines
    import great_expectations as gx
    import great_expectations.expectations as gxe

    _context()  # suites can only be built once a context is active
    return gx, gxe


def _context():
    """In memory (nothing written outside the run's outputs), without GX's default temp-dir docs site and the
    per-metric progress bars that flood the task log."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    return gx.get_context(mode="ephemeral", project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False), analytics_enabled=False))
