"""Directories on S3 (or any S3-compatible server): upload and download whole directories with boto3.

The endpoint comes from the standard AWS settings (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, credentials, region),
so the same code talks to AWS, MinIO or the moto server the tests start on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse


def split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an s3://bucket/prefix URI")
    return parsed.netloc, parsed.path.strip("/")


def client():
    import boto3

    return boto3.client("s3")


def upload_dir(local: Path, uri: str, last: str | None = None) -> None:
    """Upload every file under `local` to `uri`; the file named `last` goes last (a completion marker)."""
    bucket, prefix = split(uri)
    files = sorted((p for p in Path(local).rglob("*") if p.is_file()), key=lambda p: (p.name == last, str(p)))
    s3 = client()
    for path in files:
        relative = path.relative_to(local).as_posix()
        s3.upload_file(str(path), bucket, f"{prefix}/{relative}" if prefix else relative)


def download_dir(uri: str, local: Path) -> None:
    bucket, prefix = split(uri)
    s3 = client()
    for key in keys(uri):
        target = Path(local) / (key[len(prefix) + 1:] if prefix else key)
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))


def keys(uri: str) -> list[str]:
    bucket, prefix = split(uri)
    pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def delete_prefix(uri: str) -> None:
    bucket, _ = split(uri)
    found = keys(uri)
    s3 = client()
    for start in range(0, len(found), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in found[start:start + 1000]]})


def exists(uri: str) -> bool:
    """True if `uri` names one object (not a prefix)."""
    from botocore.exceptions import ClientError

    bucket, key = split(uri)
    try:
        client().head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def download(uri: str, target: Path) -> None:
    bucket, key = split(uri)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    client().download_file(bucket, key, str(target))
