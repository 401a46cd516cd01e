"""Faults in training checkpoints, injected into the real train stage (tiny model, a subprocess per attempt):

- the newest checkpoint truncated or corrupted on disk: the retry sets it aside and resumes from the previous one;
- the disk filling up during a checkpoint save (runs_root on a small tmpfs): the stage fails naming the directory
  and "no space", the previous checkpoint is intact, and the retry on a bigger volume resumes from it;
- a pickle that would run code planted in the newest checkpoint (with a matching seal), locally, in the S3 mirror,
  and in a DeepSpeed checkpoint (which DeepSpeed loads with weights_only=False): never executed, skipped, resumed
  from the previous one.

    make test-faults        # or: .venv/bin/python -m pytest -m faults tests/faults/test_checkpoint_faults.py
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from harness import tmpfs

REPO = Path(__file__).resolve().parents[2]
STEPS, EVERY = 10, 5  # two checkpoints, 5 and 10: the newest gets damaged, the previous one is resumed


class OpensAFile:
    """Unpickling this creates `path`: the marker that shows a pickle ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def train(config: Path, dataset: Path, run_id: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "train", "--config", str(config), "--run-date",
                           "2026-11-22", "--run-id", run_id, "--dataset", str(dataset)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def succeeded(result: subprocess.CompletedProcess) -> dict:
    """The trained model's manifest (it records which checkpoint the attempt resumed from)."""
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((Path(result.stdout.strip().splitlines()[-1]) / "manifest.json").read_text())


def checkpoint_root(tmp_path: Path, run_id: str) -> Path:
    return tmp_path / "runs" / "manual" / run_id / "train" / "checkpoints"


def reseal(checkpoint: Path, name: str) -> None:
    """What someone who can write the checkpoint (or its mirror) can also do: make the seal match the new bytes."""
    seal = json.loads((checkpoint / "manifest.json").read_text())
    data = (checkpoint / name).read_bytes()
    seal["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(seal))


@pytest.fixture
def dataset(make_config) -> Path:
    result = subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--config", str(make_config()),
                             "--run-date", "2026-11-22", "--run-id", "faults"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 16] = bytes(16)  # same size: only the digest can tell
    path.write_bytes(bytes(data))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("damage, name, reason", [
    (truncate, "model.safetensors", "the seal says"),
    (flip_bytes, "optimizer.pt", "sha256 differs"),
], ids=["truncated-weights", "corrupted-optimizer"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_retry_resumes_from_the_previous(
        make_config, dataset, tmp_path, damage, name, reason):
    config = make_config(train={"max_steps": STEPS, "checkpoint_steps": EVERY, "keep_checkpoints": True})
    succeeded(train(config, dataset, "damaged"))
    root = checkpoint_root(tmp_path, "damaged")
    damage(root / f"checkpoint-{STEPS}" / name)

    retry = train(config, dataset, "damaged")
    manifest = succeeded(retry)
    assert manifest["resumed_from"] == f"checkpoint-{EVERY}" and manifest["global_step"] == STEPS
    assert f"skipping checkpoint-{STEPS}" in retry.stderr and name in retry.stderr and reason in retry.stderr
    assert (root / f"rejected-checkpoint-{STEPS}" / name).is_file()  # kept for a person to look at


@pytest.fixture
def small_runs_root(tmp_path):
    """runs_root on a 10 MiB tmpfs: one checkpoint of the tiny model (~6.7 MB) fits, a second does not."""
    with tmpfs(tmp_path / "runs", "10m") as mount_point:
        yield mount_point


@pytest.mark.timeout(300)
def test_a_full_disk_during_a_checkpoint_save_fails_clearly_and_keeps_the_previous_checkpoint(
        make_config, dataset, tmp_path, small_runs_root):
    config = make_config(train={"max_steps": STEPS, "checkpoint_steps": EVERY})
    root = checkpoint_root(tmp_path, "full-disk")
    failed = train(config, dataset, "full-disk")
    assert failed.returncode == 1, failed.stderr[-3000:]
    message = failed.stderr.lower()
    assert "no space left on device" in message and str(root).lower() in message, failed.stderr[-3000:]
    assert f"checkpoint-{EVERY} is the last complete checkpoint, intact" in failed.stderr
    # Intact: every file hashes to what the seal recorded right after that save, before the disk filled up.
    previous = root / f"checkpoint-{EVERY}"
    sealed = json.loads((previous / "manifest.json").read_text())["files"]
    assert {name: hashlib.sha256((previous / name).read_bytes()).hexdigest() for name in sealed} == {
        name: entry["sha256"] for name, entry in sealed.items()}
    assert not (root / f"checkpoint-{STEPS}" / "manifest.json").exists()  # the failed save never counts

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_runs_root)], check=True)  # space freed
    manifest = succeeded(train(config, dataset, "full-disk"))
    assert manifest["resumed_from"] == f"checkpoint-{EVERY}" and manifest["global_step"] == STEPS


def poison(checkpoint: Path, name: str, marker: Path) -> None:
    torch.save({"state": OpensAFile(marker)}, checkpoint / name)
    reseal(checkpoint, name)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("where", ["local", "s3-mirror", "deepspeed"])
def test_a_planted_pickle_is_never_executed_on_resume(make_config, dataset, tmp_path, where, request):
    mirror = f"s3://{request.getfixturevalue('s3_server')()}/checkpoints" if where == "s3-mirror" else None
    deepspeed = "configs/deepspeed/zero2.json" if where == "deepspeed" else None
    config = make_config(train={"max_steps": STEPS, "checkpoint_steps": EVERY, "keep_checkpoints": True,
                                "checkpoint_mirror": mirror, "deepspeed": deepspeed})
    succeeded(train(config, dataset, "planted"))
    root, marker = checkpoint_root(tmp_path, "planted"), tmp_path / "pickle-ran-code"
    newest = root / f"checkpoint-{STEPS}"
    # DeepSpeed reads its own optimizer state with weights_only=False; the Trainer reads optimizer.pt and
    # rng_state.pth with weights_only=True (transformers trainer.py, _load_optimizer_and_scheduler / _load_rng_state).
    name = f"global_step{STEPS}/zero_pp_rank_0_mp_rank_00_optim_states.pt" if deepspeed else "optimizer.pt"
    if where == "s3-mirror":  # another pod with write access to the bucket; this machine starts empty
        import boto3

        shutil.rmtree(tmp_path / "runs")
        newest.mkdir(parents=True)
        name = "rng_state.pth"
        key = f"checkpoints/manual/planted/train/checkpoints/checkpoint-{STEPS}"
        bucket, s3 = mirror.split("/")[2], boto3.client("s3")
        s3.download_file(bucket, f"{key}/manifest.json", str(newest / "manifest.json"))
        poison(newest, name, marker)
        for file in (name, "manifest.json"):
            s3.upload_file(str(newest / file), bucket, f"{key}/{file}")
        shutil.rmtree(tmp_path / "runs")
    else:
        poison(newest, name, marker)

    retry = train(config, dataset, "planted")
    manifest = succeeded(retry)
    assert not marker.exists(), "the planted pickle ran"
    assert manifest["resumed_from"] == f"checkpoint-{EVERY}" and manifest["global_step"] == STEPS
    assert f"checkpoint-{STEPS}" in retry.stderr and f"{name}: would unpickle ['io.open']" in retry.stderr
