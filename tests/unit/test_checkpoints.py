"""Resuming: only completely written checkpoints count, and checkpoints from other settings are not resumed."""

from pipeline import checkpoints


def make_checkpoint(root, step, complete=True):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_latest_complete_skips_a_checkpoint_cut_off_mid_save(tmp_path):
    assert checkpoints.latest_complete(tmp_path) is None
    make_checkpoint(tmp_path, 5)
    best = make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 15, complete=False)  # killed while saving
    (tmp_path / "checkpoint-junk").mkdir()
    assert checkpoints.latest_complete(tmp_path) == best


def test_claim_keeps_checkpoints_of_the_same_settings_and_drops_others(tmp_path):
    root = tmp_path / "checkpoints"
    checkpoints.claim(root, {"config": {"lr": 1e-4}, "data_digest": "abc"})
    make_checkpoint(root, 5)
    checkpoints.claim(root, {"config": {"lr": 1e-4}, "data_digest": "abc"})
    assert checkpoints.latest_complete(root) is not None
    checkpoints.claim(root, {"config": {"lr": 3e-4}, "data_digest": "abc"})
    assert checkpoints.latest_complete(root) is None
