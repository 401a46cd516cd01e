"""Process topology for training: one process, or N under torchrun / the deepspeed launcher (which set RANK etc.).

Only rank 0 talks to MLflow and writes the final model; every rank trains.
"""

from __future__ import annotations

import os

from pipeline.process.ports import free_port


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def single_process_env() -> None:
    """DeepSpeed needs a process group even for one process; without these it tries MPI discovery."""
    import torch

    if "RANK" in os.environ:
        return  # launched by torchrun / deepspeed: they set everything
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def any_rank(flag: bool, device) -> bool:
    """True on every rank if it is true on one (so all ranks stop at the same step and no collective hangs)."""
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def finish() -> None:
    """Every rank waits for the others, then tears the process group down before the interpreter exits.

    A rank that exits while its gloo/NCCL threads are still alive (rank 0 still saving to MLflow) dies with
    "terminate called without an active exception" (SIGABRT), and torchrun then fails the whole stage.
    """
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if world_size() > 1:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()
