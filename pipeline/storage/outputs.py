"""Where stage outputs live, what their files are called, how they are written: partition- and run-scoped paths,
the file names the stages hand each other, atomic writes, digests.

Every output directory is produced under a temporary sibling name and renamed into place only when complete,
so a killed task never leaves a half-written partition and a rerun replaces the previous output whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.config import ProjectConfig, RunContext
from pipeline.process import failpoints

MANIFEST = "manifest.json"  # written last inside an output dir: its presence means the output is complete
# The files one stage writes and a later stage (or a person) reads, in runs/<dag>/<run_id>/<stage>/:
TRAIN_CONFIG = "train_config.json"  # train/model/: the resolved train config, beside the weights (and registered)
EVALUATION = "evaluation.json"  # evaluate/: scores, data digest, the champion version scored, cache report
# evaluate/: per-example replies of each evaluation set
SAMPLES = {"held-out": "samples.parquet", "anchor": "samples_anchor.parquet", "memory": "samples_memory.parquet"}
PROMOTION = "promotion.json"  # promote/: the version registered and the gate's decision
REPORT = "evaluation_report.html"  # promote/: the HTML evaluation report (also an artifact of the DAG run)


def partition_dir(project: ProjectConfig, dataset: str, run_date: str) -> Path:
    """The date partition of a dataset, e.g. data/conversations/dt=2026-11-22."""
    return Path(project.data_root) / dataset / f"dt={run_date}"


def run_dir(project: ProjectConfig, ctx: RunContext, stage: str) -> Path:
    """A stage's output directory for one DAG run (run ids contain ':' and '+', which we keep out of paths)."""
    safe_run_id = re.sub(r"[^A-Za-z0-9._=-]+", "_", ctx.run_id)
    return Path(project.runs_root) / ctx.dag_id / safe_run_id / stage


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch directory that replaces `final` only if the block completes without error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_dead_writers(final)
    scratch = final.with_name(f".{final.name}.tmp-{_writer()}-{uuid.uuid4().hex[:8]}")
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    failpoints.hit(f"publish:{final.name}")  # everything written, nothing published yet (tests kill it here)
    # Move the old output aside first: a directory rename cannot overwrite a non-empty directory.
    trash = final.with_name(f".{final.name}.old-{_writer()}-{uuid.uuid4().hex[:8]}")
    if final.exists():
        final.rename(trash)
    scratch.rename(final)
    shutil.rmtree(trash, ignore_errors=True)


def sweep_dead_writers(final: Path) -> None:
    """Clean up after writers of `final` that were killed (kill -9, OOM): their scratch directories are deleted,
    and an old output they had moved aside but not yet replaced is put back. Only writers of this host whose
    process is gone: a live writer (a concurrent run) or another pod's, on a shared volume, is left alone."""
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(tmp|old)-{re.escape(_host())}\.(\d+)-[0-9a-f]{{8}}$")
    for sibling in sorted(final.parent.iterdir()):
        found = pattern.match(sibling.name)
        if not found or _alive(int(found.group(2))):
            continue
        if found.group(1) == "old" and not final.exists():
            sibling.rename(final)  # killed between moving the old output aside and publishing the new one
        else:
            shutil.rmtree(sibling, ignore_errors=True)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname())[:40]


def _writer() -> str:
    return f"{_host()}.{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file + rename), with sorted keys so reruns are byte-identical."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read a stage output's manifest; a missing manifest means the upstream stage did not complete."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; the stage that writes {directory} did not complete")
    return json.loads(path.read_text(encoding="utf-8"))


def file_digest(paths: list[Path]) -> str:
    """sha256 over the bytes of the given files, in order: identifies exactly what a model was trained on."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def train_config(model_dir: str | Path) -> dict:
    """The resolved train config a fine-tuned model was trained with (flat `train.<key>` -> value)."""
    return json.loads((Path(model_dir) / TRAIN_CONFIG).read_text())


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
