"""Resuming: only sealed, intact checkpoints count; pickles that would run code are refused; a mirror restores only
this run's own files; a save that runs out of space says so; checkpoints from other settings are not resumed."""

import errno
import json
import logging
import pickle
import random

import numpy as np
import pytest
import torch

from pipeline import checkpoint_seal, checkpoints, objectstore, storage


class OpensAFile:
    """Unpickling this creates `path`: the marker that shows a pickle ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def make_checkpoint(root, step, sealed=True):
    """A checkpoint shaped like the Trainer's: safetensors weights, torch.save'd optimizer and RNG state."""
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights" * 100)
    torch.save({"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": []}, path / "optimizer.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
               path / "rng_state.pth")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (path / "training_args.bin").write_bytes(pickle.dumps({"not": "read on resume"}))
    if sealed:
        checkpoints.seal(path)
    return path


def test_latest_complete_is_the_newest_sealed_checkpoint(tmp_path):
    assert checkpoints.latest_complete(tmp_path) is None
    make_checkpoint(tmp_path, 5)
    best = make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 15, sealed=False)  # killed while saving: the seal is written last
    (tmp_path / "checkpoint-junk").mkdir()
    assert checkpoints.latest_complete(tmp_path) == best


def test_the_seal_lists_every_file_the_resume_reads_but_not_training_args(tmp_path):
    path = make_checkpoint(tmp_path, 5)
    sealed = json.loads((path / checkpoints.SEAL).read_text())["files"]
    assert set(sealed) == {"model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"}
    assert sealed["model.safetensors"]["bytes"] == 700
    checkpoints.verify(path)  # a Trainer-shaped checkpoint, numpy RNG state included, passes


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "100 bytes, the seal says 700"),
    (lambda p: p.write_bytes(b"X" + p.read_bytes()[1:]), "sha256 differs"),
    (lambda p: p.unlink(), "no bytes"),
], ids=["truncated", "corrupted", "missing"])
def test_verify_names_the_damaged_file(tmp_path, damage, message):
    path = make_checkpoint(tmp_path, 5)
    damage(path / "model.safetensors")
    with pytest.raises(checkpoints.UnusableCheckpoint, match=message) as caught:
        checkpoints.verify(path)
    assert str(path / "model.safetensors") in str(caught.value)


def test_verify_refuses_a_seal_that_points_outside_the_checkpoint(tmp_path):
    path = make_checkpoint(tmp_path, 5)
    seal = json.loads((path / checkpoints.SEAL).read_text())
    seal["files"]["../other-run/optimizer.pt"] = {"bytes": 1, "sha256": "0"}
    (path / checkpoints.SEAL).write_text(json.dumps(seal))
    with pytest.raises(checkpoints.UnusableCheckpoint, match=r"lists '\.\./other-run/optimizer\.pt'"):
        checkpoints.verify(path)


def test_a_malicious_pickle_is_refused_without_running_even_when_its_seal_matches(tmp_path):
    marker = tmp_path / "pwned"
    path = make_checkpoint(tmp_path, 5, sealed=False)
    torch.save({"state": OpensAFile(marker)}, path / "optimizer.pt")
    checkpoints.seal(path)  # whoever planted it rewrote the seal too: sizes and digests match
    with pytest.raises(checkpoints.UnusableCheckpoint, match=r"optimizer\.pt: would unpickle \['io\.open'\]"):
        checkpoints.verify(path)
    assert not marker.exists()


def test_a_pickle_that_is_not_a_torch_archive_or_not_sealed_is_refused(tmp_path):
    path = make_checkpoint(tmp_path, 5, sealed=False)
    (path / "scheduler.pt").write_bytes(pickle.dumps({"last_epoch": 3}))  # plain pickle: cannot be scanned
    checkpoints.seal(path)
    with pytest.raises(checkpoints.UnusableCheckpoint, match=r"scheduler\.pt: not a torch\.save archive"):
        checkpoints.verify(path)
    (path / "scheduler.pt").unlink()
    checkpoints.seal(path)
    torch.save({}, path / "rng_state_1.pth")  # appeared after sealing
    with pytest.raises(checkpoints.UnusableCheckpoint, match=r"rng_state_1\.pth: a pickle the seal does not list"):
        checkpoints.verify(path)


def test_deepspeed_optimizer_state_passes_the_pickle_check(tmp_path):
    # The classes DeepSpeed's ZeRO optimizer state holds (found in a real zero2 checkpoint); DeepSpeed itself
    # loads these files with weights_only=False, so the allowlist must name them exactly.
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    state = {"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients,
             "param_slice_mappings": [{"w": fragment_address(numel=3, start=0)}], "fp32": torch.ones(3)}
    torch.save(state, tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    checkpoint_seal.check_pickle(tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt")


def test_deepspeed_latest_must_name_a_folder_inside_the_checkpoint(tmp_path):
    path = make_checkpoint(tmp_path, 5, sealed=False)
    (path / "global_step5").mkdir()
    (path / "latest").write_text("../../elsewhere/global_step5")
    checkpoints.seal(path)
    with pytest.raises(checkpoints.UnusableCheckpoint, match="not a global_stepN folder"):
        checkpoints.verify(path)


def test_keep_verified_sets_the_damaged_newest_aside_and_drops_cut_off_ones(tmp_path, caplog):
    previous = make_checkpoint(tmp_path, 5)
    newest = make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 15, sealed=False)
    (newest / "optimizer.pt").write_bytes((newest / "optimizer.pt").read_bytes()[:-10])
    with caplog.at_level(logging.WARNING, logger="pipeline.checkpoints"):
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
        objectstore.upload_dir(make_checkpoint(source, step), f"{mirror}/checkpoint-{step}", last=checkpoints.SEAL)
    objectstore.upload_dir(source, mirror)  # fingerprint.json
    return mirror, tmp_path / "runs" / "nightly" / "run_1" / "train" / "checkpoints"


def test_restore_brings_back_the_newest_verified_checkpoint_and_only_the_sealed_files(tmp_path, s3_server):
    mirror, local = mirrored_run(tmp_path, s3_server())
    bucket, prefix = objectstore.split(mirror)
    objectstore.client().put_object(Bucket=bucket, Key=f"{prefix}/checkpoint-10/planted.pt", Body=b"x")
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
    bucket, prefix = objectstore.split(mirror)
    s3 = objectstore.client()
    s3.upload_file(str(poisoned), bucket, f"{prefix}/checkpoint-10/rng_state.pth")
    seal = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/checkpoint-10/{checkpoints.SEAL}")["Body"].read())
    seal["files"]["rng_state.pth"] = {"bytes": poisoned.stat().st_size, "sha256": storage.file_digest([poisoned])}
    s3.put_object(Bucket=bucket, Key=f"{prefix}/checkpoint-10/{checkpoints.SEAL}", Body=json.dumps(seal).encode())
    with caplog.at_level(logging.WARNING, logger="pipeline.checkpoints"):
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
