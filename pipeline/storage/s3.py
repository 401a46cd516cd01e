"""Directories on S3 (or any S3-compatible server): upload and download whole directories with boto3.

The endpoint comes from the standard AWS settings (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, credentials, region),
so the same code talks to AWS, MinIO or the moto server the tests start on 127.0.0.1.

S3 failing: every client retries what is worth retrying (HTTP 500/502/503/504, SlowDown and other throttling,
dropped, refused or timed-out connections) with botocore's `standard` retry mode, exponential backoff with jitter
(from 1 s for throttling, from 50 ms otherwise), RETRIES.max_attempts attempts per request. The standard AWS
variables AWS_RETRY_MODE and AWS_MAX_ATTEMPTS win over RETRIES: they also set the retries of boto3 clients made
elsewhere (MLflow's, in the tracking server that proxies artifacts to S3: see retry_env()). When the retries run
out, the error is an ObjectStoreError naming the operation and the s3://bucket/key.

S3 keys as local paths: a key is data written by whoever can write the bucket, so it becomes a local path only
through local_path(), which refuses (UnsafeKey, naming the key and the rule) an absolute path, a '..', '.' or empty
component, and a path that resolves outside the destination; download_dir checks every key before writing anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from botocore.exceptions import ClientError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How boto3 clients made here ride out a failing S3 (botocore Config `retries` and timeouts)."""

    mode: str = field(default="standard", metadata={
        "help": "botocore retry mode: standard (backoff with jitter) or adaptive (also slows this client down "
                "after throttling; one client per call here, so it gains little). Env AWS_RETRY_MODE wins."})
    max_attempts: int = field(default=6, metadata={
        "help": "Attempts per request, the first included. 6 rides out ~30 s of SlowDown (1+2+4+8+16 s of backoff "
                "at most) and a few seconds of 5xx or dropped connections. Env AWS_MAX_ATTEMPTS wins."})
    connect_timeout_s: float = field(default=10.0, metadata={"help": "A connect slower than this is retried."})
    read_timeout_s: float = field(default=60.0, metadata={"help": "A socket read slower than this is retried."})


RETRIES = RetryPolicy()


class ObjectStoreError(ClientError):
    """An S3 operation failed (after its retries); the message names the operation and s3://bucket/key.

    It stays a botocore ClientError carrying S3's answer (e.g. code 404), so callers that act on the code
    (checkpoints: a file the seal lists is gone) keep working; a failure without an answer from S3 (a dropped or
    timed-out connection) carries the name of its exception as the code."""

    def __init__(self, operation: str, uri: str, cause: BaseException):
        answer = _s3_answer(cause)
        super().__init__(answer.response if answer is not None else
                         {"Error": {"Code": type(cause).__name__, "Message": str(cause)}}, operation)
        self.uri, self.cause = uri, cause

    def __str__(self) -> str:
        last = getattr(self.cause, "last_exception", None)  # s3transfer gave up re-reading a download
        return f"S3 {self.operation_name} {self.uri} failed: {self.cause}" + (f" (last error: {last})" if last else "")

    def __reduce__(self):
        return type(self), (self.operation_name, self.uri, self.cause)


class UnsafeKey(ValueError):
    """An S3 key that cannot become a local path inside the destination; the message names the key and the rule."""


def split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an s3://bucket/prefix URI")
    return parsed.netloc, parsed.path.strip("/")


def client():
    import boto3
    from botocore.config import Config

    retries = {}  # botocore lets a Config beat the environment: set only what AWS_* leaves unset, so env wins
    if not os.environ.get("AWS_RETRY_MODE"):
        retries["mode"] = RETRIES.mode
    if not os.environ.get("AWS_MAX_ATTEMPTS"):
        retries["total_max_attempts"] = RETRIES.max_attempts
    return boto3.client("s3", config=Config(retries=retries, connect_timeout=RETRIES.connect_timeout_s,
                                            read_timeout=RETRIES.read_timeout_s))


def retry_env() -> dict[str, str]:
    """RETRIES as the standard AWS variables, for processes whose boto3 clients are made by a library (the MLflow
    server proxying artifacts to S3): botocore reads them when the library's Config sets no `retries`."""
    return {"AWS_RETRY_MODE": RETRIES.mode, "AWS_MAX_ATTEMPTS": str(RETRIES.max_attempts)}


def local_path(destination: Path, relative: str, source: str) -> Path:
    """destination/relative, where `relative` comes from the S3 key `source` (named in the error)."""
    rule = _unsafe_rule(relative)
    if rule is None:
        root = Path(destination).resolve()
        if not (root / relative).resolve().is_relative_to(root):
            rule = f"{relative!r} resolves to {(root / relative).resolve()}, outside {root} (through a symlink)"
    if rule is not None:
        raise UnsafeKey(f"{source}: refused as a local file name under {destination}: {rule}")
    return Path(destination) / relative


def upload_dir(local: Path, uri: str, last: str | None = None) -> None:
    """Upload every file under `local` to `uri`; the file named `last` goes last (a completion marker)."""
    bucket, prefix = split(uri)
    files = sorted((p for p in Path(local).rglob("*") if p.is_file()), key=lambda p: (p.name == last, str(p)))
    s3 = client()
    for path in files:
        relative = path.relative_to(local).as_posix()
        key = f"{prefix}/{relative}" if prefix else relative
        with _naming("upload", bucket, key):
            s3.upload_file(str(path), bucket, key)


def download_dir(uri: str, local: Path) -> None:
    """Download every object under `uri` into `local`, keeping the key's path below the prefix.

    Every key is checked before the first download: one bad key refuses the whole directory, nothing written."""
    bucket, prefix = split(uri)
    targets = {}
    for key in keys(uri):
        relative = key[len(prefix) + 1:] if prefix else key
        if key.endswith("/"):  # a "folder" marker that consoles and some tools create: it holds no file
            log.debug("skipping folder marker s3://%s/%s", bucket, key)
            continue
        targets[key] = local_path(local, relative, f"s3://{bucket}/{key}")
    s3 = client()
    for key, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        with _naming("download", bucket, key):
            s3.download_file(bucket, key, str(target))


def keys(uri: str) -> list[str]:
    return [item["Key"] for item in objects(uri)]


def objects(uri: str) -> list[dict]:
    """Every object under the prefix `uri`, as S3 lists it (Key, Size, ETag, LastModified, ...)."""
    bucket, prefix = split(uri)
    with _naming("list", bucket, f"{prefix}/" if prefix else ""):
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
        return [item for page in pages for item in page.get("Contents", [])]


def delete_prefix(uri: str) -> None:
    bucket, _ = split(uri)
    found = keys(uri)
    s3 = client()
    for start in range(0, len(found), 1000):
        batch = found[start:start + 1000]
        with _naming("delete", bucket, batch[0]):
            answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch]})
        if answer.get("Errors"):  # a 200 answer can still list keys it did not delete
            error = answer["Errors"][0]
            raise ObjectStoreError("delete", f"s3://{bucket}/{error.get('Key')}", ClientError(
                {"Error": {"Code": error.get("Code"), "Message": f"{error.get('Message')} "
                           f"({len(answer['Errors'])} of {len(batch)} keys not deleted)"}}, "DeleteObjects"))


def exists(uri: str) -> bool:
    """True if `uri` names one object (not a prefix)."""
    bucket, key = split(uri)
    try:
        with _naming("head", bucket, key):
            client().head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def upload(path: Path, uri: str) -> None:
    """One file to the object `uri`."""
    bucket, key = split(uri)
    with _naming("upload", bucket, key):
        client().upload_file(str(path), bucket, key)


def download(uri: str, target: Path) -> None:
    bucket, key = split(uri)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with _naming("download", bucket, key):
        client().download_file(bucket, key, str(target))


def _unsafe_rule(relative: str) -> str | None:
    parts = relative.split("/")
    if "\x00" in relative:
        return "a NUL byte"
    if relative.startswith("/"):
        return f"{relative!r} is an absolute path (an empty segment after the prefix: '//')"
    if ".." in parts:
        return f"{relative!r} has a '..' component, which climbs out of the destination"
    if "." in parts:
        return f"{relative!r} has a '.' component"
    if "" in parts:
        return f"{relative!r} has an empty component ('//')"
    return None


@contextlib.contextmanager
def _naming(operation: str, bucket: str, key: str):
    """Re-raise what boto3 raises once its retries are spent as an ObjectStoreError naming the object."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError

    try:
        yield
    except ObjectStoreError:
        raise
    except (ClientError, BotoCoreError, Boto3Error) as exc:  # not OSError: a full local disk is not an S3 fault
        raise ObjectStoreError(operation, f"s3://{bucket}/{key}", exc) from exc


def _s3_answer(error: BaseException | None) -> ClientError | None:
    """The ClientError (S3's answer) behind `error`: boto3's upload wraps it in S3UploadFailedError."""
    for _ in range(10):
        if error is None or isinstance(error, ClientError):
            return error
        error = error.__cause__ or error.__context__
    return None
