"""Train and evaluate read exactly the bytes validate approved: a partition re-ingested after validation (a backfill,
a rerun, late data) is refused, naming both digests, before a model is loaded."""

from pathlib import Path

import pytest
from paths import CORPUS

from pipeline import evaluate, ingest, train, validate
from pipeline.config import ProjectConfig, RunContext
from pipeline.data import partitions
from pipeline.storage import outputs

LENIENT = validate.ValidateConfig(min_conversations={"train": 1}, max_duplicate_ratio=0.5, max_quarantine_ratio=0.25)
DATE = "2026-11-22"


def ingest_config(test_fraction: float) -> ingest.IngestConfig:
    return ingest.IngestConfig(sources=[{"format": "chatterbot", "uri": str(CORPUS)}], validation_fraction=0.3,
                               test_fraction=test_fraction)


@pytest.fixture
def project(tmp_path) -> ProjectConfig:
    return ProjectConfig(data_root=str(tmp_path / "data"), runs_root=str(tmp_path / "runs"),
                         tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "art"),
                         base_model=str(tmp_path / "no-model-is-loaded"))


def plain(uri) -> str:
    return str(partitions.unpin(str(uri))[0])


def test_validate_pins_the_digest_and_read_returns_those_bytes(project):
    dataset = plain(ingest.run(ingest_config(0.3), project, RunContext(DATE, "night")))
    approved = validate.run(LENIENT, project, RunContext(DATE, "night"), dataset)
    path, digest = partitions.unpin(approved)
    assert path == Path(dataset) and digest == outputs.file_digest([path / "turns.parquet"])
    partition = partitions.read(approved)
    assert partition.digest == digest and partition.uri == approved and len(partition.turns) > 0


def test_a_reingest_after_validation_stops_train_and_evaluate_naming_both_digests(project):
    dataset = plain(ingest.run(ingest_config(0.3), project, RunContext(DATE, "night")))
    approved = validate.run(LENIENT, project, RunContext(DATE, "night"), dataset)
    # A backfill of the same date re-ingests with other settings between this run's validate and its train.
    ingest.run(ingest_config(0.4), project, RunContext(DATE, "backfill"))
    now = outputs.read_manifest(dataset)["digest"]
    approved_digest = partitions.unpin(approved)[1]
    assert now != approved_digest
    both = rf"sha256 {now}, but the upstream stage checked sha256 {approved_digest}"
    with pytest.raises(partitions.PartitionChanged, match=both):
        train.run(train.TrainConfig(), project, RunContext(DATE, "night"), approved)
    with pytest.raises(partitions.PartitionChanged, match=both):
        evaluate.run(evaluate.EvaluateConfig(), project, RunContext(DATE, "night"), approved, "no-model")
    assert not Path(project.runs_root, "manual", "night", "train").exists()  # nothing trained, nothing written


def test_bytes_that_do_not_match_their_own_manifest_are_refused(project):
    dataset = plain(ingest.run(ingest_config(0.3), project, RunContext(DATE, "night")))
    turns = Path(dataset) / "turns.parquet"
    turns.write_bytes(turns.read_bytes()[:-10])  # a writer caught mid-way (not through atomic_dir)
    with pytest.raises(partitions.PartitionChanged, match=r"manifest.json says [0-9a-f]{64}; the partition changed"):
        partitions.read(dataset)
