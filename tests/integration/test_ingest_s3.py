"""Ingest + validate from S3 (moto's server over HTTP on 127.0.0.1), through the stage commands the DAG runs:
three formats, a window of daily partitions, quarantine naming S3 objects and lines, lineage in MLflow, and a
missing object stopping the run with nothing written."""

import json
import subprocess
import sys
from pathlib import Path

import boto3
import mlflow
import pandas as pd
from dialogue_files import openai_record, sharegpt_record, write_hf_dataset, write_jsonl, write_parquet

from pipeline.storage import outputs, s3


def _stage(config: Path, stage: str, run_date: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", stage, "--config", str(config), "--run-date", run_date,
                           "--run-id", f"s3-{run_date}", *extra], capture_output=True, text=True, timeout=300)


def test_window_of_s3_partitions_in_three_formats(s3_server, make_config, tmp_path):
    bucket = s3_server()
    local = tmp_path / "upload"
    for day, first in [("2026-11-20", 0), ("2026-11-21", 100), ("2026-11-22", 200)]:
        records = [openai_record(n, language="zh" if n % 4 == 0 else "en") for n in range(first, first + 100)]
        write_jsonl(local / "openai" / f"dt={day}" / "chats.jsonl", records, raw_lines=[b'{"messages": ['])
    write_parquet(local / "sharegpt" / "dt=2026-11-22" / "part-0.parquet", [sharegpt_record(n) for n in range(60)])
    write_hf_dataset(local / "hf" / "dt=2026-11-22" / "saved", [openai_record(n, turns=4) for n in range(500, 560)])
    s3.upload_dir(local, f"s3://{bucket}")

    config = make_config(
        ingest={"window_days": 2, "sources": [
            {"format": "openai", "uri": f"s3://{bucket}/openai", "partitioned": True},
            {"format": "sharegpt", "uri": f"s3://{bucket}/sharegpt", "partitioned": True, "language": "en"},
            {"format": "openai", "uri": f"s3://{bucket}/hf", "partitioned": True},
        ]},
        validate={"min_conversations": {"train": 100, "validation": 5, "test": 5}},
    )
    ingested = _stage(config, "ingest", "2026-11-22")
    assert ingested.returncode == 0, ingested.stderr
    dataset = Path(ingested.stdout.strip().splitlines()[-1])
    manifest = outputs.read_manifest(dataset)
    assert [(p["uri"], p["partition_date"]) for p in manifest["inputs"]] == [
        (f"s3://{bucket}/openai/dt=2026-11-22", "2026-11-22"), (f"s3://{bucket}/openai/dt=2026-11-21", "2026-11-21"),
        (f"s3://{bucket}/sharegpt/dt=2026-11-22", "2026-11-22"), (f"s3://{bucket}/hf/dt=2026-11-22", "2026-11-22")]
    assert manifest["counts"]["conversations"] == 200 + 60 + 60 and manifest["conversations_per_language"]["zh"] == 50
    quarantine = [json.loads(line) for line in (dataset / "quarantine.jsonl").read_text().splitlines()]
    assert [q["origin"] for q in quarantine] == [f"s3://{bucket}/openai/dt=2026-11-21/chats.jsonl:101",
                                                 f"s3://{bucket}/openai/dt=2026-11-22/chats.jsonl:101"]
    turns = pd.read_parquet(dataset / "turns.parquet")
    assert set(turns["partition_date"]) == {"2026-11-21", "2026-11-22"}
    assert f"s3://{bucket}/hf/dt=2026-11-22/saved" in set(turns["source"])

    rerun = _stage(config, "ingest", "2026-11-22")
    assert rerun.returncode == 0 and outputs.read_manifest(dataset) == manifest  # idempotent

    validated = _stage(config, "validate", "2026-11-22", "--dataset", str(dataset))
    assert validated.returncode == 0, validated.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {r.data.tags["pipeline.stage"]: r for r in mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.`pipeline.level` = 'stage'", output_format="list")}
    for stage in ("ingest", "validate"):
        assert [(i.dataset.name, i.dataset.digest) for i in runs[stage].inputs.dataset_inputs] == [
            ("conversations@2026-11-22", manifest["digest"][:16])]
    assert runs["ingest"].data.params["data.input_digest"] == manifest["input_digest"]


def test_missing_s3_object_or_bucket_stops_ingest_with_nothing_written(s3_server, make_config, tmp_path):
    bucket = s3_server()
    for uri, message in [(f"s3://{bucket}/exports/missing.jsonl", "no such S3 object or prefix"),
                         ("s3://no-such-bucket/chats", "cannot list S3 location")]:
        config = make_config(ingest={"sources": [{"format": "openai", "uri": uri}]})
        result = _stage(config, "ingest", "2026-11-23")
        assert result.returncode != 0
        assert f"ingest failed: {uri}: {message}" in result.stderr
    assert not (tmp_path / "data" / "conversations").exists() or not any((tmp_path / "data" / "conversations").iterdir())
    boto3.client("s3").put_object(Bucket=bucket, Key="exports/dt=2026-11-23/_SUCCESS", Body=b"")
    config = make_config(ingest={"sources": [{"format": "openai", "uri": f"s3://{bucket}/exports", "partitioned": True}]})
    result = _stage(config, "ingest", "2026-11-23")
    assert f"s3://{bucket}/exports/dt=2026-11-23: empty partition" in result.stderr
