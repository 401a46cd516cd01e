"""The GX contract: a clean partition passes; each broken rule is caught by name with what it protects; critical
rules stop the run, soft ones warn; Data Docs and the result land in the run's outputs and in MLflow."""

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from paths import CORPUS

from pipeline import ingest, validate
from pipeline.config import ProjectConfig, RunContext
from pipeline.storage import outputs

# The test corpus is tiny and deliberately dirty: 2 of its 10 entries are rejected, 1 is a duplicate.
LENIENT = validate.ValidateConfig(min_conversations={"train": 1}, max_duplicate_ratio=0.5, max_quarantine_ratio=0.25)


@pytest.fixture(scope="module")
def partition(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("validate")
    project = ProjectConfig(data_root=str(tmp / "data"), runs_root=str(tmp / "runs"),
                            tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", artifact_root=str(tmp / "art"))
    config = ingest.IngestConfig(sources=[{"format": "chatterbot", "uri": str(CORPUS)}], validation_fraction=0.3,
                                 test_fraction=0.3)
    return project, ingest.run(config, project, RunContext("2026-11-22", "ingest"))


@pytest.fixture
def turns(partition):
    return pd.read_parquet(partition[1] / "turns.parquet")


@pytest.fixture
def manifest(partition):
    return outputs.read_manifest(partition[1])


def broken(frame, manifest, config=LENIENT):
    report = validate.summarize(validate.check(frame, manifest, config))
    return set(report["critical"]), set(report["warnings"]), report


def test_clean_partition_passes(turns, manifest):
    assert broken(turns, manifest)[:2] == (set(), set())


@pytest.mark.parametrize("breakage, rule", [
    (lambda f: f.assign(role=f["role"].replace({"assistant": "bot"})), "roles"),
    (lambda f: f.assign(text=f["text"].where(f.index != 0, None)), "not_null.text"),
    (lambda f: f.assign(text=f["text"].where(f.index != 0, "")), "text_length"),
    (lambda f: pd.concat([f, f.iloc[:1]]), "unique_turn"),
    (lambda f: f.assign(turn_index=f["turn_index"] + 1), "alternation"),
    (lambda f: f.drop(columns=["language"]), "schema"),
    (lambda f: f.assign(language="fr"), "languages"),
    (lambda f: f.assign(turn_index=f["turn_index"].astype(str)), "turn_index_type"),
    (lambda f: f[f["split"] != "test"], "all_splits_present"),
    (lambda f: f[f["role"] == "user"], "has_reply"),
])
def test_each_broken_rule_is_caught_by_name(turns, manifest, breakage, rule):
    critical, _, report = broken(breakage(turns.copy()), manifest)
    assert rule in critical
    assert f"- {rule} [" in report["critical_message"] and "protects: " in report["critical_message"]


def test_a_kept_system_message_passes_as_turn_minus_one_only(turns, manifest):
    first = turns[turns["conversation_id"] == turns["conversation_id"].iloc[0]]
    system = first.iloc[:1].assign(turn_index=-1, role="system", text="You are Ada.")
    assert broken(pd.concat([turns, system]), manifest)[:2] == (set(), set())
    assert "alternation" in broken(pd.concat([turns, system.assign(turn_index=99)]), manifest)[0]  # not mid-way
    assert "alternation" in broken(pd.concat([turns, system.assign(role="user")]), manifest)[0]
    assert "roles" in broken(pd.concat([turns, system]), manifest, validate.ValidateConfig(
        roles=["user", "assistant"], min_conversations={"train": 1}, max_duplicate_ratio=0.5,
        max_quarantine_ratio=0.25))[0]


def test_a_replay_split_passes_and_an_unknown_split_name_does_not(turns, manifest):
    """ingest.sources[].role: replay writes split 'replay' (a static set beside a feed); other names are errors."""
    first = turns["conversation_id"] == turns.loc[turns["split"] == "train", "conversation_id"].iloc[0]
    assert broken(turns.assign(split=turns["split"].mask(first, "replay")), manifest)[:2] == (set(), set())
    assert "split_values" in broken(turns.assign(split=turns["split"].mask(first, "static")), manifest)[0]


def test_conversation_in_two_splits_is_leakage(turns, manifest):
    leaked = turns.copy()
    rows = leaked.index[leaked["conversation_id"] == leaked["conversation_id"].iloc[0]]
    leaked.loc[rows[0], "split"], leaked.loc[rows[1], "split"] = "train", "test"
    assert "one_split_per_conversation" in broken(leaked, manifest)[0]


def test_too_few_conversations_in_a_split(turns, manifest):
    critical, _, report = broken(turns, manifest, validate.ValidateConfig(
        min_conversations={"train": 1000}, max_duplicate_ratio=0.5, max_quarantine_ratio=0.25))
    assert critical == {"min_conversations"} and "min_conversations [splits]" in report["critical_message"]


def test_ratio_rules_soft_by_default_and_configurable(turns, manifest):
    noisy = {**manifest, "counts": {**manifest["counts"], "read": 100, "rejected": 30, "duplicates.exact": 60,
                                    "pii.turns": 5, "turns_read": 100},
             "sources": [{"source": "1: openai s3://logs", "read": 100, "quarantined": 30, "max_quarantine_ratio": None}]}
    critical, warnings, _ = broken(turns, noisy)
    assert critical == {"quarantine_ratio"} and warnings == {"duplicate_ratio", "pii_ratio"}
    strict = validate.ValidateConfig(min_conversations={"train": 1}, severity={"pii_ratio": "critical",
                                                                               "quarantine_ratio": "warning"})
    critical, warnings, _ = broken(turns, noisy, strict)
    assert critical == {"pii_ratio"} and warnings == {"duplicate_ratio", "quarantine_ratio"}


def test_a_sources_expected_junk_is_counted_apart_from_its_allowance(turns, manifest):
    """The feed's worst day: 871 of 1,023 sessions unanswered (expected junk) and 3 malformed: within a 5% allowance
    for the malformed; 60 malformed are not, and the failure names both counts."""
    def day(malformed: int) -> dict:
        return {**manifest, "sources": [{"source": "1: openai s3://chat-logs/openai", "read": 1023, "quarantined":
                                         871 + malformed, "expected_junk": 871, "max_quarantine_ratio": 0.05}]}
    assert "quarantine_ratio" not in broken(turns, day(3))[0]
    critical, _, report = broken(turns, day(60))
    assert critical == {"quarantine_ratio"}
    assert "60 of 1023 quarantined (5.9%, beside 871 expected junk), allowed 5.0%" in report["critical_message"]


def test_stage_writes_result_and_data_docs_and_fails_on_critical(partition, tmp_path):
    project, dataset = partition
    ctx = RunContext("2026-11-22", "validate-ok")
    # The URI handed on is pinned to the digest of the bytes validated (pipeline/data/partitions.py).
    digest = outputs.file_digest([Path(dataset) / "turns.parquet"])
    assert validate.run(LENIENT, project, ctx, str(dataset)) == f"{dataset}#sha256={digest}"
    output = outputs.run_dir(project, ctx, "validate")
    assert (output / "data_docs" / "index.html").is_file()
    assert list((output / "data_docs" / "validations").rglob("*.html"))
    assert not list((output / "data_docs" / "static" / "images").glob("*.gif"))  # 3.4 MB of GX tutorial GIFs
    run = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`pipeline.stage` = 'validate'",
                             output_format="list")[0]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"validation.json", "data_docs"} <= artifacts
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["conversations@2026-11-22"]

    with pytest.raises(validate.DataValidationError, match=r"1 critical rule\(s\) broken:\n- min_conversations"):
        validate.run(validate.ValidateConfig(min_conversations={"train": 1000}, max_duplicate_ratio=0.5,
                                             max_quarantine_ratio=0.25), project,
                     RunContext("2026-11-22", "validate-bad"), str(dataset))


def test_data_docs_under_a_relative_runs_root(turns, manifest, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs/embedded.yaml uses runs_root: runs
    validate.check(turns, manifest, LENIENT, docs_dir=Path("runs") / "data_docs")
    assert (tmp_path / "runs" / "data_docs" / "index.html").is_file()


def test_the_junk_rate_is_judged_per_source_with_its_own_allowance(turns, manifest):
    """A chat log whose sessions are 45% single-speaker (allowed 50%) beside a corpus that suddenly quarantines 12%
    (allowed the default 5%): the corpus fails, named with its counts; the chat log's expected junk does not hide it,
    nor does it fail the night itself."""
    feed = {"source": "1: openai s3://chat-logs/openai", "read": 200, "quarantined": 90, "max_quarantine_ratio": 0.5}
    corpus = {"source": "2: chatterbot package", "read": 100, "quarantined": 12, "max_quarantine_ratio": None}
    strict = validate.ValidateConfig(min_conversations={"train": 1}, max_duplicate_ratio=0.5)
    critical, _, report = broken(turns, {**manifest, "sources": [feed, corpus]}, strict)
    assert critical == {"quarantine_ratio"}
    assert "source 2: chatterbot package: 12 of 100 quarantined (12.0%), allowed 5.0%" in report["critical_message"]
    assert "chat-logs" not in report["critical_message"]
    assert broken(turns, {**manifest, "sources": [feed, {**corpus, "quarantined": 3}]}, strict)[0] == set()
    assert broken(turns, {**manifest, "sources": [{**feed, "quarantined": 120}]}, strict)[0] == {"quarantine_ratio"}
