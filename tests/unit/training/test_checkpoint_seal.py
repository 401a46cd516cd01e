"""A checkpoint seal: the files the resume reads, their sizes and digests; damaged files and pickles that would run
code are refused before anything is loaded."""

import json
import pickle

import pytest
import torch
from checkpoint_files import OpensAFile, make_checkpoint

from pipeline.training import checkpoint_seal, checkpoints


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
