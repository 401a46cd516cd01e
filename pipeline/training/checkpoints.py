"""Training checkpoints: where a retried or killed training task picks up again, and only from what it saved itself.

Checkpoints live in the run's train directory (runs/<dag>/<run_id>/train/checkpoints), so an Airflow retry of the
same DAG run finds them and a different run never does. With a mirror (s3://...), each checkpoint is also uploaded
there, under the same <dag>/<run_id>/train/checkpoints scope, so a retry on another machine or fresh pod resumes too.
A fingerprint of the config and data guards against resuming a run whose settings changed between attempts.

Once the Trainer has written a checkpoint, rank 0 seals it (pipeline/training/checkpoint_seal.py: each file the resume
reads, with its size and sha256, written last). Before resuming, a checkpoint that is cut off, truncated, corrupted
or holds a pickle that would run code is set aside (rejected-checkpoint-N, logged with the reason) and the previous
one is used. A restore from the mirror reads only this run's prefix and only the files a seal names, and checks them
the same way.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import shutil
import signal
from pathlib import Path

import torch
from transformers import TrainerCallback

from pipeline.process import termination
from pipeline.storage import outputs, s3
from pipeline.training import distributed
from pipeline.training.checkpoint_seal import SEAL, UnusableCheckpoint, seal, sealed_files, verify

log = logging.getLogger(__name__)
FINGERPRINT = "fingerprint.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# A full disk shows as ENOSPC, except in torch.save, whose C++ writer only reports a failed stream.
_NO_SPACE = ("no space left", "os error 28")
_WRITE_FAILED = ("file write failed", "iostream error", "inline_container", "unexpected pos")



class DiskFull(RuntimeError):
    """A checkpoint save ran out of space; the message names the directory and the checkpoint that is intact."""


def latest_complete(directory: Path) -> Path | None:
    """The highest-step sealed checkpoint (the seal is written after every other file of the checkpoint)."""
    found = []
    for path in Path(directory).glob("checkpoint-*"):
        match = _CHECKPOINT.match(path.name)
        if match and (path / SEAL).is_file():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def keep_verified(directory: Path) -> None:
    """Rank 0: drop checkpoints cut off mid-save and set aside sealed ones that fail verify(), saying why.

    Afterwards the newest checkpoint-N is the one to resume, so the Trainer neither rotates a good checkpoint
    away in favour of a bad one nor saves into a folder that still holds a stale seal."""
    for path in sorted((p for p in Path(directory).glob("checkpoint-*") if _CHECKPOINT.match(p.name)), reverse=True):
        if not (path / SEAL).is_file():
            log.warning("removing %s: cut off mid-save (no %s)", path, SEAL)
            shutil.rmtree(path)
            continue
        try:
            verify(path)
        except UnusableCheckpoint as exc:
            rejected = path.with_name(f"rejected-{path.name}")
            log.warning("skipping %s, set aside as %s: %s", path.name, rejected.name, exc)
            shutil.rmtree(rejected, ignore_errors=True)
            path.rename(rejected)


def claim(directory: Path, fingerprint: dict) -> None:
    """Keep checkpoints only if they were made with the same settings and data; otherwise start over (rank 0)."""
    directory = Path(directory)
    marker = directory / FINGERPRINT
    if marker.is_file() and json.loads(marker.read_text()) != json.loads(json.dumps(fingerprint, default=str)):
        log.warning("checkpoints in %s were made with other settings or data; starting over", directory)
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    outputs.write_json(marker, fingerprint)


def prepare(directory: Path, mirror: str | None, fingerprint: dict) -> None:
    """Rank 0: keep local checkpoints that verify, else restore one from the mirror; drop those of other settings."""
    keep_verified(directory)
    if mirror:
        restore(directory, mirror)
    had_some = latest_complete(directory) is not None
    claim(directory, fingerprint)
    if mirror:
        if had_some and latest_complete(directory) is None:
            forget(mirror)  # claim() discarded them: other settings or data
        s3.upload(Path(directory) / FINGERPRINT, f"{mirror}/{FINGERPRINT}")  # retried; errors name it


def mirror_uri(base: str | None, train_dir: Path) -> str | None:
    """<base>/<dag_id>/<run_id>/train/checkpoints: scoped to the DAG run, like the local directory."""
    if base is None:
        return None
    s3.split(base)  # only s3://bucket/prefix
    return "/".join([base.rstrip("/"), *Path(train_dir).as_posix().split("/")[-3:], "checkpoints"])


def forget(mirror: str) -> None:
    s3.delete_prefix(mirror)


def restore(directory: Path, mirror: str) -> None:
    """When there is no local checkpoint, fetch the newest mirrored one that verifies, and the fingerprint.

    Only this run's own prefix is read, and only the files a checkpoint's seal names; a checkpoint whose files
    fail verify() is skipped (and logged) in favour of the one before it."""
    directory = Path(directory)
    _check_own_prefix(directory, mirror)
    if latest_complete(directory) is not None:
        return
    prefix = s3.split(mirror)[1]
    names = {key[len(prefix) + 1:] for key in s3.keys(mirror)}
    steps = [int(m.group(1)) for name in names if (m := re.fullmatch(rf"checkpoint-(\d+)/{SEAL}", name))]
    if FINGERPRINT not in names:
        return
    for step in sorted(steps, reverse=True):
        try:
            _download_verified(mirror, f"checkpoint-{step}", directory)
        except UnusableCheckpoint as exc:
            log.warning("skipping mirrored %s/checkpoint-%d: %s", mirror, step, exc)
            continue
        s3.download(f"{mirror}/{FINGERPRINT}", directory / FINGERPRINT)
        log.info("restored checkpoint-%d from %s", step, mirror)
        return


@contextlib.contextmanager
def explain_full_disk(directory: Path):
    """Turn a save that failed for lack of space into one message: where, how much is free, what is intact."""
    try:
        yield
    except Exception as exc:
        newest = latest_complete(directory)
        needed = sum(p.stat().st_size for p in newest.rglob("*") if p.is_file()) if newest else 1 << 20
        free = shutil.disk_usage(directory).free
        text = " ".join(str(e).lower() for e in _chain(exc))
        no_space = any(s in text for s in _NO_SPACE) or any(getattr(e, "errno", 0) == errno.ENOSPC for e in _chain(exc))
        if not (no_space or (free < needed and any(s in text for s in _WRITE_FAILED))):
            raise
        kept = f"{newest} is the last complete checkpoint, intact" if newest else "no checkpoint was complete yet"
        raise DiskFull(f"no space left on device while saving a checkpoint in {directory}: {free / 2**20:.1f} MiB "
                       f"free, a checkpoint takes about {needed / 2**20:.1f} MiB; {kept}. Free space (or give "
                       "runs_root a bigger volume) and rerun: the retry resumes from it") from exc


def callbacks(mirror: str | None) -> list[TrainerCallback]:
    """Seal each checkpoint once saved, then (with a mirror) upload it: in that order."""
    return [SealCheckpoints(), *([MirrorCheckpoints(mirror)] if mirror else [])]


class SealCheckpoints(TrainerCallback):
    """Rank 0 seals each checkpoint after the Trainer (and every rank, for its own files) finished writing it."""

    def on_save(self, args, state, control, **kwargs):
        if distributed.world_size() > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()  # other ranks may still be writing their optimizer / RNG files
        if state.is_world_process_zero:
            seal(Path(args.output_dir) / f"checkpoint-{state.global_step}")


class MirrorCheckpoints(TrainerCallback):
    """Upload each checkpoint after it is sealed (rank 0; the seal last, so a cut-off upload is not picked up) and
    remove mirrored checkpoints the Trainer rotated away locally. Assumes rank 0 sees the whole checkpoint
    (one node, or a shared filesystem)."""

    def __init__(self, mirror: str):
        self.mirror = mirror

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        local = Path(args.output_dir)
        name = f"checkpoint-{state.global_step}"
        s3.upload_dir(local / name, f"{self.mirror}/{name}", last=SEAL)
        prefix = s3.split(self.mirror)[1]
        mirrored = {key[len(prefix) + 1:].split("/")[0] for key in s3.keys(self.mirror)}
        for name in mirrored:
            if _CHECKPOINT.match(name) and not (local / name).exists():
                s3.delete_prefix(f"{self.mirror}/{name}")


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
        if self.requested:
            termination.exit_now(signum)  # also as PID 1, where re-raising with the default action is ignored
        if not self.in_loop:
            termination.terminate(signum, frame)
        log.warning("SIGTERM: saving a checkpoint after this step, then stopping")
        self.requested = True

    def on_train_begin(self, args, state, control, **kwargs):
        self.in_loop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.in_loop = False
        termination.install()  # the checkpoint is sealed: a SIGTERM now ends the stage like an error, at once

    def on_step_end(self, args, state, control, **kwargs):
        if distributed.any_rank(self.requested, args.device):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


def _check_own_prefix(directory: Path, mirror: str) -> None:
    """The mirror must be this run's own scope (<dag>/<run>/train/checkpoints), like the local directory."""
    scope = Path(directory).parts[-4:]
    if tuple(s3.split(mirror)[1].split("/")[-4:]) != scope:
        raise ValueError(f"checkpoint mirror {mirror!r} is not this run's own prefix (.../{'/'.join(scope)}); "
                         "refusing to restore from it")


def _download_verified(mirror: str, name: str, directory: Path) -> None:
    """Download checkpoint `name` into a scratch folder, verify it there, then move it into place."""
    from botocore.exceptions import ClientError

    scratch = directory / ".restoring"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        s3.download(f"{mirror}/{name}/{SEAL}", scratch / name / SEAL)
        for file in sealed_files(scratch / name):  # names checked before any key or path is built from them
            s3.download(f"{mirror}/{name}/{file}", scratch / name / file)
        verify(scratch / name)
        (scratch / name).rename(directory / name)
    except ClientError as exc:  # a file the seal lists is gone (a rotation's delete cut off half-way)
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
            raise
        raise UnusableCheckpoint(f"{mirror}/{name}: a file its seal lists is not in the mirror ({exc})") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _chain(exc: BaseException | None):
    for _ in range(20):  # a chain can loop back on itself
        if exc is None:
            return
        yield exc
        exc = exc.__cause__ or exc.__context__
