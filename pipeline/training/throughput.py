"""Model FLOPs utilisation (MFU) of a training run, as PaLM defines it: the FLOPs the model needs per token times
the tokens trained per second, over the hardware's peak.

    flops = training_flops_per_token(model, sequence_length=256)
    mfu(tokens_per_second, flops, peak_flops("NVIDIA H100 80GB HBM3"), devices=1)

FLOPs per token: 6 x parameters (forward and backward matmuls; a tied output head counted once, as the matmul it
is) + 12 x layers x hidden x sequence length (attention scores and values, the unmasked upper bound). Only real
tokens count, so padding never raises MFU. benchmarks/bench_training_gpu.py and the train stage's MLflow metrics
(train/mfu, pipeline/training/reporting.py) use the same numbers.
"""

from __future__ import annotations

import torch

# Dense bf16 tensor-core peaks (SXM parts, NVIDIA's data sheets, without sparsity), matched in the device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def training_flops_per_token(model: torch.nn.Module, sequence_length: int) -> float:
    config = model.config
    # shared tensors (a tied head) once; under ZeRO-3 a rank holds a shard, ds_numel is the whole tensor
    parameters = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    return 6.0 * parameters + 12.0 * config.num_hidden_layers * config.hidden_size * sequence_length


def peak_flops(device_name: str) -> float | None:
    """The device's bf16 peak from the table, or None (a CPU, an unlisted GPU): then no MFU unless configured."""
    return next((flops for part, flops in PEAK_BF16_FLOPS.items() if part in device_name), None)


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def mfu(tokens_per_second: float, flops_per_token: float, peak: float, devices: int) -> float:
    """tokens_per_second: the whole job's (every device's tokens); peak: one device's FLOP/s."""
    return tokens_per_second * flops_per_token / (peak * devices)
