"""Resuming: only sealed, intact checkpoints count; pickles that would run code are refused; a mirror restores only
this run's own files; a save that runs out of space says so; checkpoints from other settings are not resumed."""

import errno
import json
import logging

import pytest
import torch
from checkpoint_files import OpensAFile, make_checkpoint

from pipeline.storage import outputs, s3
from pipeline.training import checkpoints


def test_latest_complete_is_the_newest_sealed_checkpoint(tmp_path):
    assert checkpoints.latest_complete(tmp_path) is None
    make_checkpoint(tmp_path, 5)
    best = make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 15, sealed=False)  # killed while saving: the seal is written last
    (tmp_path / "checkpoint-junk").mkdir()
    assert checkpoints.latest_complete(tmp_path) == best


def test_keep_verified_sets_the_damaged_newest_aside_and_drops_cut_off_ones(tmp_path, caplog):
    previous = make_checkpoint(tmp_path, 5)
    newest = make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 15, sealed=False)
    (newest / "optimizer.pt").write_bytes((newest / "optimizer.pt").read_bytes()[:-10])
    with caplog.at_level(logging.WARNING, logger="pipeline.training.checkpoints"):
        checkpoints.keep_verified(tmp_path)
    assert checkpoints.latest_complete(tmp_path) == previous
    assert (tmp_path / "rejected-checkpoint-10" / "optimizer.pt").is_file()  # kept to look at
    assert not (tmp_path / "checkpoint-15").exists() and not newest.exists()
    assert "skipping checkpoint-10" in caplog.text and "optimizer.pt" in caplog.text and "truncated" in caplog.text


def test_claim_keeps_checkpoints_of_the_same_settings_and_drops_others(tmp_path):
    root = tmp_path / "checkpoints"
    checkpoints.claim(root, {"config": {"lr": 1e-4}, "data_digest": "abc"})
    make_checkpoint(root, 5)
    checkpoints.claim(root, {"config": {"lr": 1e-4}, "data_digest": "abc"})
    assert checkpoints.latest_complete(root) is not None
    checkpoints.claim(root, {"config": {"lr": 3e-4}, "data_digest": "abc"})
    assert checkpoints.latest_complete(root) is None


def mirrored_run(tmp_path, bucket):
    """Two sealed checkpoints uploaded to this run's mirror prefix, as MirrorCheckpoints leaves them."""
    source = tmp_path / "elsewhere" / "runs" / "nightly" / "run_1" / "train" / "checkpoints"
    mirror = checkpoints.mirror_uri(f"s3://{bucket}/ckpt", source.parent)
    checkpoints.claim(source, {"config": {}})
    for step in (5, 10):
        s3.upload_dir(make_checkpoint(source, step), f"{mirror}/checkpoint-{step}", last=checkpoints.SEAL)
    s3.upload_dir(source, mirror)  # fingerprint.json
    return mirror, tmp_path / "runs" / "nightly" / "run_1" / "train" / "checkpoints"


def test_restore_brings_back_the_newest_verified_checkpoint_and_only_the_sealed_files(tmp_path, s3_server):
    mirror, local = mirrored_run(tmp_path, s3_server())
    bucket, prefix = s3.split(mirror)
    s3.client().put_object(Bucket=bucket, Key=f"{prefix}/checkpoint-10/planted.pt", Body=b"x")
    checkpoints.restore(local, mirror)
    assert checkpoints.latest_complete(local) == local / "checkpoint-10"
    restored = {p.name for p in (local / "checkpoint-10").iterdir()}
    assert restored == {"model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json", checkpoints.SEAL}
    assert (local / checkpoints.FINGERPRINT).is_file() and not (local / ".restoring").exists()


def test_restore_skips_a_mirrored_checkpoint_that_fails_verification(tmp_path, s3_server, caplog):
    mirror, local = mirrored_run(tmp_path, s3_server())
    marker = tmp_path / "pwned"
    poisoned = tmp_path / "poisoned"
    torch.save(OpensAFile(marker), poisoned)  # any pod that can write the bucket could plant this, seal and all
    bucket, prefix = s3.split(mirror)
    client = s3.client()
    client.upload_file(str(poisoned), bucket, f"{prefix}/checkpoint-10/rng_state.pth")
    seal = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/checkpoint-10/{checkpoints.SEAL}")["Body"].read())
    seal["files"]["rng_state.pth"] = {"bytes": poisoned.stat().st_size, "sha256": outputs.file_digest([poisoned])}
    client.put_object(Bucket=bucket, Key=f"{prefix}/checkpoint-10/{checkpoints.SEAL}", Body=json.dumps(seal).encode())
    with caplog.at_level(logging.WARNING, logger="pipeline.training.checkpoints"):
        checkpoints.restore(local, mirror)
    assert checkpoints.latest_complete(local) == local / "checkpoint-5"
    assert not marker.exists() and "checkpoint-10" in caplog.text and "rng_state.pth: would unpickle" in caplog.text


def test_restore_refuses_a_mirror_outside_this_runs_prefix(tmp_path, s3_server):
    mirror, local = mirrored_run(tmp_path, s3_server())
    other_run = mirror.replace("/run_1/", "/run_2/")
    with pytest.raises(ValueError, match=r"not this run's own prefix \(\.\.\./nightly/run_1/train/checkpoints\)"):
        checkpoints.restore(local, other_run)


def test_a_save_that_runs_out_of_space_names_the_directory_and_the_intact_checkpoint(tmp_path):
    intact = make_checkpoint(tmp_path, 5)
    with pytest.raises(checkpoints.DiskFull, match="no space left on device") as caught:
        with checkpoints.explain_full_disk(tmp_path):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(tmp_path) in str(caught.value) and f"{intact} is the last complete checkpoint" in str(caught.value)
    with pytest.raises(ValueError, match="a bug"):  # anything else passes through untouched
        with checkpoints.explain_full_disk(tmp_path):
            raise ValueError("a bug")
    with pytest.raises(RuntimeError, match="unexpected pos"):  # a torch.save write failure while space is plenty
        with checkpoints.explain_full_disk(tmp_path):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
