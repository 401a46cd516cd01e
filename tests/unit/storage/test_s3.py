"""Object store: S3 keys become local paths only inside the destination, and a failed S3 call names its object.

Keys are planted in moto's S3 server over real HTTP (the `s3_server` fixture): whoever can write a bucket chooses
its keys, so a key is checked like any other input before it becomes a path.
"""

import tempfile
from pathlib import Path

import boto3
import pytest

from pipeline.data import sources
from pipeline.data.sources import SourceConfig
from pipeline.process.ports import free_port
from pipeline.storage import s3
from pipeline.storage.s3 import ObjectStoreError, UnsafeKey


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _plant(bucket: str, keys: list[str]) -> None:
    client = boto3.client("s3")
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=f"body of {key}".encode())


@pytest.mark.parametrize("bad, rule", [
    ("prefix/../../evil", "has a '..' component"),
    ("prefix/sub/../../../evil", "has a '..' component"),
    ("prefix/./dot", "has a '.' component"),
    ("prefix/a//b", "has an empty component"),
    ("prefix/{tmp}/abs", "is an absolute path"),  # "prefix//tmp/...": the part after the prefix is absolute
])
def test_download_dir_refuses_a_key_outside_the_destination_before_writing_anything(s3_server, tmp_path, bad, rule):
    bucket = s3_server()
    bad = bad.format(tmp=tmp_path / "abs-target")
    _plant(bucket, ["prefix/ok.jsonl", "prefix/sub/ok.jsonl", bad])
    destination = tmp_path / "one" / "two"
    destination.mkdir(parents=True)
    with pytest.raises(UnsafeKey) as refused:
        s3.download_dir(f"s3://{bucket}/prefix", destination)
    assert f"s3://{bucket}/{bad}: refused as a local file name under {destination}: " in str(refused.value)
    assert rule in str(refused.value)
    assert _files(tmp_path) == set()  # neither the bad key anywhere nor the good keys before it


def test_download_dir_refuses_a_key_that_resolves_through_a_symlink_outside(s3_server, tmp_path):
    bucket = s3_server()
    _plant(bucket, ["prefix/link/planted"])
    destination, outside = tmp_path / "destination", tmp_path / "outside"
    destination.mkdir()
    outside.mkdir()
    (destination / "link").symlink_to(outside)  # e.g. left by an earlier step in a reused scratch directory
    with pytest.raises(UnsafeKey, match=rf"s3://{bucket}/prefix/link/planted: .* resolves to {outside}/planted"):
        s3.download_dir(f"s3://{bucket}/prefix", destination)
    assert _files(outside) == set()


def test_download_dir_keeps_nested_keys_and_skips_folder_markers(s3_server, tmp_path):
    bucket = s3_server()
    _plant(bucket, ["prefix/a.jsonl", "prefix/dt=2026-11-22/b.parquet", "prefix/empty-folder/", "prefix2/not-mine"])
    s3.download_dir(f"s3://{bucket}/prefix", tmp_path)
    assert _files(tmp_path) == {"a.jsonl", "dt=2026-11-22/b.parquet"}
    assert (tmp_path / "dt=2026-11-22" / "b.parquet").read_text() == "body of prefix/dt=2026-11-22/b.parquet"


def test_ingest_source_refuses_a_partition_holding_a_key_that_climbs_out(s3_server, tmp_path, monkeypatch):
    bucket = s3_server()
    _plant(bucket, ["openai/dt=2026-11-22/chats.jsonl", "openai/dt=2026-11-22/../../evil.jsonl"])
    scratch_root = tmp_path / "a" / "b" / "c"  # the source's scratch directory is made here: the climb stays in tmp_path
    scratch_root.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    source = SourceConfig(format="openai", uri=f"s3://{bucket}/openai", partitioned=True)
    with pytest.raises(UnsafeKey, match=rf"s3://{bucket}/openai/dt=2026-11-22/\.\./\.\./evil\.jsonl: .*'\.\.'"):
        list(sources.read(source, "2026-11-22", 1, []))
    assert _files(tmp_path) == set()


def test_ingest_source_refuses_a_single_object_named_dot_dot(s3_server, tmp_path):
    bucket = s3_server()
    _plant(bucket, ["exports/.."])  # a single object whose last key part would name the scratch dir's parent
    source = SourceConfig(format="openai", uri=f"s3://{bucket}/exports/..")
    with pytest.raises(UnsafeKey, match=rf"s3://{bucket}/exports/\.\.: .* has a '\.\.' component"):
        list(sources.read(source, "2026-11-22", 1, []))


def test_a_missing_object_is_named_and_still_reads_as_s3s_404(s3_server, tmp_path):
    bucket = s3_server()
    with pytest.raises(ObjectStoreError) as failed:
        s3.download(f"s3://{bucket}/exports/missing.jsonl", tmp_path / "missing.jsonl")
    assert str(failed.value).startswith(f"S3 download s3://{bucket}/exports/missing.jsonl failed: ")
    # A ClientError with S3's code: checkpoints.restore tells a deleted file (404) from a failing store by it.
    assert failed.value.response["Error"]["Code"] == "404"
    assert not (tmp_path / "missing.jsonl").exists()
    assert s3.exists(f"s3://{bucket}/exports/missing.jsonl") is False


def test_an_unreachable_endpoint_fails_after_retries_naming_the_operation_and_prefix(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(ObjectStoreError, match=r"^S3 list s3://chat-logs/openai/ failed: Could not connect") as failed:
        s3.keys("s3://chat-logs/openai")
    assert failed.value.response["Error"]["Code"] == "EndpointConnectionError"
