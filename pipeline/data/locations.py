"""Where a source's files are read from: a local path as it is, or an S3 object or prefix downloaded into a
temporary directory for the duration of the read. A location that cannot be read at all raises SourceError.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.storage import s3


class SourceError(RuntimeError):
    """A source, partition or file cannot be read at all; the message names it."""


@contextlib.contextmanager
def local_copy(uri: str, required: bool) -> Iterator[Path | None]:
    """A local path for `uri`: itself, or an S3 prefix/object downloaded into a temporary directory."""
    if not uri.startswith("s3://"):
        path = Path(uri)
        if not path.exists():
            if required:
                raise SourceError(f"{uri}: no such file or directory")
            yield None
            return
        yield path
        return
    try:
        keys = s3.keys(uri)
        single = not keys and s3.exists(uri)
    except Exception as exc:  # NoSuchBucket, access denied, endpoint down: name the URI, keep the cause
        raise SourceError(f"{uri}: cannot list S3 location: {exc}") from exc
    if not keys and not single:
        if required:
            raise SourceError(f"{uri}: no such S3 object or prefix (missing partition or object)")
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="ingest-") as scratch:
        if single:  # the object's name is its key's last part, checked like every key that becomes a path
            target = s3.local_path(Path(scratch), s3.split(uri)[1].rsplit("/", 1)[-1], uri)
            s3.download(uri, target)
            yield target
        else:
            s3.download_dir(uri, Path(scratch))
            yield Path(scratch)
