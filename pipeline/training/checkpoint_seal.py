"""A checkpoint's seal: what makes it resumable, checked before anything in it is loaded.

Once the Trainer has written a checkpoint, rank 0 seals it: manifest.json, written last, lists each file the resume
reads with its size and sha256. verify() refuses a checkpoint whose files are missing, truncated or changed, or that
holds a pickle which would unpickle anything but tensors, containers and SAFE_GLOBALS; pipeline/training/checkpoints.py then
falls back to the previous one. The seal proves a checkpoint is whole, not who wrote it: what keeps a planted pickle
from running code is check_pickle, which reads its opcodes before the weights-only unpickler loads anything.
"""

from __future__ import annotations

import json
import pkgutil
import re
from pathlib import Path

import numpy
import torch

from pipeline.storage import outputs

SEAL = outputs.MANIFEST
# A pickle of TrainingArguments that the Trainer writes but never reads on resume: not sealed, never restored.
NOT_RESUMED = frozenset({"training_args.bin"})
_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=-]*$")  # no '..', no hidden or absolute names
_PICKLED = (".pt", ".pth", ".bin", ".pkl")
# What a resume may unpickle besides tensors and containers: numpy arrays in rng_state*.pth (as transformers'
# own safe_globals allows) and DeepSpeed's ZeRO optimizer state, which DeepSpeed loads with weights_only=False.
SAFE_GLOBALS = frozenset({
    "numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
    "deepspeed.utils.tensor_fragment.fragment_address", "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
})


class UnusableCheckpoint(ValueError):
    """A checkpoint that must not be resumed; the message names the file and what is wrong with it."""


def seal(checkpoint: Path) -> None:
    """Write the checkpoint's manifest: size and sha256 of each file the resume reads."""
    checkpoint = Path(checkpoint)
    files = {}
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        name = path.relative_to(checkpoint).as_posix()
        if name != SEAL and name not in NOT_RESUMED:
            files[name] = {"bytes": path.stat().st_size, "sha256": outputs.file_digest([path])}
    outputs.write_json(checkpoint / SEAL, {"checkpoint": checkpoint.name, "files": files})


def verify(checkpoint: Path) -> None:
    """Raise UnusableCheckpoint unless every sealed file is there, whole and unchanged, and no pickle runs code."""
    checkpoint = Path(checkpoint)
    files = sealed_files(checkpoint)
    for name, expected in files.items():
        path = checkpoint / name
        size = path.stat().st_size if path.is_file() else "no"
        if size != expected["bytes"]:
            raise UnusableCheckpoint(f"{path}: {size} bytes, the seal says {expected['bytes']} (missing, truncated "
                                     "or overwritten)")
        if outputs.file_digest([path]) != expected["sha256"]:
            raise UnusableCheckpoint(f"{path}: sha256 differs from the seal (corrupted or modified)")
    latest = checkpoint / "latest"  # DeepSpeed's pointer to its global_stepN folder
    if latest.is_file() and not (re.fullmatch(r"global_step\d+", tag := latest.read_text().strip())
                                 and (checkpoint / tag).is_dir()):
        raise UnusableCheckpoint(f"{latest}: names {tag!r}, not a global_stepN folder inside the checkpoint")
    for path in sorted(checkpoint.rglob("*")):
        name = path.relative_to(checkpoint).as_posix()
        if path.suffix in _PICKLED and path.is_file() and name not in NOT_RESUMED:
            if name not in files:
                raise UnusableCheckpoint(f"{path}: a pickle the seal does not list")
            check_pickle(path)


def check_pickle(path: Path) -> None:
    """Refuse a torch.save file that would unpickle anything but tensors, containers and SAFE_GLOBALS.

    The Trainer itself loads optimizer.pt, scheduler.pt and rng_state.pth with weights_only=True, but DeepSpeed
    loads its global_stepN/*.pt with weights_only=False: this check runs first, without executing the pickle."""
    try:
        found = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))  # static: reads opcodes only
    except Exception as exc:  # not a torch.save zip (a legacy pickle, a truncated file): nothing to scan safely
        raise UnusableCheckpoint(f"{path}: not a torch.save archive that can be checked ({exc})") from exc
    if found - SAFE_GLOBALS:
        raise UnusableCheckpoint(f"{path}: would unpickle {sorted(found - SAFE_GLOBALS)}; a checkpoint may only "
                                 f"hold tensors, containers and {sorted(SAFE_GLOBALS)}")
    # The restricted unpickler also catches what is built at run time, which the static scan cannot see (rng_state
    # makes numpy.dtypes.UInt32DType), without calling anything outside the allowlist.
    allowed = [pkgutil.resolve_name(name) for name in found] + [type(numpy.dtype(numpy.uint32))]
    try:
        with torch.serialization.safe_globals(allowed):
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        reason = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise UnusableCheckpoint(f"{path}: refused by the weights-only unpickler: {reason}") from exc



def sealed_files(checkpoint: Path) -> dict:
    try:
        manifest = json.loads((checkpoint / SEAL).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnusableCheckpoint(f"{checkpoint / SEAL}: unreadable seal ({exc})") from exc
    for name in files:
        if not all(_SAFE_PART.match(part) for part in name.split("/")):
            raise UnusableCheckpoint(f"{checkpoint / SEAL}: lists {name!r}, not a plain path inside the checkpoint")
    return files

