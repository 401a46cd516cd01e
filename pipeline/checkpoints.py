"""Training checkpoints: where a retried or killed training task picks up again.

Checkpoints live in the run's train directory (runs/<dag>/<run_id>/train/checkpoints), so an Airflow retry of the
same DAG run finds them and a different run never does. With a mirror (s3://...), each checkpoint is also uploaded
there, so a retry on another machine or a fresh pod resumes too. The Trainer writes trainer_state.json last, so a checkpoint
without it was cut off mid-save and is skipped. A fingerprint of the config and data guards against resuming a run
whose settings changed between attempts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path

from transformers import TrainerCallback

from pipeline import distributed, objectstore, storage

log = logging.getLogger(__name__)
FINGERPRINT = "fingerprint.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def latest_complete(directory: Path) -> Path | None:
    """The highest-step checkpoint whose save finished (trainer_state.json is written last)."""
    found = []
    for path in Path(directory).glob("checkpoint-*"):
        match = _CHECKPOINT.match(path.name)
        if match and (path / "trainer_state.json").is_file():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def claim(directory: Path, fingerprint: dict) -> None:
    """Keep checkpoints only if they were made with the same settings and data; otherwise start over (rank 0)."""
    directory = Path(directory)
    marker = directory / FINGERPRINT
    if marker.is_file() and json.loads(marker.read_text()) != json.loads(json.dumps(fingerprint, default=str)):
        log.warning("checkpoints in %s were made with other settings or data; starting over", directory)
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    storage.write_json(marker, fingerprint)


def prepare(directory: Path, mirror: str | None, fingerprint: dict) -> None:
    """Rank 0: bring back mirrored checkpoints if this machine has none, then drop any made with other settings."""
    if mirror:
        restore(directory, mirror)
    had_some = latest_complete(directory) is not None
    claim(directory, fingerprint)
    if mirror:
        if had_some and latest_complete(directory) is None:
            forget(mirror)  # claim() discarded them: other settings or data
        bucket, prefix = objectstore.split(mirror)
        objectstore.client().upload_file(str(Path(directory) / FINGERPRINT), bucket, f"{prefix}/{FINGERPRINT}")


def mirror_uri(base: str | None, train_dir: Path) -> str | None:
    """<base>/<dag_id>/<run_id>/train/checkpoints: scoped to the DAG run, like the local directory."""
    if base is None:
        return None
    objectstore.split(base)  # only s3://bucket/prefix
    return "/".join([base.rstrip("/"), *Path(train_dir).as_posix().split("/")[-3:], "checkpoints"])


def forget(mirror: str) -> None:
    objectstore.delete_prefix(mirror)


def restore(directory: Path, mirror: str) -> None:
    """Fetch the fingerprint and newest complete checkpoint from the mirror when there is none locally."""
    if latest_complete(directory) is not None:
        return
    names = {key[len(objectstore.split(mirror)[1]) + 1:] for key in objectstore.keys(mirror)}
    steps = [int(m.group(1)) for name in names if (m := re.match(r"^checkpoint-(\d+)/trainer_state\.json$", name))]
    if not steps or FINGERPRINT not in names:
        return
    newest = f"checkpoint-{max(steps)}"
    log.info("restoring %s from %s", newest, mirror)
    objectstore.download_dir(f"{mirror}/{newest}", Path(directory) / newest)
    Path(directory).mkdir(parents=True, exist_ok=True)
    bucket, prefix = objectstore.split(mirror)
    objectstore.client().download_file(bucket, f"{prefix}/{FINGERPRINT}", str(Path(directory) / FINGERPRINT))


class MirrorCheckpoints(TrainerCallback):
    """Upload each checkpoint after it is saved (rank 0; trainer_state.json last, so a cut-off upload is not picked
    up) and remove mirrored checkpoints the Trainer rotated away locally. Assumes rank 0 sees the whole checkpoint
    (one node, or a shared filesystem)."""

    def __init__(self, mirror: str):
        self.mirror = mirror

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        local = Path(args.output_dir)
        objectstore.upload_dir(local / f"checkpoint-{state.global_step}", f"{self.mirror}/checkpoint-{state.global_step}",
                               last="trainer_state.json")
        prefix = objectstore.split(self.mirror)[1]
        mirrored = {key[len(prefix) + 1:].split("/")[0] for key in objectstore.keys(self.mirror)}
        for name in mirrored:
            if _CHECKPOINT.match(name) and not (local / name).exists():
                objectstore.delete_prefix(f"{self.mirror}/{name}")


class StopOnSigterm(TrainerCallback):
    """On SIGTERM (Airflow timeout or kill, Kubernetes eviction) finish the step, save a checkpoint, stop.

    The stage then fails with a message saying where it stopped, and the retry resumes from that checkpoint. All
    ranks agree on the stop step, so no rank waits forever in a collective. Outside the training loop, or on a
    second SIGTERM, the signal kills as usual: a launcher tearing down a failed job must not be ignored.
    """

    def __init__(self):
        self.requested = False
        self.in_loop = False
        self.stopped_at: int | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum, frame) -> None:
        if self.requested or not self.in_loop:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        log.warning("SIGTERM: saving a checkpoint after this step, then stopping")
        self.requested = True

    def on_train_begin(self, args, state, control, **kwargs):
        self.in_loop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.in_loop = False
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def on_step_end(self, args, state, control, **kwargs):
        if distributed.any_rank(self.requested, args.device):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control
