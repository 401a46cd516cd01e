"""Checkpoints shaped like the Trainer's, for the checkpoint and seal tests, and a pickle that shows it ran code."""

import json
import pickle
import random

import numpy as np
import torch

from pipeline.training import checkpoints


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
